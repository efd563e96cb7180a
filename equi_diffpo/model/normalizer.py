"""Per-field affine normalizer stored inside the policy (so checkpoints carry it).

Why: actions and low-dim states live in metres / radians / gripper units with very different
ranges; flow matching assumes targets roughly in [-1, 1]. The normalizer is an ``nn.Module`` whose
buffers are saved with the policy's ``state_dict``, like diffusion_policy's ``LinearNormalizer``.
"""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np
import torch
import torch.nn as nn


class SingleFieldNormalizer(nn.Module):
    """``y = x * scale + offset`` over the last dimension (shape ``(D,)`` buffers)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(dim))

    @classmethod
    def fit(cls, data: np.ndarray | torch.Tensor, mode: str = "limits", eps: float = 1e-4,
            output_range: float = 1.0) -> "SingleFieldNormalizer":
        """Fit on ``data`` of shape ``(..., D)``.

        mode ``limits``: per-dim min/max -> [-output_range, output_range]; dims with (near) zero
        range are only centred (scale 1) so constant features don't explode.
        mode ``identity``: no change (used for point clouds, as DP3/ManiFlow do).
        """
        x = torch.as_tensor(np.asarray(data), dtype=torch.float32).reshape(-1, np.shape(data)[-1])
        norm = cls(x.shape[-1])
        if mode == "identity":
            return norm
        if mode != "limits":
            raise ValueError(f"unknown normalizer mode {mode!r}; use 'limits' or 'identity'")
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        span = hi - lo
        flat = span < eps
        scale = torch.where(flat, torch.ones_like(span), 2 * output_range / span.clamp_min(eps))
        offset = torch.where(flat, -(hi + lo) / 2, -output_range - lo * scale)
        norm.scale.copy_(scale)
        norm.offset.copy_(offset)
        return norm

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.offset) / self.scale


class LinearNormalizer(nn.Module):
    """A dict of :class:`SingleFieldNormalizer`, keyed by field name (``action``, ``agent_pos``,
    ``point_cloud``). ``normalizer['action'].normalize(a)``; ``normalizer.normalize(obs_dict)``
    normalizes every key it knows and passes the others through."""

    def __init__(self) -> None:
        super().__init__()
        self.fields = nn.ModuleDict()
        # Fields depend on the dataset: create the ones a saved state has before loading it, so an
        # empty normalizer (alone or inside a policy) loads a checkpoint without set_normalizer.
        self.register_load_state_dict_pre_hook(self._create_fields)

    def _create_fields(self, _module: nn.Module, state_dict: Dict[str, torch.Tensor], prefix: str, *_args) -> None:
        for key, value in state_dict.items():
            if key.startswith(prefix + "fields.") and key.endswith(".scale"):
                name = key[len(prefix + "fields."):-len(".scale")]
                if name not in self.fields:
                    self.fields[name] = SingleFieldNormalizer(value.shape[-1])

    @classmethod
    def fit(cls, data: Mapping[str, np.ndarray], modes: Mapping[str, str] | None = None) -> "LinearNormalizer":
        """``data[key]`` has shape ``(..., D_key)``; ``modes[key]`` is 'limits' (default) or 'identity'."""
        norm = cls()
        for key, value in data.items():
            norm.fields[key] = SingleFieldNormalizer.fit(value, mode=(modes or {}).get(key, "limits"))
        return norm

    def __getitem__(self, key: str) -> SingleFieldNormalizer:
        return self.fields[key]

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def normalize(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: self.fields[k].normalize(v) if k in self.fields else v for k, v in data.items()}

    def unnormalize(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: self.fields[k].unnormalize(v) if k in self.fields else v for k, v in data.items()}
