"""SAC in the flow's noise space (DSRL), on chunk-level transitions from the same collector PPO uses.

Each RL epoch the workspace hands the collected :class:`RolloutBatch` to :meth:`SACTrainer.add_rollout`
(whole episodes -> replay rows) and then runs :meth:`SACTrainer.update` for
``updates_per_transition * new rows`` gradient steps, each on ``batch_size`` replayed rows:

    critic:  y = r + gamma * (1 - done) * (min Q'(s', x0') - alpha * kl(x0' | s')),  x0' ~ pi(. | s')
    actor:   min over the prior of  alpha * kl(x0 | s) - min(Q1, Q2)(s, x0),  x0 = mu + std * eps
    alpha:   tuned so that the mean kl stays near ``target_kl``

with ``kl(x0 | s) = log pi(x0 | s) - log N(x0; 0, I)``, the one-sample KL from the BC policy's noise
(:meth:`DSRLPolicy.rsample`): SAC with the BC policy as the reference instead of the uniform one, so alpha
prices leaving the BC policy rather than losing entropy. ``Q'`` is the Polyak-averaged copy (``tau``). The
actor is the policy's noise prior (:class:`~equi_diffpo.policy.dsrl_policy.DSRLPolicy`), the critic a
:class:`LatentQCritic` on the privileged state. Both read cached inputs only (the policy's frozen features
and the state vector), so a step costs three small MLP passes: no point-cloud encoder and no velocity net
in the update (one velocity-net pass on 256 rows costs ~0.3 s on this CPU, which rules out DSRL's
noise-aliased critic on the executed actions here).
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping

import numpy as np
import torch
import torch.nn as nn

from equi_diffpo.common.config_checks import dataclass_from_dict
from equi_diffpo.policy.dsrl_policy import DSRLPolicy
from equi_diffpo.rl_training.critic import PrivilegedCritic
from equi_diffpo.rl_training.latent_q import LatentQCritic
from equi_diffpo.rl_training.rl_rollout_collector import RolloutBatch
from equi_diffpo.rl_training.transition_replay import TransitionReplay


@dataclass
class SACConfig:
    """Keys of ``rl_training.sac_trainer.*`` (``rl_policy=dsrl``)."""
    gamma: float = 0.99                   # per chunk step (one MDP step = one executed chunk)
    tau: float = 0.005                    # Polyak rate of the target critic
    batch_size: int = 256
    updates_per_transition: float = 1.0   # gradient steps per new replay row (UTD ratio)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 1e-3
    init_alpha: float = 0.1
    target_kl: float = 10.0               # nats per chunk that the prior may move away from the BC noise N(0, I)
    reward_scale: float = 0.1             # rewards are multiplied by it (lift_d0 shaped returns reach ~100)
    replay_capacity: int = 200_000
    warmup_transitions: int = 2_000       # actor and alpha wait until the replay holds this many rows
    critic_hidden: int = 256
    max_grad_norm: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.gamma <= 1 or not 0 < self.tau <= 1:
            raise ValueError("rl_training.sac_trainer: need gamma in [0, 1] and tau in (0, 1]")
        if self.batch_size < 1 or self.updates_per_transition <= 0 or self.target_kl <= 0 or self.init_alpha <= 0:
            raise ValueError("rl_training.sac_trainer: need batch_size >= 1 and updates_per_transition, "
                             "target_kl, init_alpha > 0")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SACConfig":
        return dataclass_from_dict(cls, values, "rl_training.sac_trainer")


def rollout_rows(rollout: RolloutBatch, policy: DSRLPolicy, reward_scale: float) -> Dict[str, torch.Tensor]:
    """Whole episodes of a rollout -> replay rows (see :mod:`~equi_diffpo.rl_training.transition_replay`):
    the next state of an episode's last step is its own (masked by ``done``)."""
    if rollout.cond is None:
        raise ValueError("rl_policy=dsrl learns from the policy's cached features: keep "
                         "rl_training.finetune_obs_encoder=false")
    t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    state = PrivilegedCritic.state_input({k: t(v) for k, v in rollout.obs.items() if k in ("agent_pos", "privileged")})
    device = policy.base.device
    with torch.no_grad():
        features = policy.cond_features(t(rollout.cond).to(device)).float().cpu()
    done = t(rollout.episode_end)
    nxt = torch.arange(len(done)) + (1 - done).long()   # i + 1 inside an episode, i at its end
    return {"state": state, "features": features, "x0": t(rollout.chains[:, 0]),
            "reward": t(rollout.rewards) * reward_scale, "next_state": state[nxt], "next_features": features[nxt],
            "done": done}


class SACTrainer:
    def __init__(self, policy: DSRLPolicy, critic: LatentQCritic, config: SACConfig, seed: int = 0):
        self.policy, self.critic, self.cfg = policy, critic, config
        self.device = next(critic.parameters()).device
        self.target_critic = copy.deepcopy(critic).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(policy.head_parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(critic.parameters(), lr=config.critic_lr)
        self.log_alpha = torch.tensor(math.log(config.init_alpha), device=self.device, requires_grad=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self.replay = TransitionReplay(config.replay_capacity, self.device)
        self.generator = torch.Generator().manual_seed(seed)

    def add_rollout(self, rollout: RolloutBatch) -> int:
        """Put a rollout's transitions in the replay (fitting the critic's input statistics on the first one);
        returns how many rows it added."""
        rows = rollout_rows(rollout, self.policy, self.cfg.reward_scale)
        if self.critic.needs_input_stats:
            self.critic.fit_state_stats(rows["state"])
            self.target_critic.load_state_dict(self.critic.state_dict())
        self.replay.add(rows)
        return int(rows["reward"].shape[0])

    def update(self, n_steps: int) -> Dict[str, float]:
        """``n_steps`` gradient steps on replayed rows; returns the mean of each logged quantity."""
        logs: Dict[str, list] = {}
        for _ in range(n_steps):
            for k, v in self.step(self.replay.sample(self.cfg.batch_size, self.generator)).items():
                logs.setdefault(k, []).append(v)
        stats = {f"sac/{k}": float(np.mean(v)) for k, v in logs.items()}
        stats.update({"sac/alpha": self.log_alpha.exp().item(), "sac/replay_size": float(len(self.replay)),
                      "sac/prior_std": self.policy.prior_std().mean().item(), "sac/gradient_steps": float(n_steps)})
        return stats

    def step(self, b: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """One critic step and, after the warm-up, one actor and alpha step on the rows ``b``."""
        cfg, alpha = self.cfg, self.log_alpha.exp().detach()
        with torch.no_grad():
            next_x0, next_kl = self.policy.rsample(b["next_features"])
            next_q = torch.min(*self.target_critic(b["next_state"], next_x0)) - alpha * next_kl
            target = b["reward"] + cfg.gamma * (1 - b["done"]) * next_q
        q1, q2 = self.critic(b["state"], b["x0"].view(-1, *next_x0.shape[1:]))
        critic_loss = (q1 - target).square().mean() + (q2 - target).square().mean()
        self._step(critic_loss, self.critic_optimizer, self.critic.parameters(), "critic loss")
        out = {"critic_loss": critic_loss.item(), "q": q1.mean().item()}
        if len(self.replay) >= cfg.warmup_transitions:
            x0, kl = self.policy.rsample(b["features"])
            self.critic.requires_grad_(False)
            actor_loss = (alpha * kl - torch.min(*self.critic(b["state"], x0))).mean()
            self.critic.requires_grad_(True)
            self._step(actor_loss, self.actor_optimizer, self.policy.head_parameters(), "actor loss")
            self.policy.base.noise_prior.project_log_std_()
            alpha_loss = -(self.log_alpha * (kl.detach() - self.cfg.target_kl)).mean()
            self._step(alpha_loss, self.alpha_optimizer, [self.log_alpha], "alpha loss")
            out.update(actor_loss=actor_loss.item(), kl_to_bc=kl.mean().item())
        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.target_critic.parameters()):
                tp.lerp_(p, cfg.tau)
        return out

    def _step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params, name: str) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite SAC {name}; no optimizer step was taken for it")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(list(params), self.cfg.max_grad_norm)
        optimizer.step()

    def state_dict(self) -> Dict[str, Any]:
        """Optimizers, alpha and the target critic (the replay is not saved: a resumed run refills it)."""
        return {"actor_optimizer": self.actor_optimizer.state_dict(), "critic_optimizer": self.critic_optimizer.state_dict(),
                "alpha_optimizer": self.alpha_optimizer.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
                "target_critic": self.target_critic.state_dict(), "config": asdict(self.cfg)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("actor_optimizer", "critic_optimizer", "alpha_optimizer"):
            getattr(self, name).load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.target_critic.load_state_dict(state["target_critic"])
