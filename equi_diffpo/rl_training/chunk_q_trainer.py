"""Off-policy TD learning of a chunk critic for best-of-N selection (``rl_policy=qselect``).

The MDP step is one action chunk, as for PPO. Every chunk step the runs execute goes into a replay
(:class:`ChunkReplay`): the policy's frozen observation features, the executed slices of all ``N`` candidates
the flow proposed (the chosen one in slot 0, as the selection policy stores its chains), whether the step
ended the episode with a success, and how many steps remain in its episode. After each rollout batch the
trainer takes ``updates_per_epoch`` clipped double-Q steps (TD3/SAC's twin critics, against overestimation
by the max) on minibatches of the whole replay, with ``n``-step targets (``n_step``):

    y = gamma^k * success_end                                 if the episode ends k < n steps after s,
    y = gamma^n * max_j min(Q1', Q2')(s_{+n}, c_{+n, j})      otherwise;
    loss = (Q1(s, c) - y)^2 + (Q2(s, c) - y)^2

with Polyak-averaged target nets ``Q1'``, ``Q2'`` and the max over the ``N`` candidates that were actually drawn
``n`` steps later (the policy's own greedy choice, so no flow pass is needed at update time: Q-chunking's
best-of-N backup, Li et al. 2025). Why ``n > 1``: with one-step targets the max over 16 noisy estimates inflated
Q on lift_d0 (mean Q 0.20 -> 0.56 in 10 epochs while the rollouts' success stayed ~0.4); each of the ``n`` steps
takes the executed chunk's real outcome instead, and ``n`` beyond an episode's length is the Monte-Carlo return. The reward is the success alone, so ``Q`` is a discounted success probability in
[0, 1] whatever ``task.reward_shaping`` says; an episode cut by the time limit backs up nothing (a failure
within the task's horizon, the same finite-horizon view the shaped PPO returns take).

``Q1`` is the base policy's ``chunk_selector`` (what evaluation's argmax reads and checkpoints carry); ``Q2``,
the targets and the optimizer live here and are saved with the run. The replay is not saved: a resumed run
refills it from its next batches.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping

import numpy as np
import torch
import torch.nn as nn

from equi_diffpo.model.chunk_selector import ChunkSelector
from equi_diffpo.policy.chunk_q_policy import ChunkQSelectionPolicy
from equi_diffpo.rl_training.rl_rollout_collector import RolloutBatch


@dataclass
class ChunkQConfig:
    """Keys of ``rl_training.chunk_q.*`` (used only by off-policy methods: ``rl_policy=qselect``)."""
    gamma: float = 0.99              # per chunk step
    n_step: int = 5                  # chunk steps of real outcome before the bootstrap (>= episode length: Monte Carlo)
    lr: float = 3e-4
    batch_size: int = 256
    updates_per_epoch: int = 200     # gradient steps after each rollout batch (~650 new chunk steps on lift_d0)
    polyak: float = 0.005            # target nets: theta' <- (1 - polyak) theta' + polyak theta, every step
    replay_size: int = 100_000       # chunk steps kept (500k env steps on lift_d0 are ~65k)
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 < self.polyak <= 1.0:
            raise ValueError(f"rl_training.chunk_q: need gamma in [0, 1] and polyak in (0, 1], got {self.gamma}, {self.polyak}")
        for name in ("n_step", "batch_size", "updates_per_epoch", "replay_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"rl_training.chunk_q.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.max_grad_norm <= 0:
            raise ValueError("rl_training.chunk_q: lr and max_grad_norm must be > 0")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ChunkQConfig":
        """From a dict/DictConfig; an unknown key is an error that names it."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown rl_training.chunk_q key(s) {unknown}; valid keys: {valid}")
        return cls(**dict(values))


class ChunkReplay:
    """Ring buffer of chunk steps of whole episodes, in time order, so the step ``n`` after step ``i`` is ``i + n``
    while ``i``'s episode lasts that long (``steps_to_end[i] >= n``; otherwise nothing is read there). Batches
    of complete episodes keep that true across the wrap: a step newer than a stored one is never overwritten first."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.size = 0
        self.ptr = 0
        self.cond = self.executed = self.end_success = self.steps_to_end = None

    def __len__(self) -> int:
        return self.size

    def add(self, cond: np.ndarray, executed: np.ndarray, success: np.ndarray, episode_end: np.ndarray) -> None:
        """cond ``(M, cond_dim)``, executed ``(M, N, Ta * Da)`` (slot 0 the chosen chunk), success and episode_end
        ``(M,)`` of whole episodes in time order (the last step ends one)."""
        if episode_end[-1] != 1:
            raise ValueError("ChunkReplay.add takes whole episodes: the last step must end one")
        if self.cond is None:
            self.cond = np.zeros((self.capacity, *cond.shape[1:]), np.float32)
            self.executed = np.zeros((self.capacity, *executed.shape[1:]), np.float32)
            self.end_success = np.zeros(self.capacity, np.float32)
            self.steps_to_end = np.zeros(self.capacity, np.int64)
        end_success, steps_to_end = np.zeros(len(cond), np.float32), np.zeros(len(cond), np.int64)
        for i in reversed(range(len(cond))):   # each step gets its episode's outcome and distance to its end
            last = episode_end[i] == 1
            end_success[i] = success[i] if last else end_success[i + 1]
            steps_to_end[i] = 0 if last else steps_to_end[i + 1] + 1
        rows = (self.ptr + np.arange(len(cond))) % self.capacity
        self.cond[rows], self.executed[rows] = cond, executed
        self.end_success[rows], self.steps_to_end[rows] = end_success, steps_to_end
        self.ptr = int((rows[-1] + 1) % self.capacity)
        self.size = min(self.size + len(cond), self.capacity)

    def sample(self, batch_size: int, n_step: int) -> Dict[str, torch.Tensor]:
        """A uniform minibatch: ``cond``, ``executed`` of the step, its episode's ``end_success`` and
        ``steps_to_end``, and ``next_cond``, ``next_executed`` of the step ``n_step`` later (garbage, for the
        caller to mask, where the episode ends before)."""
        idx = np.random.randint(0, self.size, size=batch_size)
        nxt = (idx + n_step) % self.capacity
        t = torch.from_numpy
        return {"cond": t(self.cond[idx]), "executed": t(self.executed[idx]), "end_success": t(self.end_success[idx]),
                "steps_to_end": t(self.steps_to_end[idx]), "next_cond": t(self.cond[nxt]),
                "next_executed": t(self.executed[nxt])}


class ChunkQTrainer:
    """Twin chunk critics trained by TD on a replay; ``update(rollout)`` once per RL epoch."""

    def __init__(self, policy: ChunkQSelectionPolicy, cfg: ChunkQConfig):
        self.cfg = cfg
        self.q1: ChunkSelector = policy.head
        self.q2: ChunkSelector = policy.base._build_chunk_selector().to(next(self.q1.parameters()).device)
        self.targets = nn.ModuleList([copy.deepcopy(self.q1), copy.deepcopy(self.q2)]).requires_grad_(False)
        self.optimizer = torch.optim.Adam(list(self.q1.parameters()) + list(self.q2.parameters()), lr=cfg.lr)
        self.replay = ChunkReplay(cfg.replay_size)

    @property
    def device(self) -> torch.device:
        return next(self.q1.parameters()).device

    def add(self, rollout: RolloutBatch) -> None:
        """The batch's chunk steps into the replay (needs the frozen features the collector keeps)."""
        if rollout.cond is None:
            raise ValueError("rl_policy=qselect needs the policy's frozen features: set rl_training.finetune_obs_encoder=false")
        executed = self.q1.executed_slices(torch.from_numpy(rollout.chains)).numpy()
        self.replay.add(rollout.cond, executed, rollout.terminated, rollout.episode_end)

    def td_loss(self, batch: Dict[str, torch.Tensor]) -> tuple[torch.Tensor, Dict[str, float]]:
        """Clipped double-Q loss of one minibatch (see the module docstring) and what to log of it."""
        n, gamma = self.cfg.n_step, self.cfg.gamma
        with torch.no_grad():
            next_q = torch.minimum(*(q.score_executed(batch["next_cond"], batch["next_executed"]) for q in self.targets))
            k = batch["steps_to_end"]
            target = torch.where(k < n, gamma ** k.float() * batch["end_success"], gamma ** n * next_q.max(dim=1).values)
        chosen = batch["executed"][:, :1]
        q1 = self.q1.score_executed(batch["cond"], chosen).squeeze(1)
        q2 = self.q2.score_executed(batch["cond"], chosen).squeeze(1)
        loss = (q1 - target).pow(2).mean() + (q2 - target).pow(2).mean()
        return loss, {"q_loss": loss.item(), "q_mean": q1.mean().item(), "q_target_mean": target.mean().item()}

    def update(self, rollout: RolloutBatch) -> Dict[str, float]:
        """Add the batch, then ``updates_per_epoch`` TD steps -> mean stats under ``chunk_q/``."""
        self.add(rollout)
        params = list(self.q1.parameters()) + list(self.q2.parameters())
        logs: Dict[str, List[float]] = {}
        for _ in range(self.cfg.updates_per_epoch):
            batch = {k: v.to(self.device) for k, v in self.replay.sample(self.cfg.batch_size, self.cfg.n_step).items()}
            loss, stats = self.td_loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"chunk-Q TD loss is {loss.item()} (replay of {len(self.replay)} steps)")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm).item()
            self.optimizer.step()
            with torch.no_grad():
                for target, online in zip(self.targets, (self.q1, self.q2)):
                    for tp, p in zip(target.parameters(), online.parameters()):
                        tp.lerp_(p, self.cfg.polyak)
            for k, v in stats.items():
                logs.setdefault(k, []).append(v)
        with torch.no_grad():   # how much the critic tells this batch's candidates apart
            q = self.q1.score_executed(torch.from_numpy(rollout.cond).to(self.device),
                                       self.q1.executed_slices(torch.from_numpy(rollout.chains).to(self.device)))
        out = {f"chunk_q/{k}": float(np.mean(v)) for k, v in logs.items()}
        out.update({"chunk_q/replay_size": float(len(self.replay)),
                    "chunk_q/candidate_spread": (q.max(dim=1).values - q.min(dim=1).values).mean().item()})
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"q2": self.q2.state_dict(), "targets": self.targets.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.q2.load_state_dict(state["q2"])
        self.targets.load_state_dict(state["targets"])
        self.optimizer.load_state_dict(state["optimizer"])
