"""Slow learning test: PPO with the default RL config raises the deterministic success rate of the
shipped lift_d0 checkpoint (a natural, under-trained 8-epoch BC policy: 0.35 over 100 episodes). ~10 min
alone on a 2-core CPU (20 RL epochs of 32 episodes, ~106k env steps, 3 validations of 100 episodes):

    .venv/bin/python -m pytest -q -m slow tests/test_rl_learning.py -s
    RL_LEARNING_CHECKPOINT=<ckpt> RL_LEARNING_EPOCHS=40 .venv/bin/python -m pytest -q -m slow tests/test_rl_learning.py -s

It runs the real default RL config (process envs, mesh point clouds, latent-noise policy with a
chunk-shared prior mean and exploration, privileged critic, shaped reward) with seed 0 and compares the
validation success before RL with the final one, on the same 100 seeds (reproducible evaluation).

Measured at this budget (20 epochs, ~106k env steps; docs/EXPERIMENTS.md): seed 0 0.35 -> 0.50 -> 0.57 (this test,
2026-12-01 second session, 9.5 min while sharing the CPU; 0.56 in the first session); seeds 1 and 42 of the same default reached 0.56 / 0.38 (first session) and 0.45 / 0.35 (second session) at
epoch 20. The margin asserted (+0.10) held for seed 0; over seeds the gain at this budget ranges 0.00-0.21, so another
seed may fail it (RL_LEARNING_EPOCHS raises the budget: at 60 epochs every seed run so far gained 0.12-0.22).
2026-12-05, after each frame's point-cloud downsampling got its own key (issue #12: every rollout changed, so seed 0
is a new sample of the spread): seed 0 gave 0.39 -> 0.43 -> 0.41 (106k env steps, 9.8 min beside the fast suite) and
FAILED the +0.10 margin. The test stays as it is, failing honestly, until the default method gains at this budget on
every seed (issue #11).
"""
from __future__ import annotations

import os

import pytest

from conftest import REPO_ROOT, compose_cfg, read_metrics

CHECKPOINT = os.environ.get("RL_LEARNING_CHECKPOINT", str(REPO_ROOT / "data" / "checkpoints" / "lift_d0_default.ckpt"))
RL_EPOCHS = int(os.environ.get("RL_LEARNING_EPOCHS", "20"))


@pytest.mark.slow
def test_ppo_improves_the_shipped_lift_checkpoint(tmp_path):
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    cfg = compose_cfg("train_maniflow_pointcloud_rl", [
        f"pretrained_policy_path={CHECKPOINT}", f"rl_training.num_epochs={RL_EPOCHS}",
        "rl_training.val_every=10", "rl_training.n_val_episodes=100", "rl_training.rollout_collector.render_episodes=0",
        "logging.mode=disabled", "training.seed=0",
    ])
    RLWorkspace(cfg, output_dir=str(tmp_path)).run()
    metrics = read_metrics(tmp_path)
    success = [m["eval/success_rate"] for m in metrics if "eval/success_rate" in m]
    before, after = success[0], success[-1]
    print(f"deterministic success before {before:.2f} -> after {after:.2f} ({success}), "
          f"{int(metrics[-1]['perf/env_steps'])} env steps")
    assert after >= before + 0.10, f"PPO did not improve the shipped checkpoint: {success}"
