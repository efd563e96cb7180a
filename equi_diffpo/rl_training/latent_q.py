"""Twin Q-function of the DSRL policy: (simulator state, starting noise ``x_0``) -> expected chunk-level return.

Asymmetric like the PPO default (:class:`~equi_diffpo.rl_training.critic.PrivilegedCritic`): the critic reads
the simulator's low-dim state (standardized by statistics fitted on the first batch), the policy reads point
clouds only. Its action input is the flow's starting noise ``x_0`` ``(horizon * Da)``, not the executed
chunk: the actor's gradient is ``dQ/dx_0``, which needs no backward pass through the velocity net.
Two Q heads (clipped double Q, as in SAC/TD3) with LayerNorm, which keeps off-policy critics from
diverging when the same transitions are replayed many times (Ball et al. 2023, RLPD).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from equi_diffpo.rl_training.critic import PrivilegedCritic


def q_mlp(in_dim: int, hidden: int) -> nn.Sequential:
    """``(B, in_dim)`` -> ``(B, 1)``: two LayerNorm + Mish hidden layers."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.Mish(),
                         nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.Mish(), nn.Linear(hidden, 1))


class LatentQCritic(PrivilegedCritic):
    """``forward(state, x0)``: raw state ``(B, agent_pos_dim + P)`` (:meth:`state_input` of an obs batch) and
    ``x0`` ``(B, horizon, Da)`` -> ``(q1, q2)``, each ``(B,)``. Keeps the privileged critic's input statistics
    (same buffers, same fitting) and replaces its value MLP by the two Q heads."""
    encoder_setting = "privileged (rl_policy=dsrl)"

    def __init__(self, agent_pos_dim: int, privileged_dim: int, latent_dim: int, hidden: int = 256):
        super().__init__(agent_pos_dim, privileged_dim, hidden)
        del self.mlp   # the state-value MLP: a Q-function reads the action too
        in_dim = int(agent_pos_dim) + int(privileged_dim) + int(latent_dim)
        self.q1, self.q2 = q_mlp(in_dim, hidden), q_mlp(in_dim, hidden)

    def forward(self, state: torch.Tensor, x0: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.standardize(state), x0.flatten(1)], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)
