"""Wall time of one RL epoch (the README main command's settings) before and after the throughput work.

Usage: ``python scripts/bench_rl_epoch.py [n_epochs=2] [settings=before,previous,now] [output=bench_rl_epoch.json]``

Runs ``n_epochs`` RL epochs of the default config (lift_d0, shipped checkpoint, 32 episodes, 2 env worker
processes, no validation) in each of these settings, one after the other in this process:

* ``before``: robosuite's stock controller loop (``task.fast_control=false``), encoders re-run in every
  PPO minibatch (``rl_training.ppo_trainer.cache_features=false``) and the critic with its own trainable
  point-cloud encoder (``critic=own``): the defaults until 2026-11-30;
* ``previous``: the defaults of 2026-12-02 as far as keys restore them: a point cloud for every env step
  (``task.skip_unread_clouds=false``) and the PPO update on torch's default threads (``rl_training.update_threads=null``);
* ``now``: the current defaults (compiled control loop, clouds only for the frames the policy reads,
  features cached once per batch, privileged critic, a one-thread PPO update).

Prints per setting the mean rollout / update seconds per epoch, env steps per second of the collector,
the update's share of the epoch, and the first/last setting ratio; the same numbers are in each run's
``metrics.jsonl`` (``perf/rollout_seconds``, ``perf/update_seconds``).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Dict, List

import numpy as np

from equi_diffpo.common.hydra_cli import compose_config, parse_key_values
from equi_diffpo.rl_training.rl_workspace import RLWorkspace

DEFAULTS: Dict[str, str] = {"n_epochs": "2", "settings": "before,previous,now", "output": ""}
SETTINGS: Dict[str, List[str]] = {
    "before": ["task.fast_control=false", "rl_training.ppo_trainer.cache_features=false", "critic=own"],
    "previous": ["task.skip_unread_clouds=false", "rl_training.update_threads=null"],
    "now": [],
    # The current defaults with more env workers: the batched policy call costs little more at batch 3-4 than 2.
    "n_envs3": ["rl_training.rollout_collector.n_envs=3"],
    "n_envs4": ["rl_training.rollout_collector.n_envs=4"],
}


def epoch_times(overrides: List[str], n_epochs: int) -> Dict[str, float]:
    """Mean rollout/update seconds and collector env steps/s over ``n_epochs`` epochs (critic warm-up off,
    so every epoch has a policy update)."""
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_config("train_maniflow_pointcloud_rl", [
            *overrides, f"rl_training.num_epochs={n_epochs}", "rl_training.val_every=0", "rl_training.checkpoint_every=0",
            "rl_training.rollout_collector.render_episodes=0", "rl_training.ppo_trainer.critic_warmup_epochs=0",
            "logging.mode=disabled", "training.seed=0"])
        RLWorkspace(cfg, output_dir=run_dir).run()
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    rollout = float(np.mean([r["perf/rollout_seconds"] for r in rows]))
    update = float(np.mean([r["perf/update_seconds"] for r in rows]))
    return {"rollout_s": rollout, "update_s": update, "epoch_s": rollout + update, "update_share": update / (rollout + update),
            "env_steps_per_s": float(np.mean([r["perf/rollout_env_steps_per_s"] for r in rows]))}


def main(argv: List[str]) -> None:
    args = parse_key_values(argv, DEFAULTS)
    names = [n for n in args["settings"].split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names:
        raise SystemExit(f"settings={args['settings']!r}: use a comma-separated subset of {','.join(SETTINGS)}")
    results = {name: epoch_times(SETTINGS[name], int(args["n_epochs"])) for name in names}
    print(f"| setting | rollout s | update s | epoch s | update share | collector env steps/s |  (load avg {os.getloadavg()[0]:.1f})")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['rollout_s']:.1f} | {r['update_s']:.1f} | {r['epoch_s']:.1f} | {r['update_share']:.0%} "
              f"| {r['env_steps_per_s']:.0f} |")
    b, a = results[names[0]], results[names[-1]]
    print(f"{names[-1]} vs {names[0]}: epoch {b['epoch_s'] / a['epoch_s']:.2f}x faster, "
          f"update {b['update_s'] / a['update_s']:.2f}x, rollout {b['rollout_s'] / a['rollout_s']:.2f}x")
    if args["output"]:
        with open(args["output"], "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
