"""Flow velocity network ``v(x_t, t, dt, cond)`` over action chunks.

A small conditional 1D-conv UNet (the idea of diffusion_policy's ``ConditionalUnet1D``): the action
chunk ``(B, horizon, Da)`` is treated as a ``Da``-channel sequence; every residual block is FiLM-
modulated by ``[emb(t), emb(dt), cond]``. ManiFlow uses a DiT-X transformer (12 layers, 768 wide);
that is far too slow for CPU RL, while a ~1-2 M parameter UNet runs a 2-step sample for a batch of
envs in milliseconds. The size is set by ``down_dims`` / ``kernel_size`` in the config.

``dt`` is the integration step the caller is about to take (ManiFlow's relative "target t"): 0 asks
for the instantaneous velocity (flow-matching targets), ``dt > 0`` for the average velocity over
``[t, t + dt]`` (consistency-flow targets), which is what makes 1-2 Euler steps accurate.

``prediction``: what the U-Net's output means. ``velocity`` (ManiFlow): the output is ``v``.
``sample``: the output is the clean chunk ``x1`` and ``forward`` returns the velocity that reaches it,
``(x1 - x) / (1 - t)``, so every caller (sampler, RL chains, FPO) still gets a velocity. Why: for a
near-deterministic expert the velocity at ``t = 0`` is ``x1 - x0``, so a velocity net must pass its
noisy input through with coefficient exactly -1; what it misses stays in the action as noise
(stack_d0 BC, epoch 8: that spread was 2/3 of the position error). A sample net only has to ignore it.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

PREDICTIONS = ("velocity", "sample")
MIN_TIME_LEFT = 0.01    # (1 - t) floor when a sample prediction becomes a velocity (t = 1 is the data itself)


class SinusoidalEmbedding(nn.Module):
    """Scalar in [0, 1] -> ``(B, dim)`` sin/cos features.

    The scalar is multiplied by ``scale`` (1000) first: the frequencies span 1 .. 1/10000 as in
    transformer position encodings, which only resolve small differences in [0, 1] after scaling.
    """

    def __init__(self, dim: int, scale: float = 1000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.dim = dim
        self.scale = scale

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=value.device) / max(half - 1, 1))
        angles = (value.float() * self.scale)[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _scalar_mlp(dim: int) -> nn.Sequential:
    """Sinusoidal features followed by a 2-layer MLP (standard diffusion time encoder)."""
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish on ``(B, C, T)``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_ch),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class CondResBlock(nn.Module):
    """Two conv blocks with FiLM in between: ``h = conv1(x) * (1 + scale) + shift``.

    The ``1 +`` keeps the block close to unconditioned at init so early training is stable.
    """

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.conv1 = Conv1dBlock(in_ch, out_ch, kernel_size, n_groups)
        self.conv2 = Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_ch))
        self.residual = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[..., None].chunk(2, dim=1)   # each (B, out_ch, 1)
        h = self.conv1(x) * (1 + scale) + shift
        return self.conv2(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Velocity network over action chunks.

    ``forward(x, t, dt, cond)``: x ``(B, horizon, action_dim)``, t and dt ``(B,)`` (or scalars,
    broadcast), cond ``(B, cond_dim)`` -> velocity ``(B, horizon, action_dim)``.
    ``horizon`` must be divisible by ``2 ** (len(down_dims) - 1)`` (each level halves it).
    """

    def __init__(self, action_dim: int, cond_dim: int, horizon: int = 16,
                 down_dims: Sequence[int] = (64, 128, 256), time_embed_dim: int = 64,
                 kernel_size: int = 5, n_groups: int = 8, prediction: str = "velocity"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"policy.prediction={prediction!r} is not valid; use one of {', '.join(PREDICTIONS)}")
        self.prediction = prediction
        down_dims = [int(d) for d in down_dims]
        factor = 2 ** (len(down_dims) - 1)
        if horizon % factor:
            raise ValueError(f"horizon {horizon} must be divisible by {factor} for down_dims {down_dims}")
        self.time_embed = _scalar_mlp(time_embed_dim)
        self.dt_embed = _scalar_mlp(time_embed_dim)
        film_dim = 2 * time_embed_dim + cond_dim

        def res(i: int, o: int) -> CondResBlock:
            return CondResBlock(i, o, film_dim, kernel_size, n_groups)

        dims = [action_dim, *down_dims]
        self.down = nn.ModuleList()
        for level, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            is_last = level == len(down_dims) - 1
            resample = nn.Identity() if is_last else nn.Conv1d(d_out, d_out, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([res(d_in, d_out), res(d_out, d_out), resample]))
        self.mid = nn.ModuleList([res(down_dims[-1], down_dims[-1]), res(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for d_skip, d_out in zip(reversed(down_dims[1:]), reversed(down_dims[:-1])):
            upsample = nn.ConvTranspose1d(d_out, d_out, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([res(2 * d_skip, d_out), res(d_out, d_out), upsample]))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   nn.Conv1d(down_dims[0], action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, dt: torch.Tensor | float,
                cond: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(batch)
        dt = torch.as_tensor(dt, dtype=x.dtype, device=x.device).expand(batch)
        film = torch.cat([self.time_embed(t), self.dt_embed(dt), cond], dim=-1)

        h = x.transpose(1, 2)                          # (B, Da, T)
        skips = []
        for block1, block2, downsample in self.down:
            h = block2(block1(h, film), film)
            skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, film)
        for block1, block2, upsample in self.up:
            # The deepest skip has the same length as the bottleneck; pop it first.
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(block2(block1(h, film), film))
        out = self.final(h).transpose(1, 2)
        if self.prediction == "velocity":
            return out
        return (out - x) / (1 - t).clamp(min=MIN_TIME_LEFT).view(-1, 1, 1)
