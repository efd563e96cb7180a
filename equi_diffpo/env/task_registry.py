"""``task_name`` -> robosuite environment and kwargs; the episode limit lives in the task yaml only.

Names follow MimicGen's D0 list. When the real ``mimicgen`` package is importable its registered
environments (e.g. ``Stack_D0``) are used for the names it provides; otherwise the plain
robosuite environment with the same task is used. Never ``pip install mimicgen`` from PyPI: that
name is an unrelated placeholder; MimicGen installs from its own repository.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
import pathlib
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

TASK_CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "config" / "task"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    env_name: str                    # robosuite environment class
    mimicgen_env_name: Optional[str] = None
    env_kwargs: Dict[str, Any] = field(default_factory=dict)


TASKS: Dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("lift_d0", "Lift"),
        TaskSpec("stack_d0", "Stack", mimicgen_env_name="Stack_D0"),
        TaskSpec("square_d0", "NutAssemblySquare", mimicgen_env_name="Square_D0"),
        TaskSpec("pick_place_d0", "PickPlaceCan", mimicgen_env_name="PickPlace_D0"),
    )
}


def mimicgen_available() -> bool:
    """True only for the real MimicGen (it registers its envs on import and ships ``mimicgen.envs``)."""
    return importlib.util.find_spec("mimicgen") is not None and importlib.util.find_spec("mimicgen.envs") is not None


def get_task(task_name: str) -> TaskSpec:
    """Look up ``task_name``; unknown names raise a ``KeyError`` listing the valid ones."""
    if task_name not in TASKS:
        raise KeyError(f"unknown task_name={task_name!r}; valid names: {', '.join(sorted(TASKS))}")
    return TASKS[task_name]


def episode_limit(task_name: str) -> int:
    """``max_episode_steps`` of ``config/task/<task_name>.yaml``: the one place a task's episode limit is set
    (envs built without an explicit limit, e.g. by the converter or the benchmarks, use it too)."""
    get_task(task_name)
    return int(OmegaConf.load(TASK_CONFIG_DIR / f"{task_name}.yaml").max_episode_steps)


def resolve_env_name(spec: TaskSpec) -> str:
    """The robosuite env name to build: MimicGen's variant when available, else robosuite's."""
    if spec.mimicgen_env_name and mimicgen_available():
        import mimicgen  # noqa: F401  (registers MimicGen envs with robosuite)
        return spec.mimicgen_env_name
    return spec.env_name
