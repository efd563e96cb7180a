"""Rollout collector: vectorized robosuite envs -> chunk-level PPO transitions.

One MDP step = one action chunk: the RL policy samples its chunk (and the chain it stores) from the last
``n_obs_steps`` observations, the env executes its ``n_action_steps`` actions (reward summed,
stopping early on success = termination, or at ``max_episode_steps`` = truncation). Policy and
critic run batched over all envs on ``training.device``; envs step in worker processes.
Each call returns exactly ``n_episodes_per_batch`` complete episodes (all steps of each), so
GAE never sees a cut-off episode.

Time-limit truncation bootstraps from the critic (the task goes on, the episode was just cut),
except with ``task.reward_shaping``: there a success pays robosuite's maximum reward for the
episode's remaining steps (``robosuite_env.py``), a finite-horizon return. Bootstrapping the
truncated, failed episodes with an infinite-horizon value would then price hovering near the cube
above succeeding: measured on lift_d0 (weak start, shaped reward) the mean value target grew
1.3 -> 4.9 over 5 epochs while the episode returns stayed flat.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from tqdm import tqdm

from equi_diffpo.env.vector_env import VectorEnv
from equi_diffpo.env_runner.episode_loop import Episode, run_episodes
from equi_diffpo.env_runner.pointcloud_runner import env_kwargs_from_task, episode_metrics, torch_obs, write_video
from equi_diffpo.policy.rl_policy_base import RLPolicyBase


@dataclass
class RolloutBatch:
    """Flat, time-ordered chunk steps of whole episodes (M steps in total).

    obs: {'point_cloud': (M, To, N, C), 'agent_pos': (M, To, D)}; chains (M, K+1, H, Da);
    log_probs, values, rewards, next_values (M,); terminated (M,) success ended the episode
    after this step (no bootstrap); episode_end (M,) the episode ended after this step
    (terminated or truncated); cond (M, cond_dim) or the DiT-X's tokens: the frozen encoder's output the
    policy acted on (None while the encoder trains), reused by the PPO update instead of a second encoding
    (on lift_d0 that encoding was 80% of the update: docs/BENCHMARKS.md)."""
    obs: Dict[str, np.ndarray]
    chains: np.ndarray
    cond: Optional[np.ndarray]
    log_probs: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    next_values: np.ndarray
    terminated: np.ndarray
    episode_end: np.ndarray
    episodes: List[Episode]
    env_steps: int
    seconds: float
    video_paths: List[str]

    def metrics(self) -> Dict[str, float]:
        out = episode_metrics(self.episodes, "charts")
        out.update({"charts/episodic_return": out.pop("charts/mean_return"),
                    "charts/episodic_length": out.pop("charts/mean_length"),
                    "perf/rollout_seconds": self.seconds, "perf/rollout_env_steps_per_s": self.env_steps / self.seconds,
                    "perf/chunk_steps": float(len(self.rewards))})
        return out


class RLRolloutCollector:
    def __init__(self, task: Mapping[str, Any], output_dir: str, n_episodes_per_batch: int = 16, n_envs: int = 2,
                 max_episode_steps: int | None = None, render_episodes: int = 0, render_size: int = 128,
                 n_obs_steps: int = 2, seed: int = 0, vec_mode: str = "process", overlap: bool = False):
        """``overlap``: policy inference for one group of envs while the other group's workers step
        (:func:`~equi_diffpo.env_runner.episode_loop.run_episodes`)."""
        self.overlap = bool(overlap)
        self.n_episodes_per_batch = n_episodes_per_batch
        self.render_episodes = render_episodes
        self.output_dir = output_dir
        kwargs = env_kwargs_from_task(task, n_obs_steps, render_size if render_episodes > 0 else None, max_episode_steps)
        self.vec_env = VectorEnv(kwargs, min(n_envs, n_episodes_per_batch), mode=vec_mode, seed=seed)
        self.bootstrap_truncated = not bool(task.get("reward_shaping", False))   # see the module docstring
        # Training episodes draw fresh seeds from their own stream (evaluation uses 100000+).
        self._seed_rng = np.random.default_rng(seed)

    @torch.no_grad()
    def collect(self, policy: RLPolicyBase, critic: torch.nn.Module, tag: str = "rollout") -> RolloutBatch:
        device = next(policy.parameters()).device
        policy.eval()
        critic.eval()

        keep_cond = policy.obs_encoder_frozen
        critic_reads_cond = keep_cond and getattr(critic, "reads_policy_features", False)

        def policy_step(batch: Dict[str, np.ndarray], rngs: List[torch.Generator]) -> Dict[str, np.ndarray]:
            obs = torch_obs(batch, device)
            sample = policy.sample_actions(obs, generators=rngs)
            value = critic(obs, features=sample.cond) if critic_reads_cond else critic(obs)
            out = {"action": policy.env_actions(sample.action), "chains": sample.chains.cpu().numpy(),
                   "log_prob": sample.log_prob.cpu().numpy(), "value": value.cpu().numpy()}
            if keep_cond:
                out["cond"] = sample.cond.float().cpu().numpy()
            return out

        start = time.time()
        seeds = self._seed_rng.integers(0, 2**31 - 1, size=2 * self.n_episodes_per_batch + 10)
        with tqdm(total=self.n_episodes_per_batch, desc=tag, unit="ep", leave=False) as bar:
            episodes = run_episodes(self.vec_env, self.n_episodes_per_batch, policy_step, seeds,
                                    render_episodes=self.render_episodes, keep_steps=True, progress=bar.update,
                                    overlap=self.overlap)
        steps = [s for e in episodes for s in e.steps]
        truncated = np.array([s.truncated for s in steps])
        next_values = np.zeros(len(steps), dtype=np.float32)
        if self.bootstrap_truncated and truncated.any():   # where the time limit, not the task, ended it
            idx = np.flatnonzero(truncated)
            next_obs = {k: np.stack([steps[i].next_obs[k] for i in idx]) for k in steps[0].next_obs}
            next_values[idx] = critic(torch_obs(next_obs, device)).cpu().numpy()
        episode_end = np.zeros(len(steps), dtype=np.float32)
        episode_end[np.cumsum([len(e.steps) for e in episodes]) - 1] = 1.0
        values = np.array([s.policy_out["value"] for s in steps], dtype=np.float32)
        # Within an episode, the next state's value is the next step's own value estimate.
        inner = episode_end == 0
        next_values[inner] = values[1:][inner[:-1]]
        videos = [write_video(e.frames, os.path.join(self.output_dir, "videos", f"{tag}_seed{e.seed}.mp4"))
                  for e in episodes if e.frames]
        return RolloutBatch(
            obs={k: np.stack([s.obs[k] for s in steps]) for k in steps[0].obs},
            chains=np.stack([s.policy_out["chains"] for s in steps]),
            cond=np.stack([s.policy_out["cond"] for s in steps]) if keep_cond else None,
            log_probs=np.array([s.policy_out["log_prob"] for s in steps], dtype=np.float32),
            values=values, rewards=np.array([s.reward for s in steps], dtype=np.float32), next_values=next_values,
            terminated=np.array([s.success for s in steps], dtype=np.float32), episode_end=episode_end,
            episodes=episodes, env_steps=sum(e.env_steps for e in episodes), seconds=time.time() - start,
            video_paths=videos)

    def close(self) -> None:
        self.vec_env.close()
