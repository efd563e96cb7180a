"""Success rate, episode length and speed of a scripted expert.

Usage: ``python scripts/bench_experts.py task_name=lift_d0 n_episodes=50 [n_points=256] [source=mesh] [verbose=1]``
Episodes use seeds 0..n_episodes-1 (env placement and expert noise both derive from the seed).
"""
from __future__ import annotations

import sys
import time
from typing import Dict

import numpy as np

from equi_diffpo.common.hydra_cli import parse_key_values
from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv
from equi_diffpo.env.scripted_experts import get_expert, run_episode

DEFAULTS: Dict[str, str] = {"task_name": "lift_d0", "n_episodes": "50", "n_points": "256", "source": "mesh", "verbose": "0"}



def main() -> None:
    args = parse_key_values(sys.argv[1:], DEFAULTS)
    env = RobosuitePointCloudEnv(args["task_name"], {"source": args["source"], "n_points": int(args["n_points"])}, seed=0)
    expert = get_expert(args["task_name"])
    results = []
    start = time.perf_counter()
    for seed in range(int(args["n_episodes"])):
        result = run_episode(env, expert, seed)
        results.append(result)
        if args["verbose"] != "0":
            print(f"seed {seed}: success={result.success} steps={result.n_steps}", flush=True)
    elapsed = time.perf_counter() - start
    env.close()
    successes = np.array([r.success for r in results])
    lengths = np.array([r.n_steps for r in results])
    print(f"task={args['task_name']} episodes={len(results)} success_rate={successes.mean():.3f} "
          f"mean_length={lengths.mean():.1f} (successful: {lengths[successes].mean() if successes.any() else float('nan'):.1f}, "
          f"max {lengths.max()}) env_steps_per_s={lengths.sum() / elapsed:.1f}")
    failed = np.flatnonzero(~successes).tolist()
    if failed:
        print(f"failed seeds: {failed}")


if __name__ == "__main__":
    main()
