"""``task_name`` -> robosuite environment, kwargs and episode limit.

Names follow MimicGen's D0 list. When the real ``mimicgen`` package is importable its registered
environments (e.g. ``Stack_D0``) are used for the names it provides; otherwise the plain
robosuite environment with the same task is used. Never ``pip install mimicgen`` from PyPI: that
name is an unrelated placeholder; MimicGen installs from its own repository.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class TaskSpec:
    name: str
    env_name: str                    # robosuite environment class
    max_episode_steps: int           # limits used by the seed fork for RL
    mimicgen_env_name: Optional[str] = None
    env_kwargs: Dict[str, Any] = field(default_factory=dict)


TASKS: Dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("lift_d0", "Lift", 400),
        TaskSpec("stack_d0", "Stack", 400, mimicgen_env_name="Stack_D0"),
        TaskSpec("square_d0", "NutAssemblySquare", 400, mimicgen_env_name="Square_D0"),
        TaskSpec("pick_place_d0", "PickPlaceCan", 1000, mimicgen_env_name="PickPlace_D0"),
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


def resolve_env_name(spec: TaskSpec) -> str:
    """The robosuite env name to build: MimicGen's variant when available, else robosuite's."""
    if spec.mimicgen_env_name and mimicgen_available():
        import mimicgen  # noqa: F401  (registers MimicGen envs with robosuite)
        return spec.mimicgen_env_name
    return spec.env_name
