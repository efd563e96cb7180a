"""GAE and the PPO update for a stochastic flow-chain policy, laid out like CleanRL's
ppo_continuous_action.py so it can be read top to bottom next to the paper.

The rollout side (collector/workspace) produces time-ordered chunk-level transitions, calls
`compute_gae`, packs everything into a `PPOBatch` and hands it to `PPOTrainer.update` once per RL
epoch, then calls `PPOTrainer.scheduler_step()`.

Contract with the actor: `policy.get_log_prob(obs_dict, chains, cond=None)` returns an object with
`log_prob` (B,) and `entropy` (B,), differentiable w.r.t. the policy parameters. The trainer does
not switch train/eval mode: the rollout log-probs must come from the same mode (no dropout), or
the ratio on the first minibatch is not 1. The critic is `critic(obs_dict, features=None) -> values (B,)`.

Frozen encoders are run once per batch, not once per minibatch (`PPOConfig.cache_features`): a policy
whose `obs_encoder_frozen` is True gets `cond = policy.encode_obs(obs)` computed up front (no grad,
in chunks) and passed to every `get_log_prob`; likewise a critic whose `obs_encoder_frozen` is True
gets `features = critic.encode_obs(obs)`, or the policy's `cond` itself if it `reads_policy_features`.
Both live in the `PPOBatch`, so minibatch indexing carries them. Modules without these attributes
(plain `get_log_prob(obs, chains)`, `critic(obs)`) are called as before. A batch whose `cond` is already
filled (the collector keeps the features the policy acted on, `RLSample.cond`) is not encoded at all.
lift_d0 defaults, idle 2-core CPU (693 chunk steps, 60 minibatches): update 15.0 s -> 1.9 s, of which 1.7 s
is the one encoder pass (scripts/bench_ppo_update.py), which the rollout's features then save too.

Multi-process (torchrun): do not wrap actor/critic in DDP (get_log_prob bypasses DDP's forward
hooks). When torch.distributed is initialized the trainer averages gradients across ranks itself,
before clipping, and keeps ranks in lock-step (same number of minibatches, averaged KL for early
stopping). Ranks must start from identical weights (the workspace broadcasts them).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn as nn


# ----------------------------------------------------------------------------- GAE
@dataclass
class GAEResult:
    advantages: torch.Tensor  # (T,)
    returns: torch.Tensor  # (T,) = advantages + values, the critic's regression target


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                terminated: torch.Tensor, episode_end: torch.Tensor,
                gamma: float, gae_lambda: float) -> GAEResult:
    """Generalized Advantage Estimation over time-ordered steps of one or more episodes.

    All inputs are 1-D of length T (episodes concatenated in time order).
    next_values[t] = V(s_{t+1}). terminated[t] = 1: s_{t+1} is terminal (success), so no bootstrap.
    episode_end[t] = 1: the episode ends after step t (terminated or truncated); it stops the
    recursion from leaking into the next episode, while a truncated step still bootstraps from
    next_values[t] because the episode was cut by the time limit, not by the MDP.
    """
    T = rewards.shape[0]
    for name, x in (("values", values), ("next_values", next_values),
                    ("terminated", terminated), ("episode_end", episode_end)):
        if x.shape != (T,):
            raise ValueError(f"compute_gae: {name} has shape {tuple(x.shape)}, expected ({T},)")
    rewards, values, next_values = rewards.float(), values.float(), next_values.float()
    nonterminal = 1.0 - terminated.float()
    not_episode_end = 1.0 - episode_end.float()
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * nonterminal[t] * next_values[t] - values[t]
        lastgaelam = delta + gamma * gae_lambda * not_episode_end[t] * lastgaelam
        advantages[t] = lastgaelam
    return GAEResult(advantages=advantages, returns=advantages + values)


# ----------------------------------------------------------------------------- batch
@dataclass
class PPOBatch:
    """One RL epoch of transitions, flattened over envs and time (leading dim B everywhere).

    obs: {'point_cloud': (B, To, N, C), 'agent_pos': (B, To, 9)}; chains: (B, K+1, H, Da), the
    sampled flow chain that get_log_prob scores; log_probs/values: (B,) from the rollout
    (pre-update "old" policy and critic); advantages/returns: (B,) from compute_gae.
    cond (B, cond_dim), or the DiT-X's tokens (B, L, D) / critic_features (B, F): frozen encoders' outputs, filled in by
    `PPOTrainer.update` (None: the module encodes `obs` itself in every minibatch).
    """
    obs: Dict[str, torch.Tensor]
    chains: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    cond: Optional[torch.Tensor] = None
    critic_features: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        B = len(self)
        for name in ("values", "advantages", "returns"):
            if getattr(self, name).shape != (B,):
                raise ValueError(f"PPOBatch.{name} has shape {tuple(getattr(self, name).shape)}, expected ({B},)")
        leading = [("chains", self.chains), ("cond", self.cond), ("critic_features", self.critic_features)]
        for name, x in leading + [(f"obs['{k}']", v) for k, v in self.obs.items()]:
            if x is not None and x.shape[0] != B:
                raise ValueError(f"PPOBatch.{name} has leading dim {x.shape[0]}, expected {B}")

    def __len__(self) -> int:
        return self.log_probs.shape[0]

    def _map(self, fn) -> "PPOBatch":
        opt = lambda x: None if x is None else fn(x)  # noqa: E731
        return PPOBatch(obs={k: fn(v) for k, v in self.obs.items()}, chains=fn(self.chains),
                        log_probs=fn(self.log_probs), values=fn(self.values),
                        advantages=fn(self.advantages), returns=fn(self.returns),
                        cond=opt(self.cond), critic_features=opt(self.critic_features))

    def to(self, device: torch.device | str) -> "PPOBatch":
        return self._map(lambda x: x.to(device))

    def index(self, idx: torch.Tensor) -> "PPOBatch":
        """Minibatch view: idx is a LongTensor of row indices."""
        return self._map(lambda x: x[idx])


# ----------------------------------------------------------------------------- config
LR_SCHEDULES = ("constant", "cosine", "linear")
NEGATIVE_ADVANTAGES = ("clip", "spo", "zero")


@dataclass
class PPOConfig:
    """Keys of `rl_training.ppo_trainer.*`. Build from hydra with `PPOConfig.from_dict`, which
    rejects typos by name."""
    clip_ratio: float = 0.2
    ppo_epochs: int = 4
    mini_batch_size: int = 64
    gamma: float = 0.99
    gae_lambda: float = 0.95
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    clip_value_loss: bool = True
    value_clip: Optional[float] = None  # None: reuse clip_ratio (CleanRL's clip_vloss)
    max_grad_norm: Optional[float] = 1.0  # None: no clipping (norm still logged)
    target_kl: Optional[float] = None  # None: never stop early
    policy_lr: float = 1e-5
    # LR of the policy's freshly initialised heads (``policy.head_parameters()``: noise head, noise
    # prior). None: policy_lr. They start from zero, so at the pretrained nets' tiny LR they never move.
    head_lr: Optional[float] = None
    # LR of the learned x0 stds among the heads (``policy.std_parameters()``: the noise prior's per-entry
    # log-std, the chunk-shared exploration std). None: head_lr. Why separate: their PPO gradient is mostly
    # noise with a small steady bias (towards narrower x0 on lift_d0), so at head_lr they move ~0.03 in log
    # per 250k env steps while the prior's mean moves freely.
    std_lr: Optional[float] = None
    critic_lr: float = 1e-4
    weight_decay: float = 0.0
    critic_warmup_epochs: int = 0
    lr_schedule: str = "constant"
    total_epochs: Optional[int] = None  # horizon of cosine/linear decay, in RL epochs (warm-up included)
    norm_advantages: bool = True
    # The surrogate for samples with A < 0 (after normalization); A >= 0 always uses PPO's clipped one.
    #   clip: PPO's clipped surrogate.
    #   spo:  FPO++'s asymmetric trust region (Yi, Choi et al. 2026), r*A - |A|/(2*clip_ratio)*(r-1)^2: clipping
    #         only stops the push once a bad sample's ratio has left [1-eps, 1+eps]; SPO pulls it back, so bad
    #         chunks cannot drive a flow's CFM loss up without bound.
    #   zero: no gradient from them: the update only raises better-than-expected chunks (with fpo, advantage-
    #         weighted flow matching on them, as self-imitation learning does).
    negative_advantages: str = "clip"
    # Run a frozen policy/critic encoder once per batch instead of in every minibatch of every PPO
    # epoch (same numbers up to float rounding; false only to measure the difference).
    cache_features: bool = True

    def __post_init__(self) -> None:
        if self.negative_advantages not in NEGATIVE_ADVANTAGES:
            raise ValueError(f"negative_advantages={self.negative_advantages!r}; valid: {NEGATIVE_ADVANTAGES}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}; valid: {LR_SCHEDULES}")
        if self.lr_schedule != "constant" and not (self.total_epochs and self.total_epochs > 0):
            raise ValueError(f"lr_schedule={self.lr_schedule!r} needs total_epochs > 0")
        if self.clip_ratio <= 0 or self.ppo_epochs < 1 or self.mini_batch_size < 1:
            raise ValueError("need clip_ratio > 0, ppo_epochs >= 1, mini_batch_size >= 1")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.gae_lambda <= 1.0):
            raise ValueError("gamma and gae_lambda must lie in [0, 1]")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError("target_kl must be > 0 or None (no early stop)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PPOConfig":
        """From a dict/DictConfig; an unknown key (a typo in a hydra override) is an error that
        names it. hydra's own `_target_` key is ignored."""
        valid = [f.name for f in dataclasses.fields(cls)]
        kwargs = {k: v for k, v in dict(values).items() if k != "_target_"}
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(f"unknown rl_training.ppo_trainer key(s) {unknown}; valid keys: {valid}")
        return cls(**kwargs)


def _lr_factor(schedule: str, total_epochs: Optional[int], epoch: int) -> float:
    """Multiplier of the base LR after `epoch` scheduler steps."""
    if schedule == "constant":
        return 1.0
    progress = min(epoch, total_epochs) / total_epochs
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- stats
@dataclass
class PPOStats:
    """Averages over the minibatches of one `update`. Policy fields are None during critic
    warm-up (the policy is not evaluated then)."""
    value_loss: float
    explained_variance: float  # of the rollout values w.r.t. the returns (CleanRL)
    policy_lr: float
    critic_lr: float
    advantages_mean: float  # before normalization
    advantages_std: float
    returns_mean: float
    returns_std: float
    ppo_minibatches: int  # policy optimizer steps taken (critic steps during warm-up)
    critic_steps: int  # critic optimizer steps (all minibatches: the KL stop does not stop the critic)
    early_stopped: bool
    critic_warmup: bool
    policy_loss: Optional[float] = None
    entropy: Optional[float] = None
    approx_kl: Optional[float] = None
    old_approx_kl: Optional[float] = None
    clipfrac: Optional[float] = None
    policy_grad_norm: Optional[float] = None  # before clipping
    critic_grad_norm: Optional[float] = None  # None only if early-stopped before any step
    # max |ratio - 1| on the first minibatch of the first PPO epoch: 0 unless the stored
    # log-probs disagree with get_log_prob (sampler/scorer mismatch, dropout, stale weights).
    first_minibatch_ratio_max_dev: Optional[float] = None

    _GROUPS = {"policy_lr": "charts", "critic_lr": "charts", "advantages_mean": "charts",
               "advantages_std": "charts", "returns_mean": "charts", "returns_std": "charts",
               "critic_warmup": "charts", "ppo_minibatches": "perf",
               "critic_steps": "perf"}

    def as_dict(self) -> Dict[str, float]:
        """CleanRL-style metric names (`losses/...`, `charts/...`, `perf/...`), None fields left out."""
        return {f"{self._GROUPS.get(k, 'losses')}/{k}": float(v)
                for k, v in dataclasses.asdict(self).items() if v is not None}


# ----------------------------------------------------------------------------- distributed
def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_mean_(x: torch.Tensor) -> torch.Tensor:
    if _is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def all_reduce_gradients(params: List[nn.Parameter]) -> None:
    """Average gradients over ranks in one flat all-reduce (a no-op in a single process).
    Missing grads count as zeros so every rank reduces the same buffer."""
    if not _is_distributed():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _all_reduce_mean_(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for p in params:
        p.grad = flat[offset: offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def _num_minibatches(batch_size: int, mini_batch_size: int) -> int:
    """ceil(B / mini_batch_size), maxed over ranks so all ranks take the same number of steps."""
    n = torch.tensor(float(math.ceil(batch_size / mini_batch_size)))
    if _is_distributed():
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
    if n > batch_size:
        raise ValueError(f"batch of {batch_size} cannot fill {int(n)} minibatches (another rank has more data)")
    return int(n)


# ----------------------------------------------------------------------------- trainer
def _check_finite(name: str, x: torch.Tensor, where: str) -> None:
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"non-finite {name} at {where}; no optimizer step was taken for it")


class PPOTrainer:
    """Clipped-surrogate PPO with separate AdamW optimizers/LR schedules for actor and critic."""

    def __init__(self, policy: nn.Module, critic: nn.Module, config: PPOConfig | Mapping[str, Any]):
        self.policy, self.critic = policy, critic
        self.config = config if isinstance(config, PPOConfig) else PPOConfig.from_dict(config)
        cfg = self.config
        self.policy_params = [p for p in policy.parameters() if p.requires_grad]
        self.critic_params = [p for p in critic.parameters() if p.requires_grad]
        if not self.policy_params or not self.critic_params:
            raise ValueError("policy and critic both need trainable parameters")
        if {id(p) for p in self.policy_params} & {id(p) for p in self.critic_params}:
            # Two optimizers stepping one tensor would double its update.
            raise ValueError("policy and critic share parameters; give the critic its own encoder")
        head_ids = {id(p) for p in getattr(policy, "head_parameters", lambda: [])()}
        # RL views put box-constrained parameters back after each step (RLPolicyBase.project_parameters_).
        self.project_policy_parameters = getattr(policy, "project_parameters_", lambda: None)
        policy_groups = [{"params": [p for p in self.policy_params if id(p) not in head_ids], "lr": cfg.policy_lr}]
        std_ids = ({id(p) for p in getattr(policy, "std_parameters", lambda: [])()}
                   if cfg.std_lr is not None else set())
        heads = [p for p in self.policy_params if id(p) in head_ids - std_ids]
        head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.policy_lr
        if heads:
            policy_groups.append({"params": heads, "lr": head_lr})
        stds = [p for p in self.policy_params if id(p) in std_ids]
        if stds:
            policy_groups.append({"params": stds, "lr": cfg.std_lr})
        self.policy_optimizer = torch.optim.AdamW(policy_groups, lr=cfg.policy_lr, weight_decay=cfg.weight_decay)
        self.critic_optimizer = torch.optim.AdamW(self.critic_params, lr=cfg.critic_lr, weight_decay=cfg.weight_decay)
        factor = lambda epoch: _lr_factor(cfg.lr_schedule, cfg.total_epochs, epoch)  # noqa: E731
        self.policy_scheduler = torch.optim.lr_scheduler.LambdaLR(self.policy_optimizer, factor)
        self.critic_scheduler = torch.optim.lr_scheduler.LambdaLR(self.critic_optimizer, factor)

    def update(self, batch: PPOBatch, epoch: int) -> PPOStats:
        """ppo_epochs passes of shuffled minibatches over `batch`; `epoch` is the RL epoch (it
        decides critic warm-up and labels errors)."""
        cfg = self.config
        device = next(iter(self.policy_params)).device
        b = batch.to(device)
        for name in ("log_probs", "values", "advantages", "returns"):
            _check_finite(f"batch {name}", getattr(b, name), f"RL epoch {epoch} (check rewards/values)")
        if cfg.cache_features:
            b = self.encode_frozen(b)
        else:   # the code before the cache (benchmarks only): every minibatch encodes its obs again
            b = dataclasses.replace(b, cond=None, critic_features=None)
        if getattr(self.policy, "defers_log_prob", False):
            b = self.score_rollout(b)
        warmup = epoch < cfg.critic_warmup_epochs
        value_clip = cfg.value_clip if cfg.value_clip is not None else cfg.clip_ratio
        max_grad_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        n_minibatches = _num_minibatches(len(b), cfg.mini_batch_size)
        logs: Dict[str, List[float]] = {}
        first_ratio_dev: Optional[float] = None
        early_stopped = False

        # The target-KL stop freezes only the actor: the critic keeps fitting the returns for all
        # ppo_epochs (stopping it too left the critic at explained variance < 0.1 on lift_d0,
        # because the stop usually fires within the first PPO epoch).
        policy_active = not warmup
        for ppo_epoch in range(cfg.ppo_epochs):
            b_inds = torch.randperm(len(b), device=device)
            for mb_i, mb_inds in enumerate(torch.tensor_split(b_inds, n_minibatches)):
                where = f"RL epoch {epoch}, PPO epoch {ppo_epoch}, minibatch {mb_i}"
                mb = b.index(mb_inds)

                # Value loss (clipped like CleanRL: the new value may not move further than
                # value_clip from the rollout value to earn a lower loss).
                if mb.critic_features is not None:
                    newvalue = self.critic(mb.obs, features=mb.critic_features).reshape(-1)
                else:
                    newvalue = self.critic(mb.obs).reshape(-1)
                v_loss_unclipped = (newvalue - mb.returns) ** 2
                if cfg.clip_value_loss:
                    v_clipped = mb.values + torch.clamp(newvalue - mb.values, -value_clip, value_clip)
                    v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - mb.returns) ** 2).mean()
                else:
                    v_loss = 0.5 * v_loss_unclipped.mean()
                _check_finite("value_loss", v_loss, where)
                loss = cfg.value_coef * v_loss
                logs.setdefault("value_loss", []).append(v_loss.item())

                if policy_active:
                    pg_loss, approx_kl, ratio_dev = self._policy_loss(mb, where, logs)
                    if first_ratio_dev is None:
                        first_ratio_dev = ratio_dev
                    # Stop the actor before stepping: this minibatch shows it already left the trust region.
                    if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                        early_stopped, policy_active = True, False
                    else:
                        loss = loss + pg_loss

                self.policy_optimizer.zero_grad(set_to_none=True)
                self.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._clip_and_step(self.critic_params, self.critic_optimizer, max_grad_norm, "critic", where, logs)
                if policy_active:
                    self._clip_and_step(self.policy_params, self.policy_optimizer, max_grad_norm, "policy", where, logs)
                    self.project_policy_parameters()

        mean = lambda k: sum(logs[k]) / len(logs[k]) if logs.get(k) else None  # noqa: E731
        var_y = b.returns.var(correction=0)
        explained_var = (1 - (b.returns - b.values).var(correction=0) / var_y).item() if var_y > 0 else math.nan
        return PPOStats(
            value_loss=mean("value_loss"), explained_variance=explained_var,
            critic_grad_norm=mean("critic_grad_norm"),
            policy_lr=self.policy_optimizer.param_groups[0]["lr"],
            critic_lr=self.critic_optimizer.param_groups[0]["lr"],
            advantages_mean=b.advantages.mean().item(), advantages_std=b.advantages.std(correction=0).item(),
            returns_mean=b.returns.mean().item(), returns_std=b.returns.std(correction=0).item(),
            ppo_minibatches=len(logs.get("critic_grad_norm" if warmup else "policy_grad_norm", [])),
            critic_steps=len(logs.get("critic_grad_norm", [])), early_stopped=early_stopped, critic_warmup=warmup,
            policy_loss=mean("policy_loss"), entropy=mean("entropy"), approx_kl=mean("approx_kl"),
            old_approx_kl=mean("old_approx_kl"), clipfrac=mean("clipfrac"),
            policy_grad_norm=mean("policy_grad_norm"), first_minibatch_ratio_max_dev=first_ratio_dev)

    @torch.no_grad()
    def encode_frozen(self, batch: PPOBatch) -> PPOBatch:
        """`batch` with `cond`/`critic_features` filled in for each of policy/critic whose
        `obs_encoder_frozen` is True (and not given yet). Encoded in chunks of `mini_batch_size`
        rows: the activations of (B, To, N, hidden) point clouds would not fit in memory at once."""
        def encode(module: nn.Module) -> Optional[torch.Tensor]:
            if not getattr(module, "obs_encoder_frozen", False):
                return None
            chunks = torch.split(torch.arange(len(batch), device=batch.log_probs.device), self.config.mini_batch_size)
            return torch.cat([module.encode_obs({k: v[idx] for k, v in batch.obs.items()}) for idx in chunks])
        cond = batch.cond if batch.cond is not None else encode(self.policy)
        features = batch.critic_features
        if features is None:
            # A critic on the policy's features (critic.encoder=policy) needs no second pass.
            features = cond if getattr(self.critic, "reads_policy_features", False) and cond is not None \
                else encode(self.critic)
        return dataclasses.replace(batch, cond=cond, critic_features=features)

    @torch.no_grad()
    def score_rollout(self, batch: PPOBatch) -> PPOBatch:
        """`batch` with `log_probs` computed now, before any optimizer step (so by the weights that sampled
        it), for a policy that ``defers_log_prob`` (its rollout left placeholders; see fpo_rl_policy.py).
        In chunks of `mini_batch_size` rows, on the cached `cond` when there is one."""
        rows = torch.split(torch.arange(len(batch), device=batch.log_probs.device), self.config.mini_batch_size)
        scores = []
        for idx in rows:
            mb = batch.index(idx)
            cond = {"cond": mb.cond} if mb.cond is not None else {}
            scores.append(self.policy.get_log_prob(mb.obs, mb.chains, **cond).log_prob)
        log_probs = torch.cat(scores)
        _check_finite("rollout log_probs", log_probs, "scoring the rollout batch")
        return dataclasses.replace(batch, log_probs=log_probs)

    def _policy_loss(self, mb: PPOBatch, where: str,
                     logs: Dict[str, List[float]]) -> tuple[torch.Tensor, float, float]:
        """Clipped surrogate (minus the entropy bonus) of one minibatch, its approx KL (averaged
        over ranks, for the early stop) and max |ratio - 1|. Logs the policy metrics."""
        cfg = self.config
        if mb.cond is not None:
            result = self.policy.get_log_prob(mb.obs, mb.chains, cond=mb.cond)
        else:
            result = self.policy.get_log_prob(mb.obs, mb.chains)
        logratio = result.log_prob - mb.log_probs
        ratio = logratio.exp()
        with torch.no_grad():
            # http://joschu.net/blog/kl-approx.html
            old_approx_kl = (-logratio).mean()
            approx_kl = _all_reduce_mean_(((ratio - 1) - logratio).mean())
            clipfrac = ((ratio - 1.0).abs() > cfg.clip_ratio).float().mean()
        advantages = mb.advantages
        if cfg.norm_advantages:
            # Population std: a 1-sample minibatch gives 0 instead of NaN.
            advantages = (advantages - advantages.mean()) / (advantages.std(correction=0) + 1e-8)
        pg_loss1 = -advantages * ratio
        pg_loss2 = -advantages * torch.clamp(ratio, 1 - cfg.clip_ratio, 1 + cfg.clip_ratio)
        pg_loss = torch.max(pg_loss1, pg_loss2)
        if cfg.negative_advantages == "spo":
            spo = -(advantages * ratio - advantages.abs() / (2 * cfg.clip_ratio) * (ratio - 1).square())
            pg_loss = torch.where(advantages >= 0, pg_loss, spo)
        elif cfg.negative_advantages == "zero":
            pg_loss = torch.where(advantages >= 0, pg_loss, torch.zeros_like(pg_loss))
        pg_loss = pg_loss.mean()
        entropy = result.entropy.mean()
        _check_finite("policy_loss", pg_loss, where)
        _check_finite("entropy", entropy, where)
        for k, v in (("policy_loss", pg_loss), ("entropy", entropy), ("approx_kl", approx_kl),
                     ("old_approx_kl", old_approx_kl), ("clipfrac", clipfrac)):
            logs.setdefault(k, []).append(v.item())
        return pg_loss - cfg.entropy_coef * entropy, approx_kl.item(), (ratio - 1.0).abs().max().item()

    @staticmethod
    def _clip_and_step(params: List[nn.Parameter], optimizer: torch.optim.Optimizer, max_grad_norm: float,
                       name: str, where: str, logs: Dict[str, List[float]]) -> None:
        all_reduce_gradients(params)  # before clipping, so every rank clips the same averaged gradient
        grad_norm = nn.utils.clip_grad_norm_(params, max_grad_norm)
        _check_finite(f"{name} gradient norm", grad_norm, where)
        optimizer.step()
        logs.setdefault(f"{name}_grad_norm", []).append(grad_norm.item())

    def scheduler_step(self) -> None:
        """Advance both LR schedules; call once per RL epoch, after `update`. The schedule counts
        warm-up epochs too, so `total_epochs` is the run length in RL epochs."""
        with warnings.catch_warnings():
            # During critic warm-up the policy optimizer has not stepped yet; torch's
            # "scheduler before optimizer" warning is expected then and harmless for LambdaLR.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.policy_scheduler.step()
            self.critic_scheduler.step()

    def state_dict(self) -> Dict[str, Any]:
        return {"policy_optimizer": self.policy_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(),
                "policy_scheduler": self.policy_scheduler.state_dict(),
                "critic_scheduler": self.critic_scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = set(self.state_dict()) - set(state)
        if missing:
            raise KeyError(f"PPOTrainer state is missing {sorted(missing)}")
        for name in ("policy_optimizer", "critic_optimizer"):
            try:
                getattr(self, name).load_state_dict(state[name])
            except ValueError as err:  # torch: "... doesn't match the size of optimizer's group"
                raise ValueError(f"PPOTrainer.{name} state does not fit this run's trainable parameters: the "
                                 "checkpoint was made with another set of them (critic.encoder, "
                                 f"rl_training.finetune_obs_encoder, rl_policy.*?). {err}") from err
        self.policy_scheduler.load_state_dict(state["policy_scheduler"])
        self.critic_scheduler.load_state_dict(state["critic_scheduler"])
