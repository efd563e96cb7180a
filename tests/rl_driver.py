"""``scripts/train_rl.py`` with two test hooks, for tests/test_reliability.py (the package never uses it).

    python tests/rl_driver.py <train_rl.py overrides>          # or: torchrun ... tests/rl_driver.py ...

* ``RL_DRIVER_PHASES=<file>``: append ``<phase> <start|end> <epoch> <unix time>`` lines (phase: rollout or
  update), flushed at once, so a test can SIGKILL the run inside a chosen phase and read where it landed.
* ``RL_DRIVER_DUMP=<dir>``: when the run ends, every rank saves its RL policy and critic state dicts
  as ``<dir>/rank<r>.pt`` (only rank 0 writes checkpoints, so this is how a test sees the other ranks).
"""
from __future__ import annotations

import functools
import os
import pathlib
import runpy
import sys
import time
from typing import Any, Callable

import torch

from equi_diffpo.rl_training.ppo_trainer import PPOTrainer
from equi_diffpo.rl_training.rl_rollout_collector import RLRolloutCollector
from equi_diffpo.rl_training.rl_workspace import RLWorkspace

TRAIN_RL = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "train_rl.py"
_epoch = [0]   # the RL epoch being run, set by RLWorkspace.train_epoch


def _wrap(cls: type, name: str, around: Callable[..., Any]) -> None:
    original = getattr(cls, name)
    setattr(cls, name, functools.wraps(original)(lambda self, *a, **kw: around(original, self, *a, **kw)))


def _mark_phases(path: str) -> None:
    def mark(phase: str, what: str) -> None:
        with open(path, "a") as f:
            f.write(f"{phase} {what} {_epoch[0]} {time.time():.3f}\n")

    def traced(phase: str) -> Callable[..., Any]:
        def around(original, self, *args, **kwargs):
            mark(phase, "start")
            result = original(self, *args, **kwargs)
            mark(phase, "end")
            return result
        return around

    def track_epoch(original, self, *args, **kwargs):
        _epoch[0] = self.epoch
        return original(self, *args, **kwargs)

    _wrap(RLWorkspace, "train_epoch", track_epoch)
    _wrap(RLRolloutCollector, "collect", traced("rollout"))
    _wrap(PPOTrainer, "update", traced("update"))


def _dump_weights(out_dir: str) -> None:
    def around(original, self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        torch.save({"rl_policy": self.rl_policy.state_dict(), "critic": self.critic.state_dict()},
                   os.path.join(out_dir, f"rank{self.dist.rank}.pt"))
        return result

    _wrap(RLWorkspace, "run", around)


if __name__ == "__main__":
    if os.environ.get("RL_DRIVER_PHASES"):
        _mark_phases(os.environ["RL_DRIVER_PHASES"])
    if os.environ.get("RL_DRIVER_DUMP"):
        _dump_weights(os.environ["RL_DRIVER_DUMP"])
    sys.argv[0] = str(TRAIN_RL)
    runpy.run_path(str(TRAIN_RL), run_name="__main__")
