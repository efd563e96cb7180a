"""Replay buffer of chunk-level transitions for the off-policy learner (``rl_policy=dsrl``).

One row = one executed action chunk: the critic's state ``(S,)`` and the policy's features ``(F,)`` before
and after it, the starting noise ``x_0`` ``(horizon, Da)`` that produced it, its summed (scaled) reward and
``done`` = the episode ended after it. Time-limit truncation counts as an end too: the critic's state holds
the elapsed fraction of the episode (``robosuite_env.py``), so the return is a finite-horizon one and a
truncated episode has nothing left to bootstrap (the same reason the PPO collector does not bootstrap shaped
episodes). Tensors live on the training device and are filled as a ring; not saved in checkpoints (a
resumed run refills it).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

FIELDS = ("state", "features", "x0", "reward", "next_state", "next_features", "done")


class TransitionReplay:
    def __init__(self, capacity: int, device: torch.device | str):
        if capacity < 1:
            raise ValueError(f"rl_training.sac_trainer.replay_capacity must be >= 1, got {capacity}")
        self.capacity, self.device = int(capacity), torch.device(device)
        self.data: Dict[str, torch.Tensor] = {}
        self.size = 0
        self._next = 0

    def __len__(self) -> int:
        return self.size

    def add(self, rows: Dict[str, torch.Tensor]) -> None:
        """``rows``: every name of :data:`FIELDS`, each ``(n, ...)`` (n rows; the oldest are overwritten)."""
        n = rows["reward"].shape[0]
        if not self.data:
            self.data = {k: torch.zeros((self.capacity, *rows[k].shape[1:]), dtype=torch.float32, device=self.device)
                         for k in FIELDS}
        idx = (self._next + torch.arange(n)) % self.capacity
        for k in FIELDS:
            self.data[k][idx.to(self.device)] = rows[k].to(self.device, torch.float32)
        self._next = int((self._next + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """``batch_size`` rows drawn uniformly with replacement."""
        idx = torch.randint(self.size, (batch_size,), generator=generator).to(self.device)
        return {k: v[idx] for k, v in self.data.items()}
