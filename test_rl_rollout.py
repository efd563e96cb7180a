"""RL smoke test: load the pretrained policy + envs, collect one rollout batch (and optionally one
full PPO epoch), print episode stats, timing and losses; exit 0 on success, 1 on any failure, 2 on
a user error (bad override value, unusable checkpoint: one line, as for scripts/train_rl.py).

    python test_rl_rollout.py [overrides]             # one rollout batch
    python test_rl_rollout.py training [overrides]    # + one PPO update (one RL epoch)

Overrides are the same as for scripts/train_rl.py (e.g. task_name=lift_d0,
pretrained_policy_path=..., training.device=cuda, rl_training.rollout_collector.n_envs=4).
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import time
import traceback
from typing import Dict, List

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from equi_diffpo.common.errors import report_user_errors
from equi_diffpo.common.hydra_cli import CONFIG_DIR, route_task_name

# Small and quiet unless the user overrides them.
SMOKE_DEFAULTS = {
    "logging.mode": "disabled",
    "rl_training.rollout_collector.n_episodes_per_batch": "4",
    "rl_training.rollout_collector.render_episodes": "0",
    "rl_training.ppo_trainer.critic_warmup_epochs": "0",
}


def build_overrides(args: List[str]) -> List[str]:
    given = {a.split("=", 1)[0].lstrip("+") for a in args if "=" in a}
    return [f"{k}={v}" for k, v in SMOKE_DEFAULTS.items() if k not in given] + args


def check_finite(metrics: Dict[str, float], keys: List[str]) -> None:
    bad = [k for k in keys if k in metrics and not math.isfinite(metrics[k])]
    if bad:
        raise FloatingPointError(f"non-finite {bad}")


def main(argv: List[str]) -> int:
    training = "training" in argv
    routed = ["test_rl_rollout.py"] + [a for a in argv if a != "training"]
    route_task_name(routed)  # task_name=<name> also selects the task/<name>.yaml group
    args = routed[1:]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_maniflow_pointcloud_rl", overrides=build_overrides(args))
    OmegaConf.resolve(cfg)
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    out_dir = tempfile.mkdtemp(prefix="test_rl_rollout_")
    rc = cfg.rl_training.rollout_collector
    print(f"task {cfg.task.name} | checkpoint {cfg.pretrained_policy_path} | device {cfg.training.device} | "
          f"n_envs {rc.n_envs} | episodes/batch {rc.n_episodes_per_batch} | max steps {rc.max_episode_steps}")
    start = time.time()
    workspace = RLWorkspace(cfg, output_dir=out_dir)
    collector = workspace.make_collector()
    print(f"setup: {time.time() - start:.1f} s (policy + {rc.n_envs} env workers)")
    try:
        if training:
            metrics = workspace.train_epoch(collector)
        else:
            rollout = collector.collect(workspace.rl_policy, workspace.critic)
            metrics = rollout.metrics()
            check_finite({"log_prob": float(rollout.log_probs.sum()), "value": float(rollout.values.sum())},
                         ["log_prob", "value"])
    finally:
        collector.close()
    if metrics["charts/n_episodes"] != rc.n_episodes_per_batch:
        raise RuntimeError(f"collected {metrics['charts/n_episodes']} episodes, expected {rc.n_episodes_per_batch}")
    print(f"episodes {int(metrics['charts/n_episodes'])} | success {metrics['charts/success_rate']:.2f} | "
          f"return {metrics['charts/episodic_return']:.2f} | length {metrics['charts/episodic_length']:.1f} env steps")
    print(f"rollout {metrics['perf/rollout_seconds']:.1f} s | {metrics['perf/rollout_env_steps_per_s']:.1f} env steps/s")
    if training:
        keys = ["losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac",
                "losses/explained_variance", "losses/first_minibatch_ratio_max_dev"]
        check_finite(metrics, [k for k in keys if k != "losses/explained_variance"])
        print(" | ".join(f"{k.split('/')[1]} {metrics[k]:.4g}" for k in keys if k in metrics))
        print(f"update {metrics['perf/update_seconds']:.1f} s")
        # The chunk log-prob sums 160 float32 Gaussian terms, recomputed at another batch size: ~1e-4
        # of round-off is normal; a real mismatch between rollout and update is of order 1.
        if metrics.get("losses/first_minibatch_ratio_max_dev", 0.0) > 1e-3:
            raise RuntimeError("PPO ratio on the first minibatch is not 1: rollout and update log-probs disagree")
    print("OK")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        with report_user_errors():
            sys.exit(main(sys.argv[1:]))
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - a smoke test reports every failure as exit code 1
        traceback.print_exc()
        print("FAILED")
        sys.exit(1)
