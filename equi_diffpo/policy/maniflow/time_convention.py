"""The two flow-time directions of original ManiFlow checkpoints, one small class each.

A checkpoint's cfg does not record which one its weights were trained with, and the two are not
interchangeable (the same net integrated the wrong way gives garbage), so the policy is always told
(``time_convention=...``) and never guesses:

``t0_noise_t1_data`` (upstream ManiFlow, pummmmpkin/ManiFlow_Policy; the seed RL repo up to 2026-01-09):
  ``x_t = (1 - t) noise + t data``, velocity ``v = data - noise``; Euler from ``t = 0`` over
  ``t_k = k / K``, ``x += v dt``, target t (relative) ``dt``; consistency-flow loss on.
``t1_noise_t0_data`` (the seed fork from 2026-01-10, haibo-blip/reinforcement-learning-mimicgen):
  ``x_t = t noise + (1 - t) data``, ``v = noise - data``; Euler from ``t = 1`` over
  ``t_k = (K - k) / K``, ``x -= v dt``, target t always 0; the consistency loss is disabled there
  (its target divides by ``t``, which its discrete t grid makes 0), so training is flow-only.

Shapes: ``noise``, ``data``, ``x``, ``v`` ``(B, T, Da)``; ``t`` broadcastable, e.g. ``(B, 1, 1)``.
"""
from __future__ import annotations

from typing import Dict, Type

import torch


class TimeConvention:
    name: str
    trains_consistency: bool

    def sample_times(self, n_steps: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The ``n_steps`` Euler start times ``(n_steps,)``, in integration order."""
        raise NotImplementedError

    def sample_target_t(self, dt: float) -> float:
        """The relative target t the net is given during sampling with step ``dt``."""
        raise NotImplementedError

    def euler_step(self, x: torch.Tensor, v: torch.Tensor, dt: float) -> torch.Tensor:
        raise NotImplementedError

    def interpolate(self, noise: torch.Tensor, data: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def velocity(self, noise: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        """Flow-matching target ``v`` for the pair (constant along the straight path)."""
        raise NotImplementedError

    def consistency_target(self, x_t: torch.Tensor, t: torch.Tensor, x_next: torch.Tensor, t_next: torch.Tensor,
                           v_teacher: torch.Tensor) -> torch.Tensor:
        """Velocity at ``(x_t, t)`` that lands on the teacher's data estimate from ``(x_next, t_next)``."""
        raise NotImplementedError


class NoiseAtZero(TimeConvention):
    name = "t0_noise_t1_data"
    trains_consistency = True

    def sample_times(self, n_steps, dtype, device):
        return torch.arange(0, n_steps, dtype=dtype, device=device) / n_steps

    def sample_target_t(self, dt):
        return dt

    def euler_step(self, x, v, dt):
        return x + v * dt

    def interpolate(self, noise, data, t):
        return (1.0 - t) * noise + t * data

    def velocity(self, noise, data):
        return data - noise

    def consistency_target(self, x_t, t, x_next, t_next, v_teacher):
        data_hat = x_next + (1 - t_next) * v_teacher
        return (data_hat - x_t) / (1 - t)


class NoiseAtOne(TimeConvention):
    name = "t1_noise_t0_data"
    trains_consistency = False

    def sample_times(self, n_steps, dtype, device):
        return torch.arange(n_steps, 0, -1, dtype=dtype, device=device) / n_steps

    def sample_target_t(self, dt):
        return 0.0

    def euler_step(self, x, v, dt):
        return x - v * dt

    def interpolate(self, noise, data, t):
        return t * noise + (1.0 - t) * data

    def velocity(self, noise, data):
        return noise - data

    def consistency_target(self, x_t, t, x_next, t_next, v_teacher):
        raise NotImplementedError("the t1_noise_t0_data fork trains without the consistency loss")


CONVENTIONS: Dict[str, Type[TimeConvention]] = {c.name: c for c in (NoiseAtZero, NoiseAtOne)}


def get_time_convention(name: str | None) -> TimeConvention:
    """The convention called ``name``; ``None`` or an unknown name raises, listing both."""
    if name not in CONVENTIONS:
        raise ValueError(
            f"time_convention={name!r}: state the flow-time direction the weights were trained with, one of "
            f"{sorted(CONVENTIONS)} ('t0_noise_t1_data' = upstream ManiFlow; 't1_noise_t0_data' = the seed RL fork "
            "from 2026-01-10). Original checkpoints do not record it: pass time_convention=... "
            "(scripts/eval_policy.py, scripts/train_rl.py, test_rl_rollout.py; or policy.time_convention=... "
            "in a policy config).")
    return CONVENTIONS[name]()
