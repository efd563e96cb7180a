"""Chunk-selection policy for PPO: a categorical choice among ``N`` proposals of the frozen BC flow.

At each chunk step the pretrained flow proposes ``N`` chunks from ``N`` i.i.d. draws (exactly as BC
evaluation would, one draw each), a :class:`~equi_diffpo.model.chunk_selector.ChunkSelector` living on the
base policy scores them, and the policy picks one:

    c_i = flow(x0_i), x0_i ~ N(0, I);   i ~ softmax(f(cond, c_1..N));   execute c_i.

Why this and not a Gaussian on top of the flow (see the selector's module docstring for the longer story):
the log-prob is an exact, single categorical term (no sum over 160 Gaussian entries whose ratio leaves the
trust region after one step), every executed chunk is one the BC flow produces, and evaluation
(``predict_action``, the deterministic mode) takes the argmax, so whatever PPO has learned to prefer is
used fully instead of being averaged over the noise as with the latent prior.

Stored chain ``(B, N, horizon, Da)``: the candidates' final normalized chunks, the chosen one moved to
slot 0 (the others in draw order). The scorer treats each candidate alone, so the order does not change
the probabilities, and the log-prob of the stored choice is ``log_softmax(f(...))[:, 0]``.

Only the selector trains (``ppo_trainer.head_lr``); the encoder, the velocity net and any noise prior of the
base stay frozen (the candidates and features they produce are what the stored chains mean).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from equi_diffpo.model.chunk_selector import ChunkSelector
from equi_diffpo.policy.frozen_flow_head import FrozenFlowHeadPolicy
from equi_diffpo.policy.maniflow_pointcloud_policy import ManiFlowPointcloudPolicy
from equi_diffpo.policy.rl_policy_base import LogProbResult, RLSample


class ChunkSelectionPolicy(FrozenFlowHeadPolicy):
    """Wraps a pretrained base policy, gives it a chunk selector (kept if it already has one, e.g. when
    fine-tuning a selection checkpoint again). ``state_dict`` = ``base.*`` (selector included)."""

    method = "select"
    base_requires = ("enable_chunk_selector",)   # the U-Net policy's selector

    def __init__(self, base_policy: ManiFlowPointcloudPolicy, n_candidates: int = 16, selector_hidden: int = 256):
        """``n_candidates``: BC proposals per chunk step (``N``); ``selector_hidden``: the scorer MLP's width."""
        super().__init__(base_policy)
        base_policy.enable_chunk_selector(n_candidates, selector_hidden)
        self.freeze_base()

    @property
    def head(self) -> ChunkSelector:
        return self.base.chunk_selector

    def _logits(self, cond: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The choice's logits ``(B, N)``: the selector's scores (a subclass may rescale them)."""
        return self.head(cond, candidates)

    def _terms(self, chains: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob of slot 0 and the categorical entropy ``(B,)`` for ``chains`` ``(B, N, horizon, Da)``."""
        log_p = torch.log_softmax(self._logits(cond, chains), dim=1)
        return log_p[:, 0], -(log_p.exp() * log_p).sum(dim=1)

    @staticmethod
    def _choose(logits: torch.Tensor, generators: Optional[Sequence[torch.Generator]]) -> torch.Tensor:
        """One index per row ``(B,)`` drawn from ``softmax(logits)``, row ``i`` from ``generators[i]`` when given
        (a per-episode stream, as every other policy draw), else from the global RNG."""
        probs = torch.softmax(logits.float(), dim=1).cpu()
        if generators is None:
            return torch.multinomial(probs, 1).squeeze(1).to(logits.device)
        picks = [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)]
        return torch.cat(picks).to(logits.device)

    @torch.no_grad()
    def sample_actions(self, obs_dict: Dict[str, torch.Tensor], deterministic: bool = False,
                       noise: torch.Tensor | None = None,
                       generators: Sequence[torch.Generator] | None = None) -> RLSample:
        """obs_dict raw ``(B, To, ...)``; ``noise`` optional standard-normal draws ``(B, N, horizon, Da)``;
        ``generators`` optional, one per row (the draws first, then the choice). Deterministic: the argmax,
        as :meth:`predict_action` (its ``log_prob`` is still that choice's probability)."""
        cond = self.encode_obs(obs_dict)
        if noise is None:
            noise = self.draw(cond, generators, *self.base.noise_shape)
        candidates = self.base.candidate_chunks(cond, noise.to(cond))
        logits = self._logits(cond, candidates)
        chosen = logits.argmax(dim=1) if deterministic else self._choose(logits, generators)
        rows = torch.arange(cond.shape[0], device=cond.device)
        chains = candidates.clone()
        chains[rows, 0], chains[rows, chosen] = candidates[rows, chosen], candidates[rows, 0]
        # Scored by the same function as get_log_prob, so an unchanged policy gives a ratio of exactly 1.
        log_prob = self._terms(chains, cond)[0]
        return RLSample(action=self.base.decode_actions(chains[:, 0])["action"], chains=chains, log_prob=log_prob,
                        cond=cond)

    def get_log_prob(self, obs_dict: Dict[str, torch.Tensor], chains: torch.Tensor,
                     cond: Optional[torch.Tensor] = None) -> LogProbResult:
        """Log-prob and entropy ``(B,)`` of the choice stored in ``chains`` ``(B, N, horizon, Da)`` under the
        current selector (differentiable wrt it). ``cond``: features from :meth:`encode_obs`."""
        if chains.shape[1] != self.head.n_candidates:
            raise ValueError(f"selection chains are (B, {self.head.n_candidates}, horizon, Da) candidates, "
                             f"got {tuple(chains.shape)}")
        if cond is None:
            cond = self.encode_obs(obs_dict)
        log_prob, entropy = self._terms(chains.to(cond.device), cond)
        return LogProbResult(log_prob=log_prob, entropy=entropy)
