"""Gaussian residual on top of a frozen BC action chunk (ResiP: Ankile et al. 2024, "From Imitation to
Refinement -- Residual RL for Precise Assembly").

Why: the latent-noise and noisy-chain policies can only steer the pretrained flow through its own
inputs; a small per-step correction added to the executed actions can fix what the flow cannot reach
(a systematic offset, a missed grasp height) while the BC policy keeps doing the rest. The executed
slice (time indices ``exec_start : exec_start + n_action_steps``) of the normalized chunk becomes

    a_exec[t] = a_bc[t] + scale * r[t],   r ~ N(mu(cond, a_bc), diag(std^2)),

``mu`` from an MLP on the observation features and the flattened executed BC slice, its last layer
zero-initialised (the policy starts exactly as BC); ``std`` one learnable value per action dim, in the
residual's own units, clamped to ``[std_min, 1]``. ``scale`` fixes the units: with 0.1 a residual of
order 1 is a correction of 0.1 normalized action units (lift_d0: ~8 mm in x, ~11 mm in z).

``per_chunk=True``: one residual per action dim for the whole executed slice (``r`` is ``(B, 1, Da)``,
broadcast over the ``n_action_steps`` steps). Why: a per-step draw is jitter that the OSC controller
averages away within the chunk, so PPO explores "shift the grasp 1 cm lower" only through the mean of
8 independent draws, and scores it over 80 log-prob terms; one draw per chunk explores that offset
directly with 10 terms (the same reason as the latent policy's chunk-shared exploration).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class ResidualHead(nn.Module):
    """``forward(cond, chunk)`` -> ``(mean, std)`` of the residual, each ``(B, n_action_steps | 1, Da)``;
    ``add_to_chunk(chunk, residual)`` adds ``scale * residual`` to the executed slice of ``chunk``."""

    def __init__(self, cond_dim: int, action_dim: int, n_action_steps: int, exec_start: int,
                 hidden: int = 256, scale: float = 0.1, std_init: float = 0.5, std_min: float = 0.05,
                 per_chunk: bool = False):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"residual scale must be > 0, got {scale}")
        if not 0 < std_min <= std_init <= 1:
            raise ValueError(f"need 0 < residual std_min <= std_init <= 1, got {std_min}, {std_init}")
        self.shape = (1 if per_chunk else int(n_action_steps), int(action_dim))
        self.exec_slice = slice(int(exec_start), int(exec_start) + int(n_action_steps))
        self.scale = float(scale)
        self.log_std_min = math.log(std_min)
        out = nn.Linear(hidden, self.shape[0] * self.shape[1])
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.mean_net = nn.Sequential(nn.Linear(cond_dim + n_action_steps * action_dim, hidden), nn.Mish(),
                                      nn.Linear(hidden, hidden), nn.Mish(), out)
        self.log_std = nn.Parameter(torch.full((int(action_dim),), math.log(std_init)))

    def forward(self, cond: torch.Tensor, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond ``(B, cond_dim)``, chunk ``(B, horizon, Da)`` normalized BC chunk (only its executed
        slice is read) -> mean, std ``(B, n_action_steps, Da)`` (``(B, 1, Da)`` per chunk)."""
        bc = chunk[:, self.exec_slice]
        mean = self.mean_net(torch.cat([cond, bc.flatten(1)], dim=-1)).view(-1, *self.shape)
        std = self.log_std.clamp(self.log_std_min, 0.0).exp().expand_as(mean)
        return mean, std

    def add_to_chunk(self, chunk: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``chunk`` ``(B, horizon, Da)`` with ``scale * residual`` ``(B, n_action_steps | 1, Da)`` added to
        its executed slice (a new tensor; the other steps are copied unchanged)."""
        out = chunk.clone()
        out[:, self.exec_slice] = chunk[:, self.exec_slice] + self.scale * residual
        return out
