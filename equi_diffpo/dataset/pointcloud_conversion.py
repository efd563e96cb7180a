"""robomimic hdf5 -> point-cloud zarr (DP3/ManiFlow layout) by replaying the recorded ``states``.

Each state is set in a fresh env of the recorded task and observed with the configured
point-cloud source; absolute robosuite actions (T, 7) become policy actions (T, 10).
Written to ``<out>.partial`` and renamed at the end, so an interrupted run leaves no half dataset.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict
from typing import Any, Dict

import numpy as np
from tqdm import tqdm

from equi_diffpo.dataset.replay_buffer import ReplayBuffer
from equi_diffpo.dataset.robomimic_hdf5 import DemoReader
from equi_diffpo.env.point_cloud import PointCloudConfig
from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv
from equi_diffpo.env.rotation import env_action_to_policy_action
from equi_diffpo.env.task_registry import TASKS


def task_name_from_env_args(env_args: Dict[str, Any]) -> str:
    """Our files record ``task_name``; robomimic/MimicGen ones only ``env_name`` (e.g. 'Lift', 'Stack_D0')."""
    if env_args.get("task_name") in TASKS:
        return env_args["task_name"]
    env_name = env_args.get("env_name")
    for spec in TASKS.values():
        if env_name in (spec.env_name, spec.mimicgen_env_name):
            return spec.name
    raise ValueError(f"env_name {env_name!r} in the hdf5 matches no registered task "
                     f"({', '.join(f'{s.name}={s.env_name}' for s in TASKS.values())})")


def convert_to_pointcloud(hdf5_path: str, zarr_path: str, point_cloud: PointCloudConfig, seed: int = 0,
                          max_demos: int | None = None) -> ReplayBuffer:
    """Convert every demo (or the first ``max_demos``) and return the opened zarr buffer."""
    reader = DemoReader(hdf5_path)
    task_name = task_name_from_env_args(reader.env_args)
    env = RobosuitePointCloudEnv(task_name, point_cloud, seed=seed)
    tmp_path = zarr_path.rstrip("/") + ".partial"
    buffer = ReplayBuffer.create_empty(tmp_path)
    n_demos = min(len(reader), max_demos or len(reader))
    start = time.time()
    try:
        demos = iter(reader)
        for _ in tqdm(range(n_demos), desc=f"point clouds ({point_cloud.source})", unit="demo"):
            demo = next(demos)
            env.reset()
            clouds, agent_pos = [], []
            for state in demo.states:
                obs = env.reset_to(state)
                clouds.append(obs["point_cloud"])
                agent_pos.append(obs["agent_pos"])
            buffer.add_episode({"point_cloud": np.stack(clouds), "agent_pos": np.stack(agent_pos),
                                "action": env_action_to_policy_action(demo.actions)})
    finally:
        reader.close()
        env.close()
    buffer.attrs.update({
        "task_name": task_name, "source_hdf5": os.path.abspath(hdf5_path), "env_args": reader.env_args,
        "point_cloud": {k: (list(map(list, v)) if k == "bounds" else v) for k, v in asdict(point_cloud).items()},
        "action_space": "absolute eef: pos(3) + rot6d(6) + gripper(1), world frame",
        "convert_seconds": time.time() - start,
    })
    if os.path.exists(zarr_path):
        shutil.rmtree(zarr_path)
    os.replace(tmp_path, zarr_path)
    return ReplayBuffer.open(zarr_path)
