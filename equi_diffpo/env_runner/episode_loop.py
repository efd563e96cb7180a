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
                 progress: Optional[Callable[[int], None]] = None, overlap: bool = False) -> List[Episode]:
    """Collect ``n_episodes`` episodes; episode ``i`` uses ``seeds[i]`` (len(seeds) >= n_episodes
    plus spares for crash replacements) and is rendered if ``i < render_episodes``.

    ``overlap`` (needs >= 2 envs): the envs form two groups, and the policy runs for one group while the
    other group's workers step (double buffering, as Sample Factory / EnvPool's async mode do). Each
    episode's outcome stays a function of its seed: only which rows share a policy batch changes."""
    with torch_threads(vec_env.policy_threads):
        return _EpisodeLoop(vec_env, n_episodes, policy_step, seeds, render_episodes, keep_steps, progress,
                            overlap).run()


class _EpisodeLoop:
    """State of one :func:`run_episodes` call: running episodes per env, their last obs, chunks in flight."""

    def __init__(self, vec_env: VectorEnv, n_episodes: int, policy_step: PolicyStep, seeds: Sequence[int],
                 render_episodes: int, keep_steps: bool, progress: Optional[Callable[[int], None]], overlap: bool):
        self.vec_env, self.n_episodes, self.policy_step, self.seeds = vec_env, n_episodes, policy_step, seeds
        self.render_episodes, self.keep_steps, self.progress = render_episodes, keep_steps, progress
        envs = list(range(vec_env.n_envs))
        self.groups = [envs[0::2], envs[1::2]] if overlap and len(envs) >= 2 else [envs]
        self.started = self.crashed = 0
        self.active: Dict[int, Episode] = {}                  # env id -> running episode
        self.obs: Dict[int, Dict[str, np.ndarray]] = {}
        self.finished: List[Episode] = []
        # group -> (env ids, policy outputs, send flags) of the chunk its workers are stepping
        self.in_flight: Dict[int, tuple] = {}

    def run(self) -> List[Episode]:
        self.start(list(range(self.vec_env.n_envs)))
        for group in range(len(self.groups)):
            self.launch(group)
        while self.in_flight:
            for group in range(len(self.groups)):
                if group in self.in_flight:
                    self.land(group)
                    self.launch(group)
        self.finished.sort(key=lambda e: e.index)
        return self.finished

    def start(self, env_ids: List[int]) -> None:
        """Reset ``env_ids`` into new episodes while episodes remain (a worker that died retries)."""
        while env_ids:
            ids, episodes = [], []
            for env_id in env_ids:
                if self.started >= self.n_episodes + self.crashed:
                    continue
                if self.started >= len(self.seeds):
                    raise RuntimeError(f"ran out of seeds after {self.crashed} crashed episodes")
                episodes.append(Episode(index=self.started, seed=int(self.seeds[self.started])))
                ids.append(env_id)
                self.started += 1
            results = self.vec_env.reset(ids, [e.seed for e in episodes], [self.rendered(e) for e in episodes])
            env_ids = []
            for env_id, episode, result in zip(ids, episodes, results):
                if result is None:                   # worker died during reset: try again
                    self.crashed += 1
                    env_ids.append(env_id)
                    continue
                self.active[env_id], self.obs[env_id] = episode, result.obs
                episode.frames.extend(result.frames)

    def rendered(self, episode: Episode) -> bool:
        return episode.index < self.render_episodes

    def launch(self, group: int) -> None:
        """Policy on the group's running episodes, then their chunks go to the workers (not awaited)."""
        env_ids = sorted(i for i in self.groups[group] if i in self.active)
        if not env_ids:
            return
        batch = {k: np.stack([self.obs[i][k] for i in env_ids]) for k in self.obs[env_ids[0]]}
        raise_if_interrupted()
        out = self.policy_step(batch, [self.active[i].rng for i in env_ids])
        render = [self.rendered(self.active[i]) for i in env_ids]
        sent = self.vec_env.send("step_chunk", env_ids, [(out["action"][j], render[j]) for j in range(len(env_ids))])
        self.in_flight[group] = (env_ids, out, sent)

    def land(self, group: int) -> None:
        """Collect the group's stepped chunks, record them, and start new episodes where some ended."""
        env_ids, out, sent = self.in_flight.pop(group)
        restart: List[int] = []
        for j, (env_id, result) in enumerate(zip(env_ids, self.vec_env.receive(env_ids, sent))):
            episode = self.active[env_id]
            if result is None:
                self.crashed += 1
                del self.active[env_id]
                restart.append(env_id)
                continue
            _record(episode, result, {k: v[j] for k, v in out.items()}, self.obs[env_id], self.keep_steps)
            self.obs[env_id] = result.obs
            if result.done:
                self.finished.append(self.active.pop(env_id))
                if self.progress is not None:
                    self.progress(1)
                restart.append(env_id)
        self.start(restart)


def _record(episode: Episode, result: ChunkResult, policy_out: Dict[str, np.ndarray],
            obs: Dict[str, np.ndarray], keep_steps: bool) -> None:
    episode.env_steps += result.n_steps
    episode.reward += result.reward
    episode.success = episode.success or result.success
    episode.frames.extend(result.frames)
    step = ChunkStep(obs if keep_steps else {}, policy_out if keep_steps else {}, result.reward,
                     result.success, result.truncated, result.obs if keep_steps else {})
    episode.steps.append(step)
