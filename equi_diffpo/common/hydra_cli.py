"""Command-line glue shared by the hydra entry points in ``scripts/``.

Users select a task with ``task_name=stack_d0`` (the name papers and notes use), while the
configs keep task settings in the hydra group ``task/<name>.yaml``. :func:`route_task_name`
turns the former into the latter before hydra parses ``sys.argv``, and rejects unknown names
with the list of valid ones instead of hydra's generic "Could not find" message.
"""
from __future__ import annotations

import pathlib
import sys
from typing import TYPE_CHECKING, Callable, Dict, List, Sequence

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "config"


def available_tasks() -> List[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> "DictConfig":
    """The resolved config an entry point would see for ``overrides``, through hydra's compose API:
    for tests and for the benchmark/diagnostic scripts, which are not hydra apps. Inside a hydra app
    of ours (whose search path is ``CONFIG_DIR``) it composes with the app's running hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name=config_name, overrides=list(overrides))
    else:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def task_config(task_name: str, overrides: Sequence[str] = ()) -> "DictConfig":
    """Our resolved ``task/<task_name>.yaml`` (plus ``overrides``, e.g. ``+task/point_cloud=...``), for
    checkpoints whose cfg carries no task of ours (those written by the original ManiFlow code)."""
    if task_name not in available_tasks():
        raise ValueError(f"unknown task_name={task_name!r}; valid names: {', '.join(available_tasks())}")
    return compose_config("train_maniflow_pointcloud", [f"task={task_name}", *overrides]).task


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




def parse_key_values(argv: List[str], defaults: Dict[str, str]) -> Dict[str, str]:
    """``key=value`` arguments of the small benchmark scripts over ``defaults``; an unknown key
    is an error naming the valid ones (same spelling as hydra overrides, without hydra's start-up)."""
    args = dict(defaults)
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise SystemExit(f"bad argument {item!r}; expected key=value with key in {sorted(defaults)}")
        args[key] = value
    return args


def workspace_entry_point(config_name: str) -> Callable[[], None]:
    """The whole body of a diffusion_policy-style training script: route ``task_name``, compose
    ``config_name`` with the command-line overrides, build ``cfg._target_`` (a workspace), run it."""
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> None:
        OmegaConf.resolve(cfg)
        hydra.utils.get_class(cfg._target_)(cfg).run()

    def run() -> None:
        route_task_name()
        try:
            main()
        except KeyboardInterrupt:
            # The workspace already saved latest.ckpt and printed how to resume; a traceback would bury that.
            raise SystemExit(130) from None

    return run
