"""Run exactly N complete episodes on a :class:`VectorEnv` with batched policy calls.

Shared by evaluation (episode stats + videos) and RL collection (which also keeps every chunk
step). An episode whose worker crashed is dropped and replaced by a new one, so callers always
get ``n_episodes`` complete, uncorrupted episodes, ordered by episode index (= seed order).

Every episode carries its own ``torch.Generator`` seeded by its env seed
(:func:`equi_diffpo.common.seeding.episode_generator`), handed to ``policy_step`` row by row: the
policy draws its noise from it, so an episode's outcome depends on its seed only, not on which
worker ran it, which episodes shared its batch, or ``n_envs``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from equi_diffpo.common.interrupt import raise_if_interrupted
from equi_diffpo.common.seeding import episode_generator
from equi_diffpo.common.threads import torch_threads
from equi_diffpo.env.chunked_env import ChunkResult
from equi_diffpo.env.vector_env import VectorEnv

# policy_step(obs batch {key: (B, To, ...)}, one generator per row) -> {'action': (B, Ta, Da), <extras>: (B, ...)}
PolicyStep = Callable[[Dict[str, np.ndarray], List[torch.Generator]], Dict[str, np.ndarray]]


@dataclass
class ChunkStep:
    """One MDP step of one episode: the obs the policy saw, its outputs, and the outcome."""
    obs: Dict[str, np.ndarray]          # (To, ...) each
    policy_out: Dict[str, np.ndarray]   # this env's slice of the policy outputs
    reward: float
    success: bool
    truncated: bool
    next_obs: Dict[str, np.ndarray]


@dataclass
class Episode:
    index: int
    seed: int
    steps: List[ChunkStep] = field(default_factory=list)
    frames: List[np.ndarray] = field(default_factory=list)
    env_steps: int = 0
    rng: Optional[torch.Generator] = field(default=None, repr=False)   # the policy's draws; set from ``seed``
    reward: float = 0.0
    success: bool = False

    def __post_init__(self) -> None:
        if self.rng is None:
            self.rng = episode_generator(self.seed)


def run_episodes(vec_env: VectorEnv, n_episodes: int, policy_step: PolicyStep, seeds: Sequence[int],
                 render_episodes: int = 0, keep_steps: bool = False,
                 progress: Optional[Callable[[int], None]] = None) -> List[Episode]:
    """Collect ``n_episodes`` episodes; episode ``i`` uses ``seeds[i]`` (len(seeds) >= n_episodes
    plus spares for crash replacements) and is rendered if ``i < render_episodes``."""
    with torch_threads(vec_env.policy_threads):
        return _run_episodes(vec_env, n_episodes, policy_step, seeds, render_episodes, keep_steps, progress)


def _run_episodes(vec_env: VectorEnv, n_episodes: int, policy_step: PolicyStep, seeds: Sequence[int],
                  render_episodes: int, keep_steps: bool, progress: Optional[Callable[[int], None]]) -> List[Episode]:
    started = 0
    active: Dict[int, Episode] = {}                  # env id -> running episode
    obs: Dict[int, Dict[str, np.ndarray]] = {}
    finished: List[Episode] = []
    crashed = 0

    def start(env_ids: List[int]) -> None:
        nonlocal started, crashed
        while env_ids:
            ids, episodes = [], []
            for env_id in env_ids:
                if started >= n_episodes + crashed:
                    continue
                if started >= len(seeds):
                    raise RuntimeError(f"ran out of seeds after {crashed} crashed episodes")
                episodes.append(Episode(index=started, seed=int(seeds[started])))
                ids.append(env_id)
                started += 1
            results = vec_env.reset(ids, [e.seed for e in episodes], [e.index < render_episodes for e in episodes])
            env_ids = []
            for env_id, episode, result in zip(ids, episodes, results):
                if result is None:                   # worker died during reset: try again
                    crashed += 1
                    env_ids.append(env_id)
                    continue
                active[env_id], obs[env_id] = episode, result.obs
                episode.frames.extend(result.frames)

    start(list(range(vec_env.n_envs)))
    while active:
        env_ids = sorted(active)
        batch = {k: np.stack([obs[i][k] for i in env_ids]) for k in obs[env_ids[0]]}
        raise_if_interrupted()
        out = policy_step(batch, [active[i].rng for i in env_ids])
        results = vec_env.step_chunk(env_ids, out["action"], [active[i].index < render_episodes for i in env_ids])
        restart: List[int] = []
        for j, (env_id, result) in enumerate(zip(env_ids, results)):
            episode = active[env_id]
            if result is None:
                crashed += 1
                del active[env_id]
                restart.append(env_id)
                continue
            _record(episode, result, {k: v[j] for k, v in out.items()}, obs[env_id], keep_steps)
            obs[env_id] = result.obs
            if result.done:
                finished.append(active.pop(env_id))
                if progress is not None:
                    progress(1)
                restart.append(env_id)
        start(restart)
    finished.sort(key=lambda e: e.index)
    return finished


def _record(episode: Episode, result: ChunkResult, policy_out: Dict[str, np.ndarray],
            obs: Dict[str, np.ndarray], keep_steps: bool) -> None:
    episode.env_steps += result.n_steps
    episode.reward += result.reward
    episode.success = episode.success or result.success
    episode.frames.extend(result.frames)
    step = ChunkStep(obs if keep_steps else {}, policy_out if keep_steps else {}, result.reward,
                     result.success, result.truncated, result.obs if keep_steps else {})
    episode.steps.append(step)
