"""Best-of-N chunk selection with an off-policy chunk critic (``rl_policy=qselect``).

Like :class:`~equi_diffpo.policy.chunk_selection_policy.ChunkSelectionPolicy` the frozen BC flow proposes
``N`` chunks from i.i.d. draws and a scorer on the base policy picks one, but here the scorer is a
Q-function over action chunks, ``Q(obs features, executed chunk)``, learned by temporal differences from a
replay of every chunk the runs have executed (:mod:`equi_diffpo.rl_training.chunk_q_trainer`), not a
softmax policy trained by PPO on one batch at a time:

    c_i = flow(x0_i), x0_i ~ N(0, I)  (i = 1..N);   explore: i ~ softmax(Q(s, c_i) / temperature);
    evaluate: argmax_i Q(s, c_i).

Why: on lift_d0 whether a weak BC policy's episode succeeds rides mostly on its noise draws (docs/EXPERIMENTS.md
2026-12-05d: the same start states flip between success and failure with the draw), so picking good draws
has leverage, but PPO's chunk-level advantages credited that choice too slowly (2026-12-05, `select`). A critic
that reuses all past transitions and backs the best candidate's value up through the chunk steps (Q-chunking,
Li et al. 2025; value-guided policy steering, Nakamoto et al. 2024) gets more out of each env step. Every
executed chunk is one the BC flow produces, and the checkpoint evaluates with the base policy's own
``predict_action`` (the argmax over its selector's scores), so ``scripts/eval_policy.py`` needs nothing new.

The selector's scores are the critic's Q values in success-probability units (reward 1 on the success that
ends an episode), so ``temperature`` is in those units too: 0.05 prefers a candidate 0.1 better ~7:1.
"""
from __future__ import annotations

import torch

from equi_diffpo.policy.chunk_selection_policy import ChunkSelectionPolicy
from equi_diffpo.policy.maniflow_pointcloud_policy import ManiFlowPointcloudPolicy


class ChunkQSelectionPolicy(ChunkSelectionPolicy):
    """The chunk-selection policy whose scores are Q values: trained off-policy, explores by a Boltzmann choice."""

    method = "qselect"
    off_policy = True   # the RL workspace trains it with the chunk-Q trainer instead of PPO

    def __init__(self, base_policy: ManiFlowPointcloudPolicy, n_candidates: int = 16, selector_hidden: int = 256,
                 temperature: float = 0.05):
        """``temperature``: of the rollouts' softmax over the candidates' Q values (success-probability units)."""
        if temperature <= 0:
            raise ValueError(f"rl_policy.temperature must be > 0, got {temperature}")
        super().__init__(base_policy, n_candidates, selector_hidden)
        self.temperature = float(temperature)

    def _logits(self, cond: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``Q / temperature`` ``(B, N)``: the argmax (evaluation) is that of Q itself."""
        return self.head(cond, candidates) / self.temperature
