"""Self-imitation of successful rollouts: the policy's own BC loss on the chunks that led to success.

Why: a natural weak BC checkpoint (lift_d0's shipped 8-epoch one, 0.35) is weak because its velocity net is
under-trained (the same recipe reaches 0.98 after 30 epochs), and steering only its starting noise (the
latent-noise PPO default) plateaued at 0.47-0.57 over four seeds. What the rollouts do have is successes:
~11 of every 32 episodes. Regressing the velocity net onto the chunks that it sampled in successful episodes,
with the very flow + consistency loss it was pretrained with, is the policy improvement step of
Self-Imitation Learning (Oh et al. 2018, there with (R - V)+ weights) and of reward-filtered regression
(ReST, RAFT): it moves the deterministic policy towards what succeeded, on the states the policy itself
visits, and needs no log-prob of the flow (which is what made FPO and the noisy chain fragile here).

It runs after each PPO update, on its own optimizer over the velocity net (the encoder stays frozen unless
``rl_training.finetune_obs_encoder``), from a FIFO replay of the last ``buffer_chunks`` successful chunk steps:
the chunk target is the executed chain's end ``x_K``, decoded (clamped) to raw actions as the env got them.
The replay is not saved in checkpoints (tens of MB of point clouds); a resumed run refills it from its next
rollouts. With torch.distributed each rank samples its own replay and gradients are averaged before the step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from equi_diffpo.policy.maniflow_pointcloud_policy import ManiFlowPointcloudPolicy
from equi_diffpo.rl_training.ppo_trainer import _is_distributed, all_reduce_gradients


@dataclass
class SelfImitationConfig:
    """Keys of ``rl_training.self_imitation.*``; ``steps_per_epoch: 0`` turns it off."""
    steps_per_epoch: int = 0       # BC optimizer steps on the replay after each PPO update
    batch_size: int = 32           # chunk steps per BC step (BC pretraining's dataloader.batch_size)
    lr: float = 1.0e-4             # AdamW, BC pretraining's optimizer.lr
    weight_decay: float = 1.0e-6
    max_grad_norm: float = 1.0
    buffer_chunks: int = 4096      # FIFO replay of successful chunk steps (~16 MB per 1k at 512 xyz points)
    min_chunks: int = 64           # no step until the replay holds this many

    def __post_init__(self) -> None:
        for name in ("steps_per_epoch", "batch_size", "buffer_chunks", "min_chunks"):
            if getattr(self, name) < (0 if name == "steps_per_epoch" else 1):
                raise ValueError(f"rl_training.self_imitation.{name}={getattr(self, name)} is not valid")
        if self.lr <= 0 or self.max_grad_norm <= 0:
            raise ValueError("rl_training.self_imitation.lr and max_grad_norm must be > 0")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SelfImitationConfig":
        """From a dict/DictConfig; an unknown key is an error naming it and the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown rl_training.self_imitation key(s) {unknown}; valid keys: {valid}")
        return cls(**dict(values))


def successful_steps(terminated: np.ndarray, episode_end: np.ndarray) -> np.ndarray:
    """Boolean mask ``(M,)`` of the chunk steps that belong to episodes ending in success.

    ``terminated``/``episode_end`` ``(M,)`` as in :class:`RolloutBatch` (episodes concatenated in time order;
    success terminates an episode, so an episode succeeded iff its last step is terminated)."""
    ends = np.flatnonzero(episode_end)
    starts = np.concatenate([[0], ends[:-1] + 1])
    mask = np.zeros(len(episode_end), dtype=bool)
    for start, end in zip(starts, ends):
        if terminated[end]:
            mask[start:end + 1] = True
    return mask


class SuccessReplay:
    """FIFO of ``(obs, action chunk)`` pairs: obs ``{'point_cloud': (To, N, C), 'agent_pos': (To, D)}`` raw,
    action ``(horizon, Da)`` raw, as BC's dataset yields them."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.obs: Dict[str, np.ndarray] = {}
        self.action: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return 0 if self.action is None else len(self.action)

    def add(self, obs: Mapping[str, np.ndarray], action: np.ndarray) -> None:
        """Append ``obs`` ``{k: (n, ...)}`` and ``action`` ``(n, horizon, Da)``; drop the oldest beyond capacity."""
        if len(action) == 0:
            return
        keep = lambda old, new: (new if old is None else np.concatenate([old, new]))[-self.capacity:]  # noqa: E731
        self.obs = {k: keep(self.obs.get(k), np.asarray(v)) for k, v in obs.items()}
        self.action = keep(self.action, np.asarray(action, dtype=np.float32))

    def sample(self, batch_size: int, rng: np.random.Generator) -> Dict[str, Any]:
        """A BC batch ``{'obs': {k: (B, ...)}, 'action': (B, horizon, Da)}`` as torch tensors (uniform, with replacement)."""
        idx = rng.integers(0, len(self), size=batch_size)
        return {"obs": {k: torch.from_numpy(v[idx]) for k, v in self.obs.items()},
                "action": torch.from_numpy(self.action[idx])}


class SelfImitation:
    """Owns the replay and the optimizer of the BC steps on it (``state_dict``: the optimizer, so resume keeps it)."""

    def __init__(self, base: ManiFlowPointcloudPolicy, config: SelfImitationConfig | Mapping[str, Any], seed: int = 0):
        self.config = config if isinstance(config, SelfImitationConfig) else SelfImitationConfig.from_dict(config)
        self.base = base
        self.replay = SuccessReplay(self.config.buffer_chunks)
        self.rng = np.random.default_rng(seed)
        self.params: List[nn.Parameter] = list(base.velocity_net.parameters())
        if any(p.requires_grad for p in base.obs_encoder.parameters()):
            self.params += [p for p in base.obs_encoder.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    @property
    def enabled(self) -> bool:
        return self.config.steps_per_epoch > 0

    @torch.no_grad()
    def add_rollout(self, obs: Mapping[str, np.ndarray], chains: np.ndarray, terminated: np.ndarray,
                    episode_end: np.ndarray) -> int:
        """Keep the successful episodes' chunk steps of one rollout batch (arrays as in :class:`RolloutBatch`;
        ``chains`` ``(M, K+1, horizon, Da)``, its last entry the executed normalized chunk). Returns how many."""
        mask = successful_steps(terminated, episode_end)
        if mask.any():
            x_final = torch.as_tensor(chains[mask, -1], dtype=torch.float32, device=self.base.device)
            action = self.base.decode_actions(x_final)["action_pred"].cpu().numpy()
            self.replay.add({k: v[mask] for k, v in obs.items()}, action)
        return int(mask.sum())

    def update(self) -> Dict[str, float]:
        """``steps_per_epoch`` BC steps on the replay (none until it holds ``min_chunks``); logged metrics."""
        cfg = self.config
        stats = {"self_imitation/replay_chunks": float(len(self.replay)), "self_imitation/steps": 0.0}
        if self._smallest_replay() < cfg.min_chunks:
            return stats
        frozen = [p for p in self.params if not p.requires_grad]
        for p in frozen:                 # the RL method may freeze the velocity net for its own optimizer
            p.requires_grad_(True)
        infos: List[Dict[str, float]] = []
        try:
            for _ in range(cfg.steps_per_epoch):
                loss, info = self.base.compute_loss(self.replay.sample(cfg.batch_size, self.rng))
                if not torch.isfinite(loss):
                    raise FloatingPointError("non-finite self-imitation loss; no optimizer step was taken for it")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                all_reduce_gradients(self.params)
                nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                infos.append(info)
        finally:
            for p in frozen:
                p.requires_grad_(False)
        stats.update({f"self_imitation/{k}": float(np.mean([i[k] for i in infos])) for k in infos[0]})
        stats["self_imitation/steps"] = float(len(infos))
        return stats

    def _smallest_replay(self) -> int:
        """The smallest replay over ranks: every rank must take the same steps (their gradients are averaged)."""
        n = torch.tensor(float(len(self.replay)))
        if _is_distributed():
            torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
        return int(n)

    def state_dict(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
