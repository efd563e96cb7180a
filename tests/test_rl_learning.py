"""Slow learning test: PPO with the default RL config raises the deterministic success rate of the
shipped lift_d0 checkpoint (a natural, under-trained 8-epoch BC policy: 0.39 over 100 episodes) at the
README main command's budget (the config's 100 RL epochs of 32 episodes, ~450k env steps; ~25 min alone on
a 2-core CPU, ~35 min beside another job):

    .venv/bin/python -m pytest -q -m slow tests/test_rl_learning.py -s
    RL_LEARNING_CHECKPOINT=<ckpt> RL_LEARNING_EPOCHS=40 .venv/bin/python -m pytest -q -m slow tests/test_rl_learning.py -s

It runs the real default RL config (process envs, mesh point clouds, latent-noise policy with a
chunk-shared prior mean and exploration, head_lr 3e-4, privileged critic, shaped reward) with seed 0 and
compares the validation success before RL with the final one, on the same 100 seeds (reproducible evaluation).

Measured with this config at this budget (2026-12-05, docs/EXPERIMENTS.md): seed 0 0.39 -> 0.61, seed 1
0.39 -> 0.77 (scripts/rl_sweep.py, 100 epochs, 450k env steps), seed 42 0.39 -> 0.70 (the README main command
from a fresh clone, 449k). Gains +0.22 / +0.38 / +0.31: the +0.15 asserted holds for 3 of 3 seeds with a
margin of 0.07 or more. At 20 epochs (~106k) the gain was 0.00-0.21 over seeds (seed 0 once gained 0.02), so
RL_LEARNING_EPOCHS below ~80 is expected to fail it.
This test itself, 2026-12-05: 0.39 -> 0.52 -> 0.51 -> 0.71 -> 0.66 -> 0.65 (449k env steps), PASSED in 24.4 min
(its first ~10 min beside a CI run).
After the noise-prior std fix (2026-12-06g, the trainer projects log_std back into its box): seeds 0 / 1 / 42
0.39 -> 0.66 / 0.58 / 0.67 at ~450k, gains +0.27 / +0.19 / +0.28: +0.15 still holds for 3 of 3, margin 0.04.
"""
from __future__ import annotations

import os

import pytest

from conftest import REPO_ROOT, compose_cfg, read_metrics

CHECKPOINT = os.environ.get("RL_LEARNING_CHECKPOINT", str(REPO_ROOT / "data" / "checkpoints" / "lift_d0_default.ckpt"))
RL_EPOCHS = os.environ.get("RL_LEARNING_EPOCHS")   # None: the config's num_epochs (the README main command)
MIN_GAIN = 0.15


@pytest.mark.slow
def test_ppo_improves_the_shipped_lift_checkpoint(tmp_path):
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    budget = [f"rl_training.num_epochs={RL_EPOCHS}"] if RL_EPOCHS else []
    cfg = compose_cfg("train_maniflow_pointcloud_rl", [
        f"pretrained_policy_path={CHECKPOINT}", *budget, "rl_training.n_val_episodes=100",
        "rl_training.rollout_collector.render_episodes=0", "logging.mode=disabled", "training.seed=0",
    ])
    RLWorkspace(cfg, output_dir=str(tmp_path)).run()
    metrics = read_metrics(tmp_path)
    success = [m["eval/success_rate"] for m in metrics if "eval/success_rate" in m]
    before, after = success[0], success[-1]
    print(f"deterministic success before {before:.2f} -> after {after:.2f} ({success}), "
          f"{int(metrics[-1]['perf/env_steps'])} env steps")
    assert after >= before + MIN_GAIN, f"PPO did not improve the shipped checkpoint by {MIN_GAIN}: {success}"
