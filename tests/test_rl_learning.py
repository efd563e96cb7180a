"""Slow learning test: PPO with the default RL config raises the deterministic success rate of the
shipped lift_d0 checkpoint (a natural few-demo BC policy: trained to convergence on 5 scripted demos with
shifted windows, 0.38 over 100 episodes) at the README main command's budget (the config's 100 RL epochs of 32
episodes, ~330-350k env steps from this start; ~19 min alone on a 2-core CPU, ~30 min beside another job):

    .venv/bin/python -m pytest -q -m slow tests/test_rl_learning.py -s
    RL_LEARNING_CHECKPOINT=<ckpt> RL_LEARNING_EPOCHS=40 .venv/bin/python -m pytest -q -m slow tests/test_rl_learning.py -s

It runs the real default RL config (process envs, mesh point clouds, latent-noise policy with a
chunk-shared prior mean and exploration, head_lr 3e-4, privileged critic, shaped reward) with seed 0 and
compares the validation success before RL with the final one, on the same 100 seeds (reproducible evaluation).

Measured with this config from this checkpoint (2026-12-06i, docs/EXPERIMENTS.md; scripts/rl_sweep.py, validation
every 15 epochs): at epoch 90 / 105 (~315-325k / ~355-365k env steps) seed 0 0.38 -> 0.86 / 0.89, seed 1
0.38 -> 0.86 / 0.83, seed 2 0.38 -> 0.86 / 0.82; the README main command (seed 42, epoch 100, 330k) 0.38 -> 0.86.
The smallest of these gains is +0.44: the +0.35 asserted holds for 4 of 4 seeds with a margin of 0.09.
This test itself on this checkpoint, 2026-12-06i: 0.38 -> 0.78 -> 0.79 -> 0.86 -> 0.84 -> 0.86 (349k env steps), PASSED
in 21.5 min (its first 10 min beside a CI run).
(The unshifted 5-demo default of 2026-12-06h, 0.33, gained +0.45 to +0.57 at this budget, and this test PASSED on it,
0.33 -> 0.88 in 18.9 min alone.)
(The previous default, an 8-epoch BC run on 100 demos at 0.39, gained +0.19 to +0.38 at this budget: 2026-12-06g.)
"""
from __future__ import annotations

import os

import pytest

from conftest import REPO_ROOT, compose_cfg, read_metrics

CHECKPOINT = os.environ.get("RL_LEARNING_CHECKPOINT", str(REPO_ROOT / "data" / "checkpoints" / "lift_d0_default.ckpt"))
RL_EPOCHS = os.environ.get("RL_LEARNING_EPOCHS")   # None: the config's num_epochs (the README main command)
MIN_GAIN = 0.35


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
