"""DP3 point-cloud encoder as in the original ManiFlow / DP3 checkpoints (``obs_encoder.*`` keys).

Why its own module (next to :mod:`equi_diffpo.model.pointnet_encoder`): checkpoints trained by the
original code name their weights by ``nn.Sequential`` index (``extractor.mlp.{0,1,3,4,6,7,9}``,
``extractor.final_projection.{0,1}``, ``state_mlp.{0,2}``), so the layer order, including the
parameter-free ReLU / Identity slots, is part of the file format and is kept here exactly.

With ``pointwise=True`` (ManiFlow) there is no max-pool: every point becomes one token, and the
state feature is appended to each of them, giving ``(B, N, out_channels + state_mlp_size[-1])``.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import torch
import torch.nn as nn

# The point MLP widths of DP3/ManiFlow (fixed in the original code, hence in the checkpoints).
HIDDEN_CHANNELS = (64, 128, 256)
RGB_LAST_CHANNELS = 512


def farthest_point_sample(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(B, k)`` of ``k`` farthest points of ``points`` ``(B, N, 3)``, starting at point 0
    (pytorch3d's ``sample_farthest_points`` default, which the original calls)."""
    batch, n_points = points.shape[:2]
    idx = torch.zeros(batch, k, dtype=torch.long, device=points.device)
    dist = torch.full((batch, n_points), float("inf"), device=points.device)
    rows = torch.arange(batch, device=points.device)
    for i in range(1, k):
        last = points[rows, idx[:, i - 1]]                                  # (B, 3)
        dist = torch.minimum(dist, ((points - last[:, None]) ** 2).sum(-1))
        idx[:, i] = dist.argmax(dim=1)
    return idx


class PointNetExtractor(nn.Module):
    """Per-point MLP ``in_channels -> 64 -> 128 -> 256 [-> 512]`` then a projection.

    ``in_channels`` 6 (xyz + rgb, the original ``PointNetEncoderXYZRGB``): a last Linear 256 -> 512
    without activation; 3 (``PointNetEncoderXYZ``): the MLP ends with the ReLU after 256.
    ``forward(points (B, N, C))`` -> ``(B, N, out_channels)`` if ``pointwise`` else ``(B, out_channels)``
    (max over points before the projection).
    """

    def __init__(self, in_channels: int, out_channels: int, use_layernorm: bool = True, final_norm: str = "layernorm",
                 use_projection: bool = True, pointwise: bool = True):
        super().__init__()
        if in_channels not in (3, 6):
            raise ValueError(f"the DP3 extractor takes xyz (3) or xyz+rgb (6) channels, got {in_channels}")
        layers: list[nn.Module] = []
        width = in_channels
        for hidden in HIDDEN_CHANNELS:
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden) if use_layernorm else nn.Identity(), nn.ReLU()]
            width = hidden
        if in_channels == 6:
            layers.append(nn.Linear(width, RGB_LAST_CHANNELS))
            width = RGB_LAST_CHANNELS
        self.mlp = nn.Sequential(*layers)
        if final_norm == "layernorm":
            self.final_projection: nn.Module = nn.Sequential(nn.Linear(width, out_channels), nn.LayerNorm(out_channels))
        elif final_norm == "none":
            self.final_projection = nn.Linear(width, out_channels)
        else:
            raise ValueError(f"final_norm={final_norm!r}; use 'layernorm' or 'none'")
        if not use_projection and in_channels == 3:     # the original honours it for xyz only
            self.final_projection = nn.Identity()
        self.pointwise = pointwise

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x = self.mlp(points)
        if not self.pointwise:
            x = x.max(dim=1).values
        return self.final_projection(x)


class DP3Encoder(nn.Module):
    """Point cloud + low-dim state -> per-point tokens (``pointwise``) or one vector.

    ``forward(obs)``: ``obs['point_cloud']`` ``(B, N, C)`` (already normalized, ``C`` = 6 with
    colour else 3), ``obs[k]`` ``(B, D_k)`` for ``k`` in ``state_keys`` (concatenated in that order)
    -> ``(B, N', out_channel + state_mlp_size[-1])`` with ``N' = min(N, num_points)`` when
    ``downsample_points`` (farthest-point sampling only if ``N > num_points``), else ``N``.
    """

    def __init__(self, state_dims: Mapping[str, int], state_keys: Sequence[str], out_channel: int = 128,
                 use_pc_color: bool = True, state_mlp_size: Sequence[int] = (64, 64), use_layernorm: bool = True,
                 final_norm: str = "layernorm", use_projection: bool = True, pointwise: bool = True,
                 downsample_points: bool = False, num_points: int = 1024):
        super().__init__()
        missing = [k for k in state_keys if k not in state_dims]
        if missing:
            raise ValueError(f"state keys {missing} are not in the observation shapes {sorted(state_dims)}")
        if len(state_mlp_size) == 0:
            raise ValueError("state_mlp_size is empty")
        self.state_keys = list(state_keys)
        self.extractor = PointNetExtractor(6 if use_pc_color else 3, out_channel, use_layernorm, final_norm,
                                           use_projection, pointwise)
        widths = [sum(int(state_dims[k]) for k in self.state_keys), *[int(w) for w in state_mlp_size]]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.state_mlp = nn.Sequential(*layers)
        self.downsample_points, self.num_points = bool(downsample_points), int(num_points)
        self.output_dim = int(out_channel) + widths[-1]

    def forward(self, obs: Dict[str, torch.Tensor]) -> torch.Tensor:
        points = obs["point_cloud"]
        if self.downsample_points and points.shape[1] > self.num_points:
            idx = farthest_point_sample(points[..., :3], self.num_points)
            points = points[torch.arange(points.shape[0], device=points.device)[:, None], idx]
        point_feat = self.extractor(points)
        state_feat = self.state_mlp(torch.cat([obs[k] for k in self.state_keys], dim=-1))
        if point_feat.dim() == 3:
            state_feat = state_feat[:, None].expand(-1, point_feat.shape[1], -1)
        return torch.cat([point_feat, state_feat], dim=-1)
