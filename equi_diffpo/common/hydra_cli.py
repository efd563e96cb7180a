"""Command-line glue shared by the hydra entry points in ``scripts/``.

Every hydra entry point is a function of its config wrapped by :func:`hydra_entry_point`, so all
of them behave the same way: ``task_name=...`` is routed, expected user errors are one line with
exit code 2 (:mod:`equi_diffpo.common.errors`), Ctrl-C exits 130 without a traceback.

Users select a task with ``task_name=stack_d0`` (the name papers and notes use), while the
configs keep task settings in the hydra group ``task/<name>.yaml``. :func:`route_task_name`
turns the former into the latter before hydra parses ``sys.argv``, and rejects unknown names
with the list of valid ones instead of hydra's generic "Could not find" message.
"""
from __future__ import annotations

import functools
import os
import pathlib
import sys
from typing import TYPE_CHECKING, Callable, Dict, List, Sequence

from equi_diffpo.common.errors import ConfigError, report_user_errors

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "config"


def hydra_output_dir() -> str:
    """The hydra run dir of this job (``hydra.run.dir``); outside a hydra app, data/outputs/run."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else os.path.abspath("data/outputs/run")


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


def written_by_original_code(ckpt_cfg: "DictConfig") -> bool:
    """True for a checkpoint of the original ManiFlow code: its ``task`` is the original's (no ``point_cloud``
    settings of ours), so the task to act in must be named (``task_name=...``) and given its observations."""
    return "point_cloud" not in ckpt_cfg.get("task", {})


def with_original_observations(task: "DictConfig") -> "DictConfig":
    """Our ``task`` config with the original checkpoints' observation pipeline merged in
    (``config/task/point_cloud/maniflow_original.yaml``: four depth cameras + colour, their crop, 1024 points)."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(task, OmegaConf.load(CONFIG_DIR / "task" / "point_cloud" / "maniflow_original.yaml"))


def route_task_name(argv: List[str] | None = None, select_group: bool = True) -> None:
    """Check ``task_name=X`` in ``argv`` (default ``sys.argv``) and, with ``select_group``, rewrite
    it into ``task=X task_name=X`` (configs without a task group, e.g. evaluation, only check it)."""
    argv = sys.argv if argv is None else argv
    names = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("task_name=")]
    if not names:
        return
    name = names[-1]
    if name not in available_tasks():
        raise ConfigError(f"unknown task_name={name!r}: use one of {', '.join(available_tasks())}")
    if select_group and not any(a.startswith(("task=", "+task=")) for a in argv[1:]):
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


Body = Callable[["DictConfig"], None]   # what an entry point does with its composed config


def hydra_entry_point(config_name: str, task_group: bool = True) -> Callable[[Body], Callable[[], None]]:
    """Decorator: ``body(cfg)`` becomes a command-line program on config ``config_name``.

    The program routes ``task_name`` (``task_group=False``: the config has no ``task`` group, the
    name is only checked), composes the config with the command-line overrides (hydra),
    resolves it and runs ``body``, reporting user errors on one line (exit 2) and Ctrl-C as exit
    130: the workspaces have already saved latest.ckpt and printed how to resume by then."""
    import hydra
    from omegaconf import OmegaConf

    def wrap(body: Body) -> Callable[[], None]:
        @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
        @functools.wraps(body)   # hydra names the job (and its log file) after the body's script
        def main(cfg: "DictConfig") -> None:
            with report_user_errors():
                OmegaConf.resolve(cfg)
                body(cfg)

        def run() -> None:
            with report_user_errors():
                route_task_name(select_group=task_group)
            try:
                main()
            except KeyboardInterrupt:
                raise SystemExit(130) from None

        return run

    return wrap


def workspace_entry_point(config_name: str) -> Callable[[], None]:
    """The whole body of a diffusion_policy-style training script: build ``cfg._target_`` (a
    workspace) from config ``config_name`` and run it."""
    def run_workspace(cfg: "DictConfig") -> None:
        import hydra

        hydra.utils.get_class(cfg._target_)(cfg).run()

    return hydra_entry_point(config_name)(run_workspace)
