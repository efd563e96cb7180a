"""Rollout collector rate against the single-env rate, with and without the overlapped collector.

Usage: ``python scripts/bench_collector.py [n_envs=[1,2]] [n_episodes=8] [output=bench_collector.json]``

In one run, with the default RL config (lift_d0, shipped checkpoint, latent-noise policy, privileged critic):

* ``inline env``: one env stepped in this process by the collector (policy and env one after the other);
* ``collector n_envs=N`` (worker processes; N=1 is the single-env rate the ratios use), ``overlap`` off (all workers step, then the policy runs for all) and on (the policy
  runs for one half of the envs while the other half steps: ``rl_training.rollout_collector.overlap``).

Reports env steps/s of each and the ratio to ``N x`` the single-env rate (the issue's 85% target). On a
machine with C cores, N env workers plus the policy process can only keep ``min(N + 1, C)`` cores busy, so
the ratio is bounded by the cores left for the policy (printed with the core count and load average).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Dict, List

from equi_diffpo.common.hydra_cli import compose_config, parse_key_values
from plot_runs import parse_list

DEFAULTS: Dict[str, str] = {"n_envs": "[1,2]", "n_episodes": "8", "output": ""}


def collector_rate(n_envs: int, vec_mode: str, overlap: bool, n_episodes: int) -> float:
    """Env steps/s of one collected batch of ``n_episodes`` (after the workers are up)."""
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_config("train_maniflow_pointcloud_rl", [
            "logging.mode=disabled", "rl_training.rollout_collector.render_episodes=0",
            f"rl_training.rollout_collector.n_envs={n_envs}", f"rl_training.rollout_collector.vec_mode={vec_mode}",
            f"rl_training.rollout_collector.overlap={str(overlap).lower()}",
            f"rl_training.rollout_collector.n_episodes_per_batch={n_episodes}", "training.seed=0"])
        workspace = RLWorkspace(cfg, output_dir=run_dir)
        collector = workspace.make_collector()
        try:
            rollout = collector.collect(workspace.rl_policy, workspace.critic, tag=f"bench n_envs={n_envs}")
        finally:
            collector.close()
    return rollout.env_steps / rollout.seconds


def main(argv: List[str]) -> None:
    args = parse_key_values(argv, DEFAULTS)
    n_episodes = int(args["n_episodes"])
    rows = {"inline env (policy and env in one process)": collector_rate(1, "inline", False, n_episodes)}
    for n in sorted({1, *(int(v) for v in parse_list(args["n_envs"]))}):
        for overlap in (False, True):
            if overlap and n < 2:
                continue
            rows[f"collector n_envs={n} overlap={'on' if overlap else 'off'}"] = collector_rate(n, "process", overlap, n_episodes)
    single = rows["collector n_envs=1 overlap=off"]   # one env worker: the single-env rate of this source
    print(f"| setting | env steps/s | / (n_envs x single env) |  ({os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f})")
    print("|---|---:|---:|")
    for name, rate in rows.items():
        n = int(name.split("n_envs=")[1].split()[0]) if "n_envs=" in name else 1
        print(f"| {name} | {rate:.0f} | {rate / (n * single):.0%} |")
    if args["output"]:
        with open(args["output"], "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
