"""A workspace owns one run: its output folder, its components and their checkpoints.

As in diffusion_policy, ``save_checkpoint`` walks the workspace's attributes and stores every
object with a ``state_dict`` (models, optimizers, EMA, trainers, reward scalers), plus the
counters named in ``pickle_keys``; ``load_checkpoint`` restores them, so resuming needs no
per-workspace code. Files: ``<output_dir>/checkpoints/latest.ckpt`` and ``epoch_XXXX.ckpt``.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from equi_diffpo.common.checkpoint_io import atomic_torch_save, load_payload
from equi_diffpo.common.errors import ConfigError
from equi_diffpo.common.hydra_cli import hydra_output_dir


def resolve_device(name: str) -> torch.device:
    """``training.device``: cpu | cuda | cuda:N, with a clear error when CUDA is absent."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"training.device={name!r} is not a device: use cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"training.device={name} but CUDA is not available here: use training.device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"training.device={name} but only {torch.cuda.device_count()} CUDA device(s) exist: "
                          f"use training.device=cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class BaseWorkspace:
    pickle_keys: Sequence[str] = ("global_step", "epoch")
    exclude_keys: Sequence[str] = ()

    def __init__(self, cfg: DictConfig, output_dir: Optional[str] = None):
        self.cfg = cfg
        self.output_dir = output_dir or hydra_output_dir()
        self.global_step = 0
        self.epoch = 0

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.output_dir, "checkpoints")

    def run(self) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def _stateful_attributes(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if hasattr(v, "state_dict") and hasattr(v, "load_state_dict") and k not in self.exclude_keys}

    def checkpoint_payload(self) -> Dict[str, Any]:
        return {
            "cfg": self.cfg,
            "state_dicts": {k: v.state_dict() for k, v in self._stateful_attributes().items()},
            "pickles": {k: getattr(self, k) for k in self.pickle_keys},
        }

    def save_checkpoint(self, tag: str = "latest") -> str:
        """Atomically write ``<checkpoint_dir>/<tag>.ckpt``; returns its path."""
        return atomic_torch_save(self.checkpoint_payload(), os.path.join(self.checkpoint_dir, f"{tag}.ckpt"))

    def load_checkpoint(self, path: Optional[str] = None) -> Dict[str, Any]:
        """Restore every stateful attribute and counter from ``path`` (default: latest.ckpt)."""
        payload = load_payload(path or os.path.join(self.checkpoint_dir, "latest.ckpt"))
        attrs = self._stateful_attributes()
        for key, state in payload["state_dicts"].items():
            if key in attrs:
                attrs[key].load_state_dict(state)
        for key, value in payload["pickles"].items():
            setattr(self, key, value)
        return payload

    def latest_checkpoint(self) -> Optional[str]:
        path = os.path.join(self.checkpoint_dir, "latest.ckpt")
        return path if os.path.isfile(path) else None
