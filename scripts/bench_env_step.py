"""Env step rate: robosuite's stock controller loop vs the compiled one (equi_diffpo/env/fast_control.py).

Usage: ``python scripts/bench_env_step.py [task_name=lift_d0] [source=mesh] [n_steps=200] [rounds=3] [n_points=512] [output=bench.json]``

Each round replays the same action sequence (a 3 cm circle around the start pose, orientation held,
gripper open) from the same reset through:

* stock ``env.step`` (robosuite's Python controller stack every substep),
* the fast path (``FastOSCStep.step``: same results, bit for bit),
* raw physics: the substeps' ``mj_step`` alone (on a copy of the fast env's state before each
  step, so contacts and states are the real ones) -- the floor of any controller loop,
* ``RobosuitePointCloudEnv.step`` (policy action in, point cloud + agent_pos out) with
  ``fast_control`` false and true.

Rounds are interleaved and the median per row is reported, which keeps the ratios meaningful on a
machine shared with other jobs (the load average is printed). Prints a markdown table; ``output=``
also writes it as JSON.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Callable, Dict, List

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from equi_diffpo.common.hydra_cli import parse_key_values
from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv
from equi_diffpo.env.rotation import env_action_to_policy_action

DEFAULTS: Dict[str, str] = {"task_name": "lift_d0", "source": "mesh", "n_steps": "200", "rounds": "3",
                            "n_points": "512", "output": ""}
WARMUP_STEPS = 5


def wobble_actions(agent_pos: np.ndarray, n: int) -> np.ndarray:
    """(9,) start pose -> (n, 7) absolute env actions circling 3 cm around it, orientation held, gripper open."""
    phase = np.linspace(0, 4 * np.pi, n)
    pos = agent_pos[:3] + 0.03 * np.stack([np.cos(phase) - 1, np.sin(phase), np.zeros(n)], axis=1)
    rotvec = np.broadcast_to(Rotation.from_quat(agent_pos[3:7]).as_rotvec(), (n, 3))   # quat is xyzw
    return np.concatenate([pos, rotvec, -np.ones((n, 1))], axis=1)


def timed(fn: Callable[[np.ndarray], object], actions: np.ndarray) -> float:
    """ms per call of ``fn`` over ``actions``."""
    start = time.perf_counter()
    for action in actions:
        fn(action)
    return 1000.0 * (time.perf_counter() - start) / len(actions)


def physics_ms(env: RobosuitePointCloudEnv, actions: np.ndarray) -> float:
    """ms per control step of the substeps' ``mj_step`` alone, on a copy of each state the fast path visits."""
    model, data = env.env.sim.model._model, env.env.sim.data._data
    n_sub = int(env.env.control_timestep / env.env.model_timestep)
    total = 0.0
    for action in actions:
        env.step_env_action(action)
        scratch = copy.copy(data)              # MjData's copy is a full copy of the state
        start = time.perf_counter()
        for _ in range(n_sub):
            mujoco.mj_step(model, scratch)
        total += time.perf_counter() - start
    return 1000.0 * total / len(actions)


def bench_round(stock: RobosuitePointCloudEnv, fast: RobosuitePointCloudEnv, env_actions: np.ndarray) -> Dict[str, float]:
    policy_actions = env_action_to_policy_action(env_actions)
    ms: Dict[str, float] = {}
    stock.reset(seed=0)
    ms["stock"] = timed(stock.env.step, env_actions)
    fast.reset(seed=0)
    ms["fast"] = timed(fast._fast_step.step, env_actions)
    fast.reset(seed=0)
    ms["physics"] = physics_ms(fast, env_actions)
    stock.reset(seed=0)
    ms["wrapper_stock"] = timed(stock.step, policy_actions)
    fast.reset(seed=0)
    ms["wrapper_fast"] = timed(fast.step, policy_actions)
    return ms


def main() -> None:
    args = parse_key_values(sys.argv[1:], DEFAULTS)
    task, n_steps, rounds = args["task_name"], int(args["n_steps"]), int(args["rounds"])
    cloud = {"source": args["source"], "n_points": int(args["n_points"])}
    stock = RobosuitePointCloudEnv(task, cloud, max_episode_steps=n_steps + 1, seed=0, fast_control=False)
    fast = RobosuitePointCloudEnv(task, cloud, max_episode_steps=n_steps + 1, seed=0, fast_control=True)
    env_actions = wobble_actions(stock.reset(seed=0)["agent_pos"], n_steps)
    fast.reset(seed=0)
    for action in env_actions[:WARMUP_STEPS]:      # numba cache load / compile, not timed
        fast.step_env_action(action)
    results: List[Dict[str, float]] = [bench_round(stock, fast, env_actions) for _ in range(rounds)]
    stock.close()
    fast.close()
    med = {k: float(np.median([r[k] for r in results])) for k in results[0]}

    rows = [
        ("robosuite `env.step`, stock controller", med["stock"], ""),
        ("robosuite `env.step` via fast path (`FastOSCStep.step`)", med["fast"], f"{med['stock'] / med['fast']:.2f}x stock"),
        ("raw physics only (substeps' `mj_step`)", med["physics"], f"{med['stock'] / med['physics']:.2f}x stock"),
        (f"`RobosuitePointCloudEnv.step`, source={args['source']}, fast_control=false", med["wrapper_stock"], ""),
        (f"`RobosuitePointCloudEnv.step`, source={args['source']}, fast_control=true", med["wrapper_fast"],
         f"{med['wrapper_stock'] / med['wrapper_fast']:.2f}x fast_control=false"),
    ]
    print(f"task={task} source={args['source']} n_points={cloud['n_points']} n_steps={n_steps} rounds={rounds} "
          f"cpus={os.cpu_count()} load_avg_1min={os.getloadavg()[0]:.2f} (median of rounds)")
    print("| what | ms / step | steps/s | ratio |\n|---|---:|---:|---|")
    for name, ms, ratio in rows:
        print(f"| {name} | {ms:.2f} | {1000.0 / ms:.0f} | {ratio} |")
    if args["output"]:
        with open(args["output"], "w") as f:
            json.dump({"args": args, "median_ms": med, "rounds_ms": results}, f, indent=2)
        print(f"wrote {args['output']}")


if __name__ == "__main__":
    main()
