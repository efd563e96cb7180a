"""Learnable, observation-conditioned distribution of the flow's starting noise ``x0``.

Why: a BC flow policy draws ``x0 ~ N(0, I)`` and maps it to an action chunk. On lift_d0 that draw
decides much of the behaviour (``scripts/eval_policy.py noise_scale=0``: a policy at 0.60 falls to
0.07 when every chunk starts from ``x0 = 0``; 0.38 at scale 0.5, 0.10 at 1.5; 40 episodes each),
yet in ReinFlow's chain ``x0`` is exogenous noise with no parameters, so PPO cannot credit it and
its effect is pure variance in the policy gradient. Making ``x0 ~ N(mu(cond), std^2)`` a policy
transition like the others (DSRL steers diffusion policies the same way, through their latent
noise) gives PPO an exact log-prob for it. At initialisation ``mu = 0`` and ``std = 1``, so the
policy is exactly the BC policy.

``chunk_shift=True`` restricts the mean to one shift per action dim, shared by all ``horizon`` steps
(``action_dim`` outputs instead of ``horizon * action_dim``). Why: PPO's gradient for a per-entry mean
is one noisy estimate per entry; summed over the horizon, the shared shift averages them. Measured on
lift_d0 from the +2 cm weak start (6 batches of 32 episodes, sparse reward): the gradient of the z
shift was 1.6 noise-std per batch, against 0.55 for each per-entry z mean.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class ConditionalNoisePrior(nn.Module):
    """``forward(cond)`` -> ``(mean, std)``, each ``(B, horizon, action_dim)``.

    ``mean`` comes from an MLP on the observation features whose last layer starts at zero (one value
    per (time, dim) entry, or per dim broadcast over time with ``chunk_shift``);
    ``std`` is one learnable value per (time, dim) entry, clamped to ``[std_min, 1]`` (the BC
    prior's scale is the upper bound, so RL can only narrow the exploration in ``x0``).
    """

    def __init__(self, cond_dim: int, horizon: int, action_dim: int, hidden: int = 256, std_min: float = 0.1,
                 chunk_shift: bool = False):
        super().__init__()
        if not 0 < std_min <= 1:
            raise ValueError(f"noise prior std_min must lie in (0, 1], got {std_min}")
        self.shape = (int(horizon), int(action_dim))
        self.log_std_min = math.log(std_min)
        self.mean_shape = (1, int(action_dim)) if chunk_shift else self.shape
        out = nn.Linear(hidden, self.mean_shape[0] * self.mean_shape[1])
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.mean_net = nn.Sequential(nn.Linear(cond_dim, hidden), nn.Mish(), out)
        self.log_std = nn.Parameter(torch.zeros(self.shape))

    @torch.no_grad()
    def project_(self) -> None:
        """Put ``log_std`` back into ``[log(std_min), 0]`` after an optimizer step. Why: ``forward``'s clamp
        passes no gradient to an entry outside the box, so an entry one step pushed above 0 stayed there for
        good (the shipped lift_d0_ppo.ckpt had 145 of its 160 entries at +0.00..+0.003 after 449k env steps:
        PPO could never narrow them again). Projected, every entry keeps its gradient."""
        self.log_std.clamp_(self.log_std_min, 0.0)

    def std(self) -> torch.Tensor:
        """``(horizon, action_dim)`` std of ``x0``, inside ``[std_min, 1]`` (not observation-dependent)."""
        return self.log_std.clamp(self.log_std_min, 0.0).exp()

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean_net(cond).view(cond.shape[0], *self.mean_shape).expand(-1, *self.shape)
        std = self.std().expand_as(mean)
        return mean, std
