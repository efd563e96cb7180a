"""Action-chunk stepping with an observation history: the policy's view of one env.

The policy sees the last ``n_obs_steps`` observations and emits ``n_action_steps`` actions at a
time (diffusion_policy's MultiStepWrapper idea). One chunk is one RL/MDP step: its reward is the
sum over the executed actions, and it stops early on success or on the episode's time limit.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional

import numpy as np

from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv


@dataclass
class ChunkResult:
    """What one chunk step returns. ``obs`` arrays are stacked histories (To, ...)."""
    obs: Dict[str, np.ndarray]
    reward: float
    done: bool
    success: bool
    truncated: bool
    n_steps: int
    frames: List[np.ndarray] = field(default_factory=list)


class ChunkedEnv:
    """Wraps :class:`RobosuitePointCloudEnv`; ``env_kwargs`` are its constructor arguments."""

    def __init__(self, n_obs_steps: int = 2, **env_kwargs: Any):
        self.env = RobosuitePointCloudEnv(**env_kwargs)
        self.n_obs_steps = n_obs_steps
        self._history: Deque[Dict[str, np.ndarray]] = collections.deque(maxlen=n_obs_steps)

    def _stacked(self) -> Dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in self._history]) for k in self._history[0]}

    def reset(self, seed: Optional[int] = None, render: bool = False) -> ChunkResult:
        obs = self.env.reset(seed=seed)
        self._history.clear()
        for _ in range(self.n_obs_steps):       # pad the history with the first frame
            self._history.append(obs)
        frames = [self.env.render()] if render else []
        return ChunkResult(self._stacked(), 0.0, False, False, False, 0, frames)

    def step_chunk(self, actions: np.ndarray, render: bool = False) -> ChunkResult:
        """Execute ``actions`` (Ta, 10) until done; reward is summed over the executed steps."""
        total, frames, info, done, n = 0.0, [], {"success": False, "truncated": False}, False, 0
        for env_action in self.env.env_actions(actions):      # the chunk converted at once (see env_actions)
            obs, reward, done, info = self.env.step_env_action(env_action)
            self._history.append(obs)
            total += reward
            n += 1
            if render:
                frames.append(self.env.render())
            if done:
                break
        return ChunkResult(self._stacked(), total, done, info["success"], info["truncated"], n, frames)

    def close(self) -> None:
        self.env.close()
