"""A workspace owns one run: its output folder, its components and their checkpoints.

As in diffusion_policy, ``save_checkpoint`` walks the workspace's attributes and stores every
object with a ``state_dict`` (models, optimizers, EMA, trainers, reward scalers), plus the
counters named in ``pickle_keys``; ``load_checkpoint`` restores them, so resuming needs no
per-workspace code. Files: ``<output_dir>/checkpoints/latest.ckpt`` and ``epoch_XXXX.ckpt``.
Resuming (:meth:`BaseWorkspace.resume`) takes the newest *readable* one of them.
"""
from __future__ import annotations

import glob
import os
import random
import re
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig

from equi_diffpo.common.checkpoint_io import CheckpointError, atomic_torch_save, load_payload
from equi_diffpo.common.errors import ConfigError, one_line
from equi_diffpo.common.hydra_cli import hydra_output_dir


class CheckpointFallbackWarning(UserWarning):
    """latest.ckpt (or a newer epoch file) was unreadable; an older checkpoint of the run was used."""


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


def _epoch_of(path: str) -> int:
    match = re.search(r"epoch_(\d+)\.ckpt$", path)
    return int(match.group(1)) if match else -1


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class BaseWorkspace:
    pickle_keys: Sequence[str] = ("global_step", "epoch")

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
                if hasattr(v, "state_dict") and hasattr(v, "load_state_dict")}

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
        """Restore every stateful attribute and counter from ``path`` (default: the newest
        readable checkpoint of this run, see :meth:`read_newest_checkpoint`)."""
        path, payload = self.read_newest_checkpoint() if path is None else (path, load_payload(path))
        self._restore(path, payload)
        return payload

    def _restore(self, path: str, payload: Dict[str, Any]) -> None:
        attrs = self._stateful_attributes()
        for key, state in payload["state_dicts"].items():
            if key in attrs:
                try:
                    attrs[key].load_state_dict(state)
                except (RuntimeError, ValueError, KeyError) as err:   # torch's size/key mismatch, the trainer's own
                    detail = one_line("\n".join(str(err).splitlines()[:2]))[:300]
                    raise CheckpointError(
                        f"checkpoint {path!r} does not fit this run's {key!r} ({detail}): it was written with another "
                        "config; resume with that config, or start over with training.resume=false or another "
                        "hydra.run.dir") from err
        for key, value in payload["pickles"].items():
            setattr(self, key, value)

    def checkpoint_files(self) -> List[str]:
        """This run's checkpoints, newest first: latest.ckpt, then epoch_XXXX.ckpt by epoch."""
        latest = os.path.join(self.checkpoint_dir, "latest.ckpt")
        epochs = sorted(glob.glob(os.path.join(self.checkpoint_dir, "epoch_*.ckpt")), key=_epoch_of, reverse=True)
        return ([latest] if os.path.isfile(latest) else []) + epochs

    def read_newest_checkpoint(self) -> Tuple[str, Dict[str, Any]]:
        """``(path, payload)`` of the newest checkpoint of this run that can be read.

        Why a fallback: writes are atomic, yet a file can still be damaged afterwards (disk error,
        a partial copy of the run dir); an unreadable latest.ckpt then costs the epochs since the
        newest good epoch_XXXX.ckpt, with a :class:`CheckpointFallbackWarning`, not the run."""
        problems: List[str] = []
        for path in self.checkpoint_files():
            try:
                payload = load_payload(path)
            except CheckpointError as err:
                problems.append(str(err))
                continue
            if problems:
                warnings.warn(f"{'; '.join(problems)}; resuming from {path} instead", CheckpointFallbackWarning)
            return path, payload
        raise CheckpointError(f"no readable checkpoint in {self.checkpoint_dir!r} ({'; '.join(problems) or 'none saved'}): "
                              "start over with training.resume=false or another hydra.run.dir")

    def resume(self) -> Optional[str]:
        """With ``training.resume`` and a checkpoint in this run dir, load the newest readable one
        and return its path; None for a fresh run."""
        if not (self.cfg.training.resume and self.checkpoint_files()):
            return None
        path, payload = self.read_newest_checkpoint()
        self._restore(path, payload)
        return path

    def latest_checkpoint(self) -> Optional[str]:
        path = os.path.join(self.checkpoint_dir, "latest.ckpt")
        return path if os.path.isfile(path) else None
