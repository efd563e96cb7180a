"""robomimic / MimicGen / robosuite hdf5 -> point-cloud zarr (DP3/ManiFlow layout) by replaying ``states``.

Each state is set in an env of the recorded task and observed with the configured point-cloud
source; absolute robosuite actions (T, 7) become policy actions (T, 10). Delta OSC actions are first
turned into absolute ones through the recorded controller and verified by replay
(:mod:`equi_diffpo.dataset.delta_actions`); the per-demo errors go to the zarr attrs.
Demos are independent, so ``n_workers`` processes convert them in parallel (each with its own env);
demo ``i``'s random point downsampling is seeded with ``seed + i``, so the output does not depend on
``n_workers``. Written to ``<out>.partial`` and renamed at the end, so an interrupted run leaves no
half dataset.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import numpy as np
from tqdm import tqdm

from equi_diffpo.dataset.delta_actions import DeltaToAbsolute, ReplayError, make_verify_env, replay_errors
from equi_diffpo.dataset.replay_buffer import ReplayBuffer
from equi_diffpo.dataset.robomimic_hdf5 import DemoReader
from equi_diffpo.env.point_cloud import PointCloudConfig
from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv
from equi_diffpo.env.rotation import env_action_to_policy_action
from equi_diffpo.env.task_registry import TASKS, mimicgen_available

log = logging.getLogger(__name__)
MIMICGEN_ENV_NAME = re.compile(r"(?P<task>[A-Za-z]+)_D(?P<level>\d+)")


def task_name_from_env_args(env_args: Dict[str, Any]) -> str:
    """Our files record ``task_name``; robomimic / robosuite ones only ``env_name`` ('Lift', 'PickPlaceCan');
    MimicGen's are ``<Task>_D<level>`` ('Stack_D0', 'Stack_D1'): without mimicgen installed (or for a
    level we have no task for) they map to our task of the same ``<Task>``, said in one warning line."""
    if env_args.get("task_name") in TASKS:
        return env_args["task_name"]
    env_name = env_args.get("env_name") or ""
    for spec in TASKS.values():
        if env_name == spec.env_name or (env_name == spec.mimicgen_env_name and mimicgen_available()):
            return spec.name
    match = MIMICGEN_ENV_NAME.fullmatch(env_name)
    for spec in TASKS.values():
        if match and spec.mimicgen_env_name and spec.mimicgen_env_name.split("_D")[0] == match["task"]:
            why = "mimicgen is not installed" if not mimicgen_available() else f"we have no task for level D{match['level']}"
            log.warning(f"MimicGen env {env_name!r} in the demo file: {why}; replaying its states in our "
                        f"{spec.name} (robosuite {spec.env_name})")
            return spec.name
    raise ValueError(f"env_name {env_name!r} in the hdf5 matches no registered task "
                     f"({', '.join(f'{s.name}={s.env_name}|{s.mimicgen_env_name}' for s in TASKS.values())})")


@dataclass
class ConvertedDemo:
    name: str
    point_cloud: np.ndarray          # (T, N, C)
    agent_pos: np.ndarray            # (T, 9)
    action: np.ndarray               # (T, 10)
    replay_error: Optional[ReplayError]


class _DemoConverter:
    """Everything one process needs to convert demos of one file (envs are built once)."""

    def __init__(self, hdf5_path: str, task_name: str, point_cloud: PointCloudConfig, seed: int):
        self.reader = DemoReader(hdf5_path)
        self.seed = seed
        self.env = RobosuitePointCloudEnv(task_name, point_cloud, seed=seed)
        self.delta = self.reader.action_mode()[1]
        self.to_absolute = DeltaToAbsolute(task_name, self.reader.controller_configs) if self.delta else None
        self.verify_env = make_verify_env(task_name) if self.delta else None

    def __call__(self, index: int) -> ConvertedDemo:
        demo = self.reader[index]
        actions, error = demo.actions, None
        if self.to_absolute is not None:
            actions = self.to_absolute.convert(demo.states, demo.actions)
            error = replay_errors(self.verify_env, demo.states, actions)
        self.env.reset(seed=self.seed + index)
        clouds, agent_pos = [], []
        for state in demo.states:
            obs = self.env.reset_to(state)
            clouds.append(obs["point_cloud"])
            agent_pos.append(obs["agent_pos"])
        return ConvertedDemo(demo.name, np.stack(clouds), np.stack(agent_pos), env_action_to_policy_action(actions), error)

    def close(self) -> None:
        self.reader.close()
        for env in (self.env, self.to_absolute, self.verify_env):
            if env is not None:
                env.close()


_WORKER: Optional[_DemoConverter] = None


def _init_worker(*args: Any) -> None:
    global _WORKER
    _WORKER = _DemoConverter(*args)


def _convert_in_worker(index: int) -> ConvertedDemo:
    return _WORKER(index)


def convert_to_pointcloud(hdf5_path: str, zarr_path: str, point_cloud: PointCloudConfig, seed: int = 0,
                          max_demos: int | None = None, n_workers: int = 1) -> ReplayBuffer:
    """Convert every demo (or the first ``max_demos``) and return the opened zarr buffer.

    Attrs written besides the settings: ``delta_actions`` (whether actions were converted),
    ``replay_errors`` (``{demo: [max pos error m, max rot error rad]}``), ``convert_seconds``.
    """
    reader = DemoReader(hdf5_path)
    task_name, env_args, n_demos, delta = (task_name_from_env_args(reader.env_args), reader.env_args,
                                           min(len(reader), max_demos or len(reader)), reader.action_mode()[1])
    reader.close()
    args = (hdf5_path, task_name, point_cloud, seed)
    tmp_path = zarr_path.rstrip("/") + ".partial"
    buffer = ReplayBuffer.create_empty(tmp_path)
    errors: Dict[str, list] = {}
    start = time.time()
    pool = multiprocessing.get_context("spawn").Pool(n_workers, _init_worker, args) if n_workers > 1 else None
    local = _DemoConverter(*args) if pool is None else None
    try:
        results = pool.imap(_convert_in_worker, range(n_demos)) if pool else map(local, range(n_demos))
        desc = f"point clouds ({point_cloud.source}{', delta -> absolute' if delta else ''})"
        for demo in tqdm(results, total=n_demos, desc=desc, unit="demo"):
            buffer.add_episode({"point_cloud": demo.point_cloud, "agent_pos": demo.agent_pos, "action": demo.action})
            if demo.replay_error is not None:
                errors[demo.name] = [demo.replay_error.max_pos_error, demo.replay_error.max_rot_error]
    finally:
        if pool is not None:
            pool.terminate()
        if local is not None:
            local.close()
    buffer.attrs.update({
        "task_name": task_name, "source_hdf5": os.path.abspath(hdf5_path), "env_args": env_args,
        "point_cloud": {k: (list(map(list, v)) if k == "bounds" else v) for k, v in asdict(point_cloud).items()},
        "action_space": "absolute eef: pos(3) + rot6d(6) + gripper(1), world frame",
        "delta_actions": bool(delta), "replay_errors": errors, "n_workers": int(n_workers),
        "convert_seconds": time.time() - start,
    })
    if os.path.exists(zarr_path):
        shutil.rmtree(zarr_path)
    os.replace(tmp_path, zarr_path)
    return ReplayBuffer.open(zarr_path)
