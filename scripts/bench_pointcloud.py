"""Where the time of one observation goes, and how many env steps/s that leaves for RL.

Usage: ``python scripts/bench_pointcloud.py task_name=lift_d0 n_steps=200 [n_points=1024] [output=bench.json]``

Per-frame costs are timed separately, interleaved with physics steps of a gently moving arm (so
every cloud comes from a new state): the robosuite step alone (no camera), one 84x84 RGB-D render
per camera with the env's fast render settings, the mesh cloud (transform + crop + downsample) and the camera
cloud (back-projection of the configured cameras + crop + downsample). Then whole-env throughput:
:class:`RobosuitePointCloudEnv` per source in this process, and :class:`VectorEnv` with 2 worker
processes (mesh). Prints a markdown table; ``output=`` also writes it as JSON.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List

import numpy as np
from scipy.spatial.transform import Rotation

from equi_diffpo.env.point_cloud import CameraPointCloud, MeshPointCloud, PointCloudConfig, downsample_points
from equi_diffpo.common.hydra_cli import parse_key_values
from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv
from equi_diffpo.env.rotation import env_action_to_policy_action
from equi_diffpo.env.vector_env import VectorEnv

DEFAULTS: Dict[str, str] = {"task_name": "lift_d0", "n_steps": "200", "n_points": "1024", "output": ""}
N_ACTION_STEPS = 8


@dataclass
class Row:
    name: str
    ms: float          # per frame (components) or per env step (throughput rows)
    unit: str          # what one item is: 'frame' or 'env step'

    @property
    def per_s(self) -> float:
        return 1000.0 / self.ms



def wobble_actions(agent_pos: np.ndarray, n: int) -> np.ndarray:
    """(9,) start pose -> (n, 7) absolute env actions circling 3 cm around it, orientation held,
    gripper open: the arm moves, so each frame's cloud differs, and it never leaves the workspace."""
    phase = np.linspace(0, 4 * np.pi, n)
    pos = agent_pos[:3] + 0.03 * np.stack([np.cos(phase) - 1, np.sin(phase), np.zeros(n)], axis=1)
    rotvec = np.broadcast_to(Rotation.from_quat(agent_pos[3:7]).as_rotvec(), (n, 3))   # quat is xyzw
    return np.concatenate([pos, rotvec, -np.ones((n, 1))], axis=1)


class Stopwatch:
    """Sums the wall time of named calls; ``ms(name)`` is the mean per call."""

    def __init__(self) -> None:
        self.total: Dict[str, float] = {}
        self.count: Dict[str, int] = {}

    def run(self, name: str, fn: Callable, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - start
        self.count[name] = self.count.get(name, 0) + 1
        return out

    def ms(self, name: str) -> float:
        return 1000.0 * self.total[name] / self.count[name]


def bench_components(task_name: str, n_steps: int, n_points: int) -> List[Row]:
    mesh_cfg = PointCloudConfig(source="mesh", n_points=n_points)
    camera_cfg = PointCloudConfig(source="camera", n_points=n_points)
    rng = np.random.default_rng(0)
    watch = Stopwatch()

    env = RobosuitePointCloudEnv(task_name, mesh_cfg, max_episode_steps=n_steps + 1, seed=0)
    mesh = MeshPointCloud(env.env.sim.model._model, mesh_cfg, seed=0)
    data = env.env.sim.data._data
    actions = wobble_actions(env.reset(seed=0)["agent_pos"], n_steps)
    downsample_points(mesh(data), n_points, "fps", rng)          # numba compile/cache load, not timed
    for action in actions:
        watch.run("physics", env.env.step, action)
        watch.run("mesh_random", lambda: downsample_points(mesh(data), n_points, "random", rng))
        watch.run("mesh_fps", lambda: downsample_points(mesh(data), n_points, "fps", rng))
    env.close()

    env = RobosuitePointCloudEnv(task_name, camera_cfg, max_episode_steps=n_steps + 1, seed=0)
    sim, camera = env.env.sim, CameraPointCloud(camera_cfg)
    actions = wobble_actions(env.reset(seed=0)["agent_pos"], n_steps)
    size = camera_cfg.camera_size
    for action in actions:
        raw = env.env.step(action)[0]                             # renders the configured cameras itself
        for cam in camera_cfg.camera_names:
            watch.run(f"render_{cam}", lambda: sim.render(camera_name=cam, width=size, height=size, depth=True))
        watch.run("camera_random", lambda: downsample_points(camera(sim, raw), n_points, "random", rng))
        watch.run("camera_fps", lambda: downsample_points(camera(sim, raw), n_points, "fps", rng))
    env.close()

    n_cams = len(camera_cfg.camera_names)
    return [
        Row("robosuite step alone (physics + low-dim obs, no camera)", watch.ms("physics"), "frame"),
        *[Row(f"render 1 camera ({cam}) {size}x{size} RGB-D, fast settings", watch.ms(f"render_{cam}"), "frame")
          for cam in camera_cfg.camera_names],
        Row(f"mesh cloud: transform + crop + random {n_points}", watch.ms("mesh_random"), "frame"),
        Row(f"mesh cloud: transform + crop + fps {n_points}", watch.ms("mesh_fps"), "frame"),
        Row(f"camera cloud ({n_cams} cams): back-project + crop + random {n_points}", watch.ms("camera_random"), "frame"),
        Row(f"camera cloud ({n_cams} cams): back-project + crop + fps {n_points}", watch.ms("camera_fps"), "frame"),
    ]


def bench_env(task_name: str, source: str, n_steps: int, n_points: int) -> Row:
    """RobosuitePointCloudEnv.step (10-d action in, full observation out) in this process."""
    env = RobosuitePointCloudEnv(task_name, {"source": source, "n_points": n_points}, max_episode_steps=n_steps + 1, seed=0)
    actions = env_action_to_policy_action(wobble_actions(env.reset(seed=0)["agent_pos"], n_steps))
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    elapsed = time.perf_counter() - start
    env.close()
    return Row(f"RobosuitePointCloudEnv.step, source={source}, 1 process", 1000.0 * elapsed / n_steps, "env step")


def bench_vector_env(task_name: str, n_steps: int, n_points: int, n_envs: int = 2) -> Row:
    """``n_steps`` env steps per worker, in chunks of :data:`N_ACTION_STEPS`; ms is per env step of all workers together."""
    kwargs = dict(task_name=task_name, point_cloud={"source": "mesh", "n_points": n_points}, max_episode_steps=n_steps + 1)
    with VectorEnv(kwargs, n_envs=n_envs, mode="process", seed=0) as vec:
        ids = list(range(n_envs))
        first = vec.reset(ids, seeds=ids, render=[False] * n_envs)
        actions = np.stack([env_action_to_policy_action(wobble_actions(r.obs["agent_pos"][-1], n_steps)) for r in first])
        n_chunks = n_steps // N_ACTION_STEPS
        start = time.perf_counter()
        for c in range(n_chunks):
            chunk = actions[:, c * N_ACTION_STEPS:(c + 1) * N_ACTION_STEPS]
            if any(r is None for r in vec.step_chunk(ids, chunk, render=[False] * n_envs)):
                raise RuntimeError("an env worker crashed during the benchmark")
        elapsed = time.perf_counter() - start
    total_steps = n_envs * n_chunks * N_ACTION_STEPS
    return Row(f"VectorEnv, source=mesh, {n_envs} worker processes (total)", 1000.0 * elapsed / total_steps, "env step")


def markdown_table(rows: List[Row]) -> str:
    lines = ["| what | ms | per second |", "|---|---:|---:|"]
    lines += [f"| {r.name} | {r.ms:.2f} / {r.unit} | {r.per_s:.0f} {r.unit}s/s |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    args = parse_key_values(sys.argv[1:], DEFAULTS)
    task_name, n_steps, n_points = args["task_name"], int(args["n_steps"]), int(args["n_points"])
    if n_steps < N_ACTION_STEPS:
        raise SystemExit(f"n_steps must be at least {N_ACTION_STEPS} (one action chunk)")
    rows = bench_components(task_name, n_steps, n_points)
    rows += [bench_env(task_name, source, n_steps, n_points) for source in ("mesh", "camera")]
    rows.append(bench_vector_env(task_name, n_steps, n_points))
    print(f"task={task_name} n_steps={n_steps} n_points={n_points} cpus={os.cpu_count()} "
          f"MUJOCO_GL={os.environ.get('MUJOCO_GL')} load_avg_1min={os.getloadavg()[0]:.2f}")
    print(markdown_table(rows))
    if args["output"]:
        with open(args["output"], "w") as f:
            json.dump({"args": args, "rows": [dict(asdict(r), per_s=r.per_s) for r in rows]}, f, indent=2)
        print(f"wrote {args['output']}")


if __name__ == "__main__":
    main()
