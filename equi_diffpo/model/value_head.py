"""PPO critic: its own obs encoder + MLP -> state value of a chunk-level MDP step (``critic.encoder: own``).

Why its own encoder: sharing the actor's encoder lets large, noisy value-loss gradients disturb a
pretrained policy's features (the usual reason PPO fine-tuning of BC policies collapses early).

Input contract: ``forward`` takes obs that are ALREADY normalized and sliced to ``n_obs_steps``
frames, i.e. the output of ``ManiFlowPointcloudPolicy.normalize_obs(raw_obs)`` (also reachable as
``RLPolicyBase.normalize_obs``). The critic thus holds no normalizer of its own and always
sees the same features scale as the actor, from the one normalizer stored with the policy.

The cheap alternative (``critic.encoder: policy``, :class:`~equi_diffpo.rl_training.critic.PolicyFeatureCritic`)
puts :func:`value_mlp` on the policy's frozen features instead.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
import torch.nn as nn

from equi_diffpo.model.pointnet_encoder import ObsEncoder


def value_mlp(in_dim: int, hidden: int) -> nn.Sequential:
    """Obs features ``(B, in_dim)`` -> ``(B, 1)``: two Mish hidden layers of ``hidden`` units."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Mish(), nn.Linear(hidden, hidden), nn.Mish(),
                         nn.Linear(hidden, 1))


class ValueHead(nn.Module):
    """``forward(nobs)``: ``nobs['point_cloud']`` ``(B, To, N, C)``, ``nobs['agent_pos']``
    ``(B, To, agent_pos_dim)`` (normalized, ``To == n_obs_steps``) -> values ``(B,)``."""

    def __init__(self, point_dim: int = 3, agent_pos_dim: int = 9, n_obs_steps: int = 2,
                 hidden: int = 256, pc_out: int = 128, state_out: int = 64,
                 obs_encoder: ObsEncoder | None = None):
        """``obs_encoder``: start from a *copy* of this encoder (e.g. the pretrained policy's, so the
        critic sees useful point-cloud features from its first update) instead of a fresh one
        built from ``point_dim .. state_out``; the original is never shared or modified."""
        super().__init__()
        self.obs_encoder = (copy.deepcopy(obs_encoder) if obs_encoder is not None
                            else ObsEncoder(point_dim, agent_pos_dim, n_obs_steps, pc_out, state_out))
        # A copy of the policy's encoder inherits its requires_grad, which is False unless
        # finetune_obs_encoder: without this line the "own" encoder silently never learned.
        self.obs_encoder.requires_grad_(True)
        self.mlp = value_mlp(self.obs_encoder.output_dim, hidden)

    def forward(self, nobs: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.obs_encoder(nobs)).squeeze(-1)
