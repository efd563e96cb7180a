"""The equidiff / diffusion_policy ``LinearNormalizer`` state layout, as original ManiFlow checkpoints store it.

Why a second normalizer (next to :class:`equi_diffpo.model.normalizer.LinearNormalizer`): the
original checkpoints keep, per field, ``params_dict.<field>.{scale, offset}`` plus the fitted data
statistics ``params_dict.<field>.input_stats.{min, max, mean, std}``, and a strict load needs every
one of those keys. The maths is the same affine map ``y = x * scale + offset`` over the last
dimension; a field's ``scale`` of shape ``(1,)`` (the original's image normalizer) broadcasts.
Values are buffers, not parameters: they are data statistics, so optimizers and EMA leave them alone
(the original used frozen parameters; the state-dict keys are the same).
"""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np
import torch
import torch.nn as nn

STAT_NAMES = ("min", "max", "mean", "std")


class _Stats(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        for name in STAT_NAMES:
            self.register_buffer(name, torch.zeros(dim))


class FieldParams(nn.Module):
    """``scale``, ``offset`` ``(D,)`` and ``input_stats`` of one field; ``normalize`` maps ``(..., D)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(dim))
        self.input_stats = _Stats(dim)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.offset) / self.scale

    @classmethod
    def fit(cls, data: np.ndarray | torch.Tensor, mode: str = "limits", output_min: float = -1.0,
            output_max: float = 1.0, range_eps: float = 1e-4) -> "FieldParams":
        """equidiff's ``_fit`` with ``fit_offset=True`` on ``data (..., D)``.

        ``limits``: per-dim min/max -> [output_min, output_max]; a (near) constant dim keeps unit
        scale and is moved to the middle of the output range. ``gaussian``: zero mean, unit std.
        ``identity``: no change (statistics still recorded).
        """
        x = torch.as_tensor(np.asarray(data), dtype=torch.float32)
        x = x.reshape(-1, x.shape[-1])
        lo, hi, mean, std = x.min(dim=0).values, x.max(dim=0).values, x.mean(dim=0), x.std(dim=0)
        if mode == "limits":
            span = hi - lo
            flat = span < range_eps
            span = torch.where(flat, torch.full_like(span, output_max - output_min), span)
            scale = (output_max - output_min) / span
            offset = torch.where(flat, (output_max + output_min) / 2 - lo, output_min - scale * lo)
        elif mode == "gaussian":
            scale = 1 / torch.where(std < range_eps, torch.ones_like(std), std)
            offset = -mean * scale
        elif mode == "identity":
            scale, offset = torch.ones_like(mean), torch.zeros_like(mean)
        else:
            raise ValueError(f"unknown normalizer mode {mode!r}; use 'limits', 'gaussian' or 'identity'")
        field = cls(x.shape[-1])
        for name, value in zip(("scale", "offset", *STAT_NAMES), (scale, offset, lo, hi, mean, std)):
            target = field if name in ("scale", "offset") else field.input_stats
            getattr(target, name).copy_(value)
        return field


class EquidiffNormalizer(nn.Module):
    """Fields keyed by name (``action``, ``point_cloud``, ``robot0_eef_pos``, ...) under ``params_dict``.

    ``normalizer['action'].normalize(a)``; fields are created from a state dict on load, so an
    empty normalizer (alone or inside a policy) loads any checkpoint's normalizer strictly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.params_dict = nn.ModuleDict()
        self.register_load_state_dict_pre_hook(self._create_fields)

    def _create_fields(self, _module: nn.Module, state_dict: Dict[str, torch.Tensor], prefix: str, *_args) -> None:
        head = prefix + "params_dict."
        for key, value in state_dict.items():
            if key.startswith(head) and key.endswith(".scale"):
                name = key[len(head):-len(".scale")]
                if name not in self.params_dict or self.params_dict[name].scale.shape != value.shape:
                    self.params_dict[name] = FieldParams(value.shape[-1])

    @classmethod
    def fit(cls, data: Mapping[str, np.ndarray], modes: Mapping[str, str] | None = None) -> "EquidiffNormalizer":
        """``data[key]`` ``(..., D_key)``; ``modes[key]`` 'limits' (default), 'gaussian' or 'identity'."""
        norm = cls()
        for key, value in data.items():
            norm.params_dict[key] = FieldParams.fit(value, mode=(modes or {}).get(key, "limits"))
        return norm

    def __getitem__(self, key: str) -> FieldParams:
        return self.params_dict[key]

    def __contains__(self, key: str) -> bool:
        return key in self.params_dict
