"""How much signal PPO's gradient for the latent-noise prior carries, before any update.

Usage: ``python scripts/diagnose_policy_gradient.py n_batches=6 [hydra overrides of train_maniflow_pointcloud_rl]``
e.g. ``... n_batches=6 pretrained_policy_path=data/checkpoints/lift_d0_weak.ckpt task.reward_shaping=true
rl_training.rollout_collector.max_episode_steps=160``

Why: a 15-epoch RL run takes ~20 min on 2 CPU cores and its outcome is one noisy number. The latent
policy's first update is driven by ``g = mean_i A_i (x0_i - mu) / std^2``; at the start ``mu = 0,
std = 1``, so ``g = mean_i A_i x0_i`` ``(horizon, action_dim)`` for a state-independent mean. This script
collects ``n_batches`` rollout batches with the real collector and config, then reports, for several
advantage definitions, the t-statistic of ``g`` over batches (|t| ~ 1 is noise; a deficit PPO can fix
shows up as a consistent sign in the action dims it lives in). Credit-assignment ideas can be compared
on the same episodes in minutes.

Advantages (normalised per batch like the trainer's): Monte-Carlo discounted returns (GAE with V = 0,
lambda = 1) of the success indicator ("sparse") and of the env reward ("task reward", the shaped one with
``task.reward_shaping=true``), optionally minus the batch's mean return at the same chunk index (what a
critic that only knows the time could remove). Columns: per action dim, the t of the horizon-averaged
entries of ``g`` over the executed steps (one shared shift); last column, the mean |t| of single entries.
With chunk-shared exploration (``rl_policy.noise_prior_chunk_std`` > 0, the default) the score of a shared
shift ``mu_d`` is ``sum_t x0[t, d] / (1 + H c^2)``, a constant times the same horizon sum, so the per-dim columns
are its t as well; the single-entry column then means little.
"""
from __future__ import annotations

import sys
from typing import Dict, List

import numpy as np
import torch

from equi_diffpo.common.hydra_cli import compose_config
from equi_diffpo.rl_training.ppo_trainer import compute_gae

GAMMAS = (0.99, 0.9)


def collect(cfg, n_batches: int) -> Dict[str, np.ndarray]:
    """``n_batches`` batches of chunk transitions from the untrained RL policy: x0 ``(T, H, Da)``, rewards,
    success, episode_end, batch index, chunk index within its episode (all ``(T,)``)."""
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    workspace = RLWorkspace(cfg, output_dir="data/outputs/diagnose_policy_gradient")
    collector = workspace.make_collector()
    parts: Dict[str, List[np.ndarray]] = {k: [] for k in ("x0", "rewards", "success", "episode_end", "batch")}
    try:
        for b in range(n_batches):
            rollout = collector.collect(workspace.rl_policy, workspace.critic, tag=f"batch{b}")
            parts["x0"].append(rollout.chains[:, 0])
            parts["rewards"].append(rollout.rewards)
            parts["success"].append(rollout.terminated)
            parts["episode_end"].append(rollout.episode_end)
            parts["batch"].append(np.full(len(rollout.rewards), b))
            print(f"batch {b}: {int(rollout.terminated.sum())} successes in {int(rollout.episode_end.sum())} episodes")
    finally:
        collector.close()
    data = {k: np.concatenate(v) for k, v in parts.items()}
    starts = np.concatenate([[0], np.flatnonzero(data["episode_end"][:-1]) + 1])
    data["chunk_index"] = np.arange(len(data["rewards"])) - np.repeat(starts, np.diff(np.append(starts, len(data["rewards"]))))
    start = workspace.model.n_obs_steps - 1
    data["exec_slice"] = np.array([start, start + workspace.model.n_action_steps])
    return data


def mc_returns(rewards: np.ndarray, data: Dict[str, np.ndarray], gamma: float) -> np.ndarray:
    t = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    zeros = torch.zeros(len(rewards))
    return compute_gae(t(rewards), zeros, zeros, t(data["success"]), t(data["episode_end"]), gamma, 1.0).advantages.numpy()


def minus_time_baseline(returns: np.ndarray, data: Dict[str, np.ndarray]) -> np.ndarray:
    out = returns.copy()
    for b in np.unique(data["batch"]):
        for k in np.unique(data["chunk_index"][data["batch"] == b]):
            m = (data["batch"] == b) & (data["chunk_index"] == k)
            out[m] -= returns[m].mean()
    return out


def gradient_t_stats(advantages: np.ndarray, data: Dict[str, np.ndarray], exec_slice: slice) -> tuple[np.ndarray, float]:
    """t over batches of the shared-shift gradient per action dim ``(Da,)``, and mean |t| of single entries."""
    grads = []
    for b in np.unique(data["batch"]):
        m = data["batch"] == b
        a = advantages[m]
        a = (a - a.mean()) / (a.std() + 1e-8)
        grads.append((a[:, None, None] * data["x0"][m]).mean(0)[exec_slice])    # (n_exec, Da)
    g = np.stack(grads)                                                           # (n_batches, n_exec, Da)
    t = lambda x: x.mean(0) / (x.std(0, ddof=1) / np.sqrt(len(x)))  # noqa: E731
    return t(g.mean(1)), float(np.abs(t(g)).mean())


def main(argv: List[str]) -> None:
    n_batches = 6
    overrides = []
    for item in argv:
        if item.startswith("n_batches="):
            n_batches = int(item.split("=", 1)[1])
        else:
            overrides.append(item)
    if n_batches < 2:
        raise SystemExit("n_batches must be >= 2 (the t-statistic needs a spread over batches)")
    cfg = compose_config("train_maniflow_pointcloud_rl",
                         ["logging.mode=disabled", "rl_training.rollout_collector.render_episodes=0", *overrides])
    data = collect(cfg, n_batches)
    exec_slice = slice(*(int(i) for i in data["exec_slice"]))
    action_dim = data["x0"].shape[-1]
    print(f"\n{len(data['rewards'])} chunks, {int(data['episode_end'].sum())} episodes, "
          f"{int(data['success'].sum())} successes; t over {n_batches} batches (|t| ~ 1 is noise)")
    print("| advantage | " + " | ".join(f"t dim {d}" for d in range(action_dim)) + " | mean abs t, single entries |")
    print("|---" * (action_dim + 2) + "|")
    for name, rewards in (("sparse", data["success"]), ("task reward", data["rewards"])):
        for gamma in GAMMAS:
            returns = mc_returns(rewards, data, gamma)
            for label, adv in ((f"{name}, gamma {gamma}", returns),
                               (f"{name}, gamma {gamma}, minus time baseline", minus_time_baseline(returns, data))):
                shared, single = gradient_t_stats(adv, data, exec_slice)
                print(f"| {label} | " + " | ".join(f"{x:+.1f}" for x in shared) + f" | {single:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
