"""Observation encoders: a DP3-style PointNet for point clouds and an MLP for the robot state.

Why this shape: DP3 and ManiFlow showed that a small per-point MLP followed by a max-pool (no
T-Net, no hierarchical grouping) is enough for manipulation point clouds and is cheap on a CPU;
LayerNorm after every layer keeps training stable without BatchNorm's batch-size dependence
(which would also make rollouts with batch 1 behave differently from training).
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn as nn


def _mlp(dims: Sequence[int], use_layernorm: bool) -> nn.Sequential:
    """Linear (+ LayerNorm) + ReLU for each consecutive pair in ``dims``."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers.append(nn.Linear(d_in, d_out))
        if use_layernorm:
            layers.append(nn.LayerNorm(d_out))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PointNetEncoder(nn.Module):
    """Per-point MLP, max-pool over points, linear projection.

    ``forward(points)``: points ``(B, N, in_channels)`` -> features ``(B, out_channels)``.
    Max-pooling makes the output invariant to point order and to the number of points N.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 128,
                 hidden: Sequence[int] = (64, 128, 256), use_layernorm: bool = True):
        super().__init__()
        hidden = [int(h) for h in hidden]
        self.point_mlp = _mlp([int(in_channels), *hidden], use_layernorm)
        head: list[nn.Module] = [nn.Linear(hidden[-1], int(out_channels))]
        if use_layernorm:
            head.append(nn.LayerNorm(int(out_channels)))
        self.projection = nn.Sequential(*head)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        per_point = self.point_mlp(points)          # (B, N, hidden[-1])
        pooled = per_point.amax(dim=-2)             # (B, hidden[-1]); max(dim).values also finds indices: 10x slower
        return self.projection(pooled)


class ObsEncoder(nn.Module):
    """Encodes ``n_obs_steps`` frames of (point cloud, agent_pos) into one conditioning vector.

    ``forward(obs)`` with already-normalized tensors
      ``obs['point_cloud']``: ``(B, To, N, C)`` with ``C >= point_dim`` (extra channels such as
      RGB are dropped, so a 3-d policy can read a 6-channel dataset),
      ``obs['agent_pos']``: ``(B, To, agent_pos_dim)``,
    returns ``(B, To * (pc_out + state_out))``, frames concatenated in time order.
    ``To`` must equal ``n_obs_steps`` (the caller slices; the output size depends on it).
    """

    def __init__(self, point_dim: int = 3, agent_pos_dim: int = 9, n_obs_steps: int = 2,
                 pc_out: int = 128, state_out: int = 64,
                 pointnet_hidden: Sequence[int] = (64, 128, 256)):
        super().__init__()
        self.point_dim = int(point_dim)
        self.n_obs_steps = int(n_obs_steps)
        self.pointnet = PointNetEncoder(self.point_dim, int(pc_out), pointnet_hidden)
        self.state_mlp = nn.Sequential(
            nn.Linear(int(agent_pos_dim), 64), nn.ReLU(), nn.Linear(64, int(state_out)))
        self.output_dim = self.n_obs_steps * (int(pc_out) + int(state_out))

    def forward(self, obs: Dict[str, torch.Tensor]) -> torch.Tensor:
        points = obs["point_cloud"][..., : self.point_dim]
        state = obs["agent_pos"]
        batch, n_steps = state.shape[:2]
        if n_steps != self.n_obs_steps:
            raise ValueError(f"ObsEncoder expects {self.n_obs_steps} obs frames, got {n_steps}")
        pc_feat = self.pointnet(points.reshape(batch * n_steps, *points.shape[2:]))
        state_feat = self.state_mlp(state.reshape(batch * n_steps, -1))
        return torch.cat([pc_feat, state_feat], dim=-1).reshape(batch, -1)
