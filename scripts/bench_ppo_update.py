"""PPO update time with and without the feature cache, on one real rollout batch, as a share of the epoch.

    python scripts/bench_ppo_update.py                       # README main command's settings (lift_d0, 32 episodes)
    python scripts/bench_ppo_update.py --repeat=3 --profile critic=own   # each mode 3x, cProfile of the last

Builds the RL workspace of ``train_maniflow_pointcloud_rl`` (hydra overrides as arguments), collects one
batch with its real collector, then runs the same ``PPOTrainer.update`` three times from the same weights, optimizer
state and minibatch order: ``cache_features=false`` (frozen encoders re-run in every minibatch, the code
before the cache), ``true`` on a batch without the rollout's features (one encoder pass per update) and
``true`` on the batch as collected (it carries the features the policy acted on: no encoder pass). The
update is timed at RL epoch ``critic_warmup_epochs`` (actor and critic both step). Share of epoch = update / (rollout + update). On a shared CPU the times vary with the load:
``--repeat=N`` runs each mode N times (each from the same state) and prints every run.
"""
from __future__ import annotations

import copy
import cProfile
import dataclasses
import os
import pstats
import sys
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

from equi_diffpo.common.hydra_cli import compose_config  # noqa: E402
from equi_diffpo.rl_training.rl_workspace import RLWorkspace, rollout_to_ppo_batch  # noqa: E402


def main() -> None:
    args = sys.argv[1:]
    profile = "--profile" in args
    repeat = int(next((a.split("=", 1)[1] for a in args if a.startswith("--repeat=")), 1))
    overrides = [a for a in args if not a.startswith("--")]
    cfg = compose_config("train_maniflow_pointcloud_rl", ["logging.mode=disabled",
                                                          "rl_training.rollout_collector.render_episodes=0", *overrides])
    ws = RLWorkspace(cfg, output_dir=tempfile.mkdtemp(prefix="bench_ppo_update_"))
    collector = ws.make_collector()
    try:
        rollout = collector.collect(ws.rl_policy, ws.critic, tag="bench")
    finally:
        collector.close()
    rewards = ws.reward_scaler(rollout.rewards, rollout.episode_end) if ws.reward_scaler else rollout.rewards
    start = time.perf_counter()
    batch = rollout_to_ppo_batch(rollout, rewards, ws.ppo_cfg.gamma, ws.ppo_cfg.gae_lambda).to(ws.device)
    gae_seconds = time.perf_counter() - start
    if getattr(ws.critic, "needs_input_stats", False):   # as RLWorkspace.train_epoch does on the first batch
        ws.critic.fit_input_stats(batch.obs)
    print(f"rollout: {len(batch)} chunk steps, {rollout.env_steps} env steps, {rollout.seconds:.1f} s; "
          f"GAE + batch {gae_seconds:.3f} s; torch threads {torch.get_num_threads()}")

    state = copy.deepcopy((ws.rl_policy.state_dict(), ws.critic.state_dict(), ws.trainer.state_dict()))
    epoch = ws.ppo_cfg.critic_warmup_epochs
    # (label, cache_features, batch): encoders per minibatch; once per update; not at all (the rollout's features).
    modes = [("per minibatch", False, batch), ("once per update", True, dataclasses.replace(batch, cond=None)),
             ("from the rollout", True, batch)]
    runs = [mode for mode in modes for _ in range(repeat)]
    for i, (label, cache, mode_batch) in enumerate(runs):
        ws.rl_policy.load_state_dict(state[0]), ws.critic.load_state_dict(state[1])
        ws.trainer.load_state_dict(state[2])
        ws.trainer.config.cache_features = cache
        ws.rl_policy.train(), ws.critic.train()
        torch.manual_seed(0)   # same minibatch order
        profiler = cProfile.Profile() if profile and i == len(runs) - 1 else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        stats = ws.trainer.update(mode_batch, epoch)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - start
        print(f"encoders {label:16s}: update {seconds:6.2f} s = {seconds / (rollout.seconds + seconds):5.1%} "
              f"of the epoch ({stats.ppo_minibatches} actor / {stats.critic_steps} critic minibatch steps, "
              f"value_loss {stats.value_loss:.4f})")
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(15)


if __name__ == "__main__":
    main()
