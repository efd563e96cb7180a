"""Metrics to wandb (online / offline / disabled) and to a local ``metrics.jsonl``.

The jsonl file is always written, so a run without network or wandb account still leaves every
number on disk. Metric names follow CleanRL's groups (``charts/``, ``losses/``, ``eval/``, ``perf/``).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from equi_diffpo.common.errors import ConfigError

VALID_MODES = ("online", "offline", "disabled")


class RunLogger:
    def __init__(self, output_dir: str, logging_cfg: Mapping[str, Any], run_cfg: Optional[DictConfig] = None,
                 enabled: bool = True):
        """``enabled=False`` on non-zero ranks: nothing is written there."""
        mode = logging_cfg.get("mode", "offline")
        if mode not in VALID_MODES:
            raise ConfigError(f"logging.mode={mode!r} is not valid: use one of {', '.join(VALID_MODES)}")
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._wandb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        if mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=logging_cfg.get("project", "maniflow_rl"), name=logging_cfg.get("name"),
                group=logging_cfg.get("group"), tags=list(logging_cfg.get("tags") or []), mode=mode,
                dir=output_dir, resume="allow", id=logging_cfg.get("id"),
                config=OmegaConf.to_container(run_cfg, resolve=True) if run_cfg is not None else None,
            )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Scalars go to both sinks; ``video_paths`` (list of mp4) only to wandb."""
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **{k: (None if math.isnan(v) else v) for k, v in scalars.items()}}) + "\n")
        if self._wandb is not None:
            import wandb

            payload: Dict[str, Any] = dict(scalars)
            for i, video in enumerate(metrics.get("video_paths") or []):
                payload[f"eval/video_{i}"] = wandb.Video(video, format="mp4")
            self._wandb.log(payload, step=step)

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def log_summary(cfg: DictConfig, metrics: Mapping[str, Any], step: int = 0, output_dir: Optional[str] = None) -> None:
    """One-shot programs (evaluation, demo generation, conversion): their summary goes to wandb
    with ``logging.mode=online|offline`` (files under ``output_dir``, default the hydra run dir);
    ``disabled`` logs nothing, their own output files being the local record."""
    from equi_diffpo.common.hydra_cli import hydra_output_dir

    logger = RunLogger(output_dir or hydra_output_dir(), cfg.logging, cfg, enabled=cfg.logging.mode != "disabled")
    logger.log(metrics, step=step)
    logger.finish()
