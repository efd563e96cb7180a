"""Exponential moving average of a model's weights, with diffusion_policy's warm-up schedule.

Why: flow/diffusion policies evaluated with EMA weights are markedly smoother and more reliable
than the raw weights; ManiFlow's consistency targets also come from the EMA model. The warm-up
(``decay = 1 - (1 + step / inv_gamma) ** -power``) lets the average track the fast early changes
instead of being anchored to the random init for thousands of steps.

Usage (as in diffusion_policy): the EMA copy is a separate model that this object updates in place::

    ema_model = copy.deepcopy(model)
    ema = EMAModel(ema_model)
    ...; optimizer.step(); ema.step(model)
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn as nn


class EMAModel:
    """Keeps ``model`` (the averaged copy) as an EMA of the model passed to :meth:`step`.

    Trainable parameters are averaged; frozen parameters and buffers (e.g. the normalizer) are
    copied, since averaging them has no meaning. ``state_dict`` holds the step counter so a resumed
    run continues the same decay schedule.
    """

    def __init__(self, model: nn.Module, update_after_step: int = 0, inv_gamma: float = 1.0,
                 power: float = 0.75, min_value: float = 0.0, max_value: float = 0.9999):
        self.averaged_model = model
        self.averaged_model.eval()
        self.averaged_model.requires_grad_(False)
        self.update_after_step = update_after_step
        self.inv_gamma = inv_gamma
        self.power = power
        self.min_value = min_value
        self.max_value = max_value
        self.decay = 0.0
        self.optimization_step = 0

    def get_decay(self, optimization_step: int) -> float:
        """Decay for the given step: 0 until ``update_after_step``, then the warm-up curve."""
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))

    @torch.no_grad()
    def step(self, new_model: nn.Module) -> None:
        """Blend ``new_model``'s weights into the averaged model (names must match)."""
        self.decay = self.get_decay(self.optimization_step)
        ema_params = dict(self.averaged_model.named_parameters())
        for name, param in new_model.named_parameters():
            target = ema_params[name]
            if param.requires_grad:
                target.lerp_(param.detach().to(target.dtype), 1.0 - self.decay)
            else:
                target.copy_(param.detach())
        ema_buffers = dict(self.averaged_model.named_buffers())
        new_buffers = dict(new_model.named_buffers())
        if ema_buffers.keys() != new_buffers.keys():
            raise ValueError("EMA and model buffers differ (was the normalizer set on only one of them?): "
                             f"{sorted(ema_buffers.keys() ^ new_buffers.keys())}")
        for name, buf in new_buffers.items():
            ema_buffers[name].copy_(buf)
        self.optimization_step += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"optimization_step": self.optimization_step, "decay": self.decay}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optimization_step = int(state["optimization_step"])
        self.decay = float(state["decay"])
