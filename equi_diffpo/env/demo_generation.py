"""Roll out a scripted expert and keep its successful episodes as robomimic-format demos."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
from tqdm import tqdm

from equi_diffpo.dataset.robomimic_hdf5 import DemoWriter
from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv
from equi_diffpo.env.scripted_experts import get_expert

LOW_DIM_OBS_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_eef_quat_site", "robot0_gripper_qpos", "object-state")


@dataclass
class DemoGenerationResult:
    n_demos: int
    n_attempts: int
    n_steps: int
    seconds: float

    @property
    def success_rate(self) -> float:
        return self.n_demos / max(1, self.n_attempts)


def record_expert_episode(env: RobosuitePointCloudEnv, expert, seed: int) -> Dict[str, np.ndarray] | None:
    """One seeded expert episode; the arrays robomimic stores, or None if it failed.

    ``states[t]`` is the sim state in which ``actions[t]`` was taken (robomimic's convention)."""
    env.reset(seed=seed)
    expert.reset(env, np.random.default_rng(seed))
    keys = [k for k in LOW_DIM_OBS_KEYS if k in env.raw_obs]
    record: Dict[str, List[np.ndarray]] = {"actions": [], "states": [], "rewards": [], "dones": []}
    obs_record: Dict[str, List[np.ndarray]] = {k: [] for k in keys}
    done, info = False, {"success": False}
    while not done:
        for k in keys:
            obs_record[k].append(env.raw_obs[k].copy())
        record["states"].append(env.get_state())
        action = expert.act(env)
        _, reward, done, info = env.step_env_action(action)
        record["actions"].append(np.asarray(action, dtype=np.float64))
        record["rewards"].append(reward)
        record["dones"].append(int(info["success"]))
    if not info["success"]:
        return None
    out = {k: np.asarray(v) for k, v in record.items()}
    out["obs"] = {k: np.stack(v) for k, v in obs_record.items()}
    return out


def generate_demos(task_name: str, n_demos: int, output_path: str, seed: int = 0,
                   max_attempts: int | None = None, max_episode_steps: int | None = None) -> DemoGenerationResult:
    """Write ``n_demos`` successful expert demos of ``task_name`` to ``output_path`` (hdf5).

    Seeds ``seed, seed+1, ...`` are tried in order until ``n_demos`` succeed or ``max_attempts``
    (default 2 x n_demos) run out. The point cloud isn't stored: the converter renders it."""
    env = RobosuitePointCloudEnv(task_name, {"source": "mesh", "n_points": 64}, max_episode_steps=max_episode_steps, seed=seed)
    expert = get_expert(task_name)
    writer = DemoWriter(output_path, env.env_args())
    max_attempts = max_attempts or 2 * n_demos
    attempts, start = 0, time.time()
    try:
        with tqdm(total=n_demos, desc=f"demos {task_name}", unit="demo") as bar:
            while writer.count < n_demos and attempts < max_attempts:
                episode = record_expert_episode(env, expert, seed + attempts)
                attempts += 1
                if episode is not None:
                    writer.add(episode["actions"], episode["states"], episode["rewards"], episode["dones"],
                               episode["obs"], env.model_xml())
                    bar.update(1)
                bar.set_postfix(success=f"{writer.count}/{attempts}")
    finally:
        writer.close()  # keeps the demos recorded so far, also on Ctrl-C
        env.close()
    if writer.count < n_demos:
        raise RuntimeError(f"only {writer.count}/{n_demos} demos succeeded in {attempts} attempts "
                           f"(partial file kept at {output_path})")
    return DemoGenerationResult(writer.count, attempts, writer.total, time.time() - start)
