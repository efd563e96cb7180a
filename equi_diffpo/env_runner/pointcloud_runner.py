"""Evaluation runner: success rate, returns and mp4 videos for any policy with ``predict_action``.

``run(policy)`` returns CleanRL-style ``eval/...`` metrics. Episode ``i`` uses seed ``seed + i``
(default 100000, so never a demo seed 0, 1, ...) for both the env's initial state and the policy's
noise (:mod:`equi_diffpo.env_runner.episode_loop`), so the same policy gives the same per-episode
results whatever ``n_envs`` or ``n_episodes``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional

import imageio
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from equi_diffpo.common.seeding import batched_randn
from equi_diffpo.env.rotation import env_rot6d
from equi_diffpo.env.vector_env import VectorEnv
from equi_diffpo.env_runner.episode_loop import Episode, run_episodes

CONTROL_FREQ = 20


def env_kwargs_from_task(task_cfg: Mapping[str, Any] | DictConfig, n_obs_steps: int,
                         render_size: Optional[int], max_episode_steps: Optional[int] = None) -> Dict[str, Any]:
    """ChunkedEnv kwargs from a task config (``config/task/<name>.yaml``)."""
    task = OmegaConf.to_container(task_cfg, resolve=True) if isinstance(task_cfg, DictConfig) else dict(task_cfg)
    return dict(task_name=task["name"], point_cloud=task["point_cloud"], n_obs_steps=n_obs_steps,
                max_episode_steps=max_episode_steps or task["max_episode_steps"], render_size=render_size,
                reward_shaping=bool(task.get("reward_shaping", False)),
                fast_control=bool(task.get("fast_control", True)),
                skip_unread_clouds=bool(task.get("skip_unread_clouds", True)))


def torch_obs(batch: Dict[str, np.ndarray], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).float().to(device) for k, v in batch.items()}


def write_video(frames: List[np.ndarray], path: str, fps: int = CONTROL_FREQ) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    imageio.mimwrite(path, np.stack(frames), fps=fps, codec="libx264", macro_block_size=1)
    return path


def episode_metrics(episodes: List[Episode], prefix: str) -> Dict[str, float]:
    """Success rate, mean return and mean length (env steps) over ``episodes``."""
    return {
        f"{prefix}/success_rate": float(np.mean([e.success for e in episodes])),
        f"{prefix}/mean_return": float(np.mean([e.reward for e in episodes])),
        f"{prefix}/mean_length": float(np.mean([e.env_steps for e in episodes])),
        f"{prefix}/n_episodes": float(len(episodes)),
    }


class PointCloudEnvRunner:
    """Evaluates a policy on ``n_episodes`` seeded episodes of one task, ``n_envs`` in parallel."""

    def __init__(self, task: Mapping[str, Any] | DictConfig, output_dir: str, n_episodes: int = 50, n_envs: int = 2,
                 n_videos: int = 1, render_size: int = 128, max_episode_steps: Optional[int] = None,
                 n_obs_steps: int = 2, seed: int = 100000, vec_mode: str = "process", noise_scale: float = 1.0,
                 overlap: bool = False):
        """``noise_scale``: the flow starts from ``noise_scale * N(0, I)`` draws (0 = fully deterministic);
        a diagnostic of how much the policy's behaviour rides on its initial noise. ``overlap``: policy for one
        group of envs while the other steps (:func:`run_episodes`; results are the same either way)."""
        self.env_kwargs = env_kwargs_from_task(task, n_obs_steps, render_size if n_videos > 0 else None, max_episode_steps)
        self.noise_scale = float(noise_scale)
        self.output_dir = output_dir
        self.n_episodes, self.n_envs, self.n_videos = n_episodes, min(n_envs, n_episodes), n_videos
        self.seed, self.vec_mode, self.overlap = seed, vec_mode, bool(overlap)
        self._vec_env: Optional[VectorEnv] = None

    @property
    def vec_env(self) -> VectorEnv:
        if self._vec_env is None:       # started on first use; reused across periodic evaluations
            self._vec_env = VectorEnv(self.env_kwargs, self.n_envs, mode=self.vec_mode, seed=self.seed)
        return self._vec_env

    @torch.no_grad()
    def run(self, policy: torch.nn.Module, tag: str = "eval") -> Dict[str, Any]:
        """Deterministic-or-not is the policy's business; returns metrics + ``video_paths``."""
        device = next(policy.parameters()).device
        was_training = policy.training
        policy.eval()
        action_rot6d = getattr(policy, "action_rot6d", "columns")

        def policy_step(batch: Dict[str, np.ndarray], rngs: List[torch.Generator]) -> Dict[str, np.ndarray]:
            # One row at a time: CPU kernels pick their blocking by batch size, so a row's actions differ
            # in the last bits with the batch it shares (measured ~1e-6), and contact physics grows that
            # into a different episode. Per row, an episode's result is independent of n_envs.
            noise = self.noise_scale * batched_randn(policy.noise_shape, len(rngs), device, rngs)
            actions = [policy.predict_action(torch_obs({k: v[i:i + 1] for k, v in batch.items()}, device),
                                             noise[i:i + 1])["action"] for i in range(len(rngs))]
            # Policies trained on the original ManiFlow / equidiff data store rot6d as matrix rows.
            return {"action": env_rot6d(torch.cat(actions).cpu().numpy(), action_rot6d)}

        seeds = range(self.seed, self.seed + 2 * self.n_episodes + 10)
        with tqdm(total=self.n_episodes, desc=tag, unit="ep", leave=False) as bar:
            episodes = run_episodes(self.vec_env, self.n_episodes, policy_step, seeds,
                                    render_episodes=self.n_videos, progress=bar.update, overlap=self.overlap)
        policy.train(was_training)
        metrics: Dict[str, Any] = episode_metrics(episodes, "eval")
        metrics["video_paths"] = [write_video(e.frames, os.path.join(self.output_dir, "videos", f"{tag}_seed{e.seed}.mp4"))
                                  for e in episodes if e.frames]
        metrics["episodes"] = [{"seed": e.seed, "success": e.success, "return": e.reward, "length": e.env_steps}
                               for e in episodes]
        return metrics

    def close(self) -> None:
        if self._vec_env is not None:
            self._vec_env.close()
            self._vec_env = None
