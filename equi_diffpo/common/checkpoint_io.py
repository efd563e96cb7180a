"""Checkpoint files: atomic writes and the one policy loader every consumer uses.

Payload (equidiff / diffusion_policy workspace format)::

    {'cfg': OmegaConf, 'state_dicts': {'model', 'ema_model', 'optimizer', ...}, 'pickles': {...}}

saved with ``torch.save(..., pickle_module=dill)``. Writes go to a temp file in the same folder
and are renamed into place, so a kill mid-write never leaves a truncated ``latest.ckpt``.
"""
from __future__ import annotations

import copy
import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import dill
import hydra
import hydra.errors
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from equi_diffpo.common.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the requested policy (entry points
    report it on one line, see :mod:`equi_diffpo.common.errors`)."""


def atomic_torch_save(payload: Dict[str, Any], path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    os.close(fd)
    try:
        # mkstemp creates 0600 files; give the checkpoint the permissions a plain torch.save would
        # (umask-based), so collaborators on shared storage can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        torch.save(payload, tmp, pickle_module=dill)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_payload(path: str, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist: check the path (the shipped default is "
                              "data/checkpoints/lift_d0_default.ckpt; scripts/make_default_checkpoint.sh rebuilds it)")
    try:
        payload = torch.load(path, map_location=map_location, pickle_module=dill, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(f"checkpoint {path!r} could not be read (truncated or not a torch file: {err}): "
                              "use another checkpoint of the run (epoch_XXXX.ckpt) or rewrite it") from err
    if not isinstance(payload, dict) or "state_dicts" not in payload or "cfg" not in payload:
        raise CheckpointError(f"{path!r} is not a workspace checkpoint (expected keys 'cfg' and 'state_dicts'): "
                              "pass a .ckpt written by scripts/train.py or scripts/train_rl.py")
    return payload


def check_state_dict_compatible(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], path: str, key: str) -> None:
    """Raise naming every missing / unexpected / shape-mismatched key (never load with strict=False)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs policy {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state_dict)) if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shapes:
        found = [_first_few(f"{len(items)} {label}", items) for label, items in
                 (("shape mismatch(es)", shapes), ("key(s) missing in checkpoint", missing),
                  ("unexpected key(s) in checkpoint", unexpected)) if items]
        raise CheckpointError(f"checkpoint {path!r} ('{key}') does not fit the policy its cfg.policy builds ("
                              + "; ".join(found) + "): it was written by another version of the policy code; "
                              "use a checkpoint written by this version or retrain")


def _first_few(label: str, items: Sequence[str], limit: int = 3) -> str:
    more = f", +{len(items) - limit} more" if len(items) > limit else ""
    return f"{label}: {', '.join(items[:limit])}{more}"


def check_policy_config(actual: Mapping[str, Any], expected: Mapping[str, Any], path: str) -> None:
    """Compare the checkpoint policy's ``actual`` settings (its ``task_dims()``: the U-Net records them as
    ctor keys, the DiT-X derives them from ``shape_meta``) with ``expected`` (the task's dims)."""
    diffs = [f"policy.{k}: checkpoint {actual.get(k)!r} vs requested {v!r}"
             for k, v in expected.items() if actual.get(k) != v]
    if diffs:
        raise CheckpointError(f"checkpoint {path!r} was trained with a different policy config ({'; '.join(diffs)}): "
                              "use a checkpoint trained for this task_name")


def resolve_time_convention(cfg: DictConfig, time_convention: Optional[str], path: str) -> DictConfig:
    """``cfg`` with ``policy.time_convention`` stated, for policies that take one.

    Checkpoints of the original ManiFlow code do not record their flow-time direction, and the two
    in use are not interchangeable, so it is never guessed: the caller's ``time_convention`` fills
    it in (and is then recorded in the returned cfg); one that contradicts a recorded value is an error.
    """
    target = str(cfg.policy.get("_target_", ""))
    recorded = cfg.policy.get("time_convention")
    if time_convention is None or recorded == time_convention:
        return cfg
    if recorded is not None:
        raise CheckpointError(f"checkpoint {path!r} records policy.time_convention={recorded!r}, "
                              f"not the requested {time_convention!r}")
    if not target.endswith("ManiFlowTransformerPointcloudPolicy"):
        raise CheckpointError(f"time_convention={time_convention!r} was given, but {target} records its own")
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.policy.time_convention = time_convention
    return cfg


def load_policy(path: str, device: str | torch.device = "cpu", expected_config: Optional[Mapping[str, Any]] = None,
                prefer_ema: bool = True, time_convention: Optional[str] = None
                ) -> Tuple[torch.nn.Module, DictConfig, Dict[str, Any]]:
    """Build the checkpoint's policy from its own ``cfg.policy`` and load its weights.

    Prefers ``ema_model`` (the weights BC evaluation used). RL checkpoints store their fine-tuned
    policy under the same keys, so the BC evaluator loads them unchanged. Checkpoints written by
    the original ManiFlow code load too (their ``_target_`` names our
    ``ManiFlowTransformerPointcloudPolicy``); they need ``time_convention`` (see
    :func:`resolve_time_convention`). Returns ``(policy on device, cfg, payload)``."""
    payload = load_payload(path)
    cfg = payload["cfg"]
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    cfg = resolve_time_convention(cfg, time_convention, path)
    key = "ema_model" if prefer_ema and "ema_model" in payload["state_dicts"] else "model"
    if key not in payload["state_dicts"]:
        raise CheckpointError(f"checkpoint {path!r} has no 'model' or 'ema_model' state dict")
    try:
        policy = hydra.utils.instantiate(cfg.policy)
    except hydra.errors.InstantiationException as err:
        raise CheckpointError(f"checkpoint {path!r}: cannot build its policy: {err.__cause__ or err}") from err
    if expected_config:
        check_policy_config(policy.task_dims(), expected_config, path)
    state = payload["state_dicts"][key]
    # The normalizer's fields depend on the dataset: create them from the checkpoint before comparing.
    policy.normalizer.load_state_dict({k[len("normalizer."):]: v for k, v in state.items() if k.startswith("normalizer.")})
    check_state_dict_compatible(policy, state, path, key)
    policy.load_state_dict(state)
    return policy.to(device), cfg, payload


def _slim_payload(payload: Dict[str, Any]) -> Dict[str, Any]:
    key = "ema_model" if "ema_model" in payload["state_dicts"] else "model"
    return {"cfg": payload["cfg"], "state_dicts": {"ema_model": dict(payload["state_dicts"][key])},
            "pickles": {k: v for k, v in payload.get("pickles", {}).items() if k in ("epoch", "global_step", "env_steps")}}


def export_policy_checkpoint(src: str, dst: str) -> str:
    """Slim copy of a workspace checkpoint for shipping/sharing: cfg + the policy weights only
    (``ema_model`` if present, else ``model``, stored as ``ema_model``); no optimizer state."""
    return atomic_torch_save(_slim_payload(load_payload(src)), dst)


def offset_actions_checkpoint(src: str, dst: str, offset: Sequence[float]) -> str:
    """Slim copy whose policy adds ``offset`` (raw action units, first ``len(offset)`` action dims,
    e.g. metres for the position) to every action it outputs: a deliberately miscalibrated policy.

    Why: a reproducible weak starting point whose deficit is known and fixable from reward alone
    (RL must learn to cancel the offset), like a camera/robot calibration shift between demos and
    deployment. Done in the action normalizer, ``x = (y - offset) / scale``: shifting raw ``x`` by
    ``d`` is ``offset -= d * scale``. Recorded in the cfg as ``weakened.action_offset``.
    """
    slim = _slim_payload(load_payload(src))
    state = slim["state_dicts"]["ema_model"]
    scale, norm_offset = state["normalizer.fields.action.scale"], state["normalizer.fields.action.offset"].clone()
    delta = torch.as_tensor(list(offset), dtype=norm_offset.dtype)
    if delta.numel() > norm_offset.numel():
        raise ValueError(f"offset has {delta.numel()} entries, the action has {norm_offset.numel()} dims")
    norm_offset[: delta.numel()] -= delta * scale[: delta.numel()]
    state["normalizer.fields.action.offset"] = norm_offset
    cfg = OmegaConf.create(slim["cfg"])
    with open_dict(cfg):
        cfg.weakened = {"action_offset": [float(x) for x in offset], "source": src}
    slim["cfg"] = cfg
    return atomic_torch_save(slim, dst)
