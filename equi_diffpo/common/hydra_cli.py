"""Command-line glue shared by the hydra entry points in ``scripts/``.

Users select a task with ``task_name=stack_d0`` (the name papers and notes use), while the
configs keep task settings in the hydra group ``task/<name>.yaml``. :func:`route_task_name`
turns the former into the latter before hydra parses ``sys.argv``, and rejects unknown names
with the list of valid ones instead of hydra's generic "Could not find" message.
"""
from __future__ import annotations

import pathlib
import sys
from typing import List

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "config"


def available_tasks() -> List[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))


def route_task_name(argv: List[str] | None = None) -> None:
    """Rewrite ``task_name=X`` into ``task=X task_name=X`` in ``argv`` (default ``sys.argv``)."""
    argv = sys.argv if argv is None else argv
    names = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("task_name=")]
    if not names:
        return
    name = names[-1]
    if name not in available_tasks():
        sys.exit(f"error: unknown task_name={name!r}; valid names: {', '.join(available_tasks())}")
    if not any(a.startswith(("task=", "+task=")) for a in argv[1:]):
        argv.append(f"task={name}")


