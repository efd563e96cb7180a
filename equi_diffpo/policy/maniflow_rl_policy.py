"""Stochastic view of a ManiFlow policy for PPO (ReinFlow-style noisy flow chain, exact log-probs).

A pretrained :class:`ManiFlowPointcloudPolicy` integrates ``x_{k+1} = x_k + v(x_k, t_k) dt``. For RL
we turn each of the ``K = num_inference_steps`` Euler steps into a Gaussian transition

    x_0 ~ N(0, I),   x_{k+1} = x_k + v(x_k, t_k, dt, cond) dt + sigma_k * eps,   eps ~ N(0, I),

with ``sigma_k = sigma(x_k, t_k, cond)`` from a small learned noise head, per (time, dim) entry and
bounded in ``[sigma_min, sigma_max]`` (normalized action units). The whole chain is stored in the
rollout buffer, so the log-probability of the sampled chunk under the current parameters is a sum
of Gaussian log-densities: exact and cheap, no ODE likelihood needed.

With a learned noise prior (``rl_policy.learn_noise_prior``, see
:mod:`equi_diffpo.model.noise_prior`) the first link is a policy transition too:
``x_0 ~ N(mu(cond), std^2)``, identical to ``N(0, I)`` at the start of fine-tuning.

``chain_noise=False`` (needs the learned prior) keeps the K Euler steps deterministic: the policy
is then ``x_0 ~ N(mu, std^2)`` pushed through the frozen pretrained flow (DSRL's "latent-noise
policy"). Its log-prob is the prior term alone (``horizon * Da`` well-conditioned dims at std ~1
instead of ``K * n_exec * Da`` terms at sigma ~0.1), its samples are exactly what evaluation
draws, and the velocity net, which gets no gradient, is frozen.

Chunk-shared exploration in ``x_0`` (``rl_policy.noise_prior_chunk_std`` > 0): RL adds
``chunk_std * eta``, ``eta ~ N(0, I_Da)`` drawn once per chunk and shared by all its time steps, so each
action dim's ``x_0`` column is ``N(mu_d, diag(std_d^2) + chunk_std_d^2 1 1^T)``. Why: with i.i.d. noise
per (time, dim) entry a chunk-wide correction (on lift_d0, lower the gripper for the whole grasp) is
explored only through the average of 16 independent draws, and the policy gradient for it is at noise
level per batch (``scripts/diagnose_policy_gradient.py``); temporally correlated exploration (as in
"Pink Noise Is All You Need", Eberhard et al. 2023) explores it directly. The log-prob stays exact
(rank-one covariance); evaluation (``predict_action``, deterministic mode) leaves the term out.

What the log-prob covers (the PPO ratio uses exactly this):
  * the ``K`` stochastic transitions, plus ``log N(x_0; mu, std)`` over the whole horizon when the
    noise prior is learned; a fixed ``N(0, I)`` prior is left out (no parameters: it cancels in
    every ratio);
  * only the executed slice of each transition, time indices
    ``n_obs_steps-1 : n_obs_steps-1+n_action_steps`` and all action dims: the other predicted steps
    never reach the environment. Each transition's mean still depends on the full previous state
    ``x_k`` (stored), so this is the conditional density of the executed coordinates given the chain.
  * summed over transitions and dims; ``normalize_by_dims=True`` divides by the number of terms,
    ``K * n_exec * Da`` (+ ``horizon * Da`` for a learned prior), ReinFlow's normalization.

Clipping: the chain (including ``x_K``) is stored unclamped and the log-prob is of that stored chain;
the executed action is ``decode_actions(x_K)``, which clamps to [-1, 1] when the base policy has
``clip_sample`` (the clamp is then part of the environment from PPO's point of view). Deterministic
mode drops the noise term and reproduces the base policy's ``predict_action`` exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import torch
import torch.nn as nn
from torch.distributions import LowRankMultivariateNormal

from equi_diffpo.common.seeding import batched_randn
from equi_diffpo.model.velocity_net import SinusoidalEmbedding
from equi_diffpo.policy.maniflow_pointcloud_policy import ManiFlowPointcloudPolicy

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_terms(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal-Gaussian log-density of ``x`` and entropy, each ``(B, T, D)`` summed to ``(B,)``."""
    log_std = std.log()
    z = (x - mean) / std
    log_prob = (-0.5 * z.square() - log_std - _HALF_LOG_2PI).sum(dim=(1, 2))
    entropy = (0.5 + _HALF_LOG_2PI + log_std).sum(dim=(1, 2))
    return log_prob, entropy


def chunk_correlated_terms(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                           chunk_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-density of ``x`` and entropy, each ``(B, T, D)`` summed to ``(B,)``, when every action dim's
    column ``x[:, :, d]`` is ``N(mean_d, diag(std_d^2) + chunk_std_d^2 * 1 1^T)``: the i.i.d. noise plus
    one draw per dim shared by all ``T`` time steps. ``chunk_std`` ``(D,)``. Rank-one covariance, so
    ``LowRankMultivariateNormal`` evaluates it exactly in O(T)."""
    B, T, D = x.shape
    dist = LowRankMultivariateNormal(mean.transpose(1, 2), cov_factor=chunk_std.view(1, D, 1, 1).expand(B, D, T, 1),
                                     cov_diag=std.transpose(1, 2).square())
    return dist.log_prob(x.transpose(1, 2)).sum(-1), dist.entropy().sum(-1)


@dataclass
class RLSample:
    """``action`` (B, n_action_steps, Da) raw executed actions; ``chains`` (B, K+1, horizon, Da)
    normalized chain ``x_0 .. x_K``; ``log_prob`` (B,) of the chain (see module docstring)."""
    action: torch.Tensor
    chains: torch.Tensor
    log_prob: torch.Tensor


@dataclass
class LogProbResult:
    """``log_prob`` (B,) and ``entropy`` (B,) of the stochastic transitions, same slice/normalization."""
    log_prob: torch.Tensor
    entropy: torch.Tensor


class NoiseHead(nn.Module):
    """``sigma(x_k, t_k, cond)`` -> ``(B, horizon, Da)`` in ``[sigma_min, sigma_max]``.

    The last layer starts at zero, so every sigma starts at the middle of the range and the fine-
    tuning begins from a smooth, uniform exploration level.
    """

    def __init__(self, horizon: int, action_dim: int, cond_dim: int, hidden: int,
                 sigma_min: float, sigma_max: float, time_embed_dim: int = 32):
        super().__init__()
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.time_embed = SinusoidalEmbedding(time_embed_dim)
        out = nn.Linear(hidden, horizon * action_dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(
            nn.Linear(horizon * action_dim + time_embed_dim + cond_dim, hidden), nn.Mish(),
            nn.Linear(hidden, hidden), nn.Mish(), out)

    def forward(self, x: torch.Tensor, t: float, cond: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_embed(torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
        raw = self.net(torch.cat([x.flatten(1), t_emb, cond], dim=-1)).view_as(x)
        return self.sigma_min + (self.sigma_max - self.sigma_min) * torch.sigmoid(raw)


class ManiFlowRLPolicy(nn.Module):
    """Wraps (and trains) a pretrained base policy: reuses its ``obs_encoder``, ``velocity_net`` and
    ``normalizer``; adds ``noise_head`` (and ``base.noise_prior`` when asked). ``state_dict`` =
    ``base.*`` + ``noise_head.*``."""

    def __init__(self, base_policy: ManiFlowPointcloudPolicy, sigma_min: float = 0.08,
                 sigma_max: float = 0.14, noise_hidden: int = 128, normalize_by_dims: bool = False,
                 learn_noise_prior: bool = False, noise_prior_hidden: int = 256, noise_prior_std_min: float = 0.1,
                 noise_prior_chunk_shift: bool = False, chain_noise: bool = True,
                 noise_prior_chunk_std: float = 0.0):
        """``learn_noise_prior``: give the base policy a learnable ``x0`` distribution (kept if it
        already has one, e.g. when fine-tuning an RL checkpoint again). ``chain_noise=False``:
        deterministic Euler steps, only ``x0`` is explored (see the module docstring).
        ``noise_prior_chunk_std`` > 0 (needs the prior): exploration shared by the chunk's time steps,
        a learnable std per action dim starting at this value (see the module docstring)."""
        super().__init__()
        if not chain_noise and not learn_noise_prior:
            raise ValueError("rl_policy.chain_noise=false leaves no stochastic transition: "
                             "set rl_policy.learn_noise_prior=true (or chain_noise=true)")
        self.base = base_policy
        if learn_noise_prior:
            base_policy.enable_noise_prior(noise_prior_hidden, noise_prior_std_min, noise_prior_chunk_shift)
        if not 0 <= noise_prior_chunk_std <= 1:
            raise ValueError(f"rl_policy.noise_prior_chunk_std must lie in [0, 1], got {noise_prior_chunk_std}")
        if noise_prior_chunk_std > 0 and base_policy.noise_prior is None:
            raise ValueError("rl_policy.noise_prior_chunk_std > 0 explores x0: set rl_policy.learn_noise_prior=true")
        self.normalize_by_dims = bool(normalize_by_dims)
        self.chain_noise = bool(chain_noise)
        self._rl_config = dict(sigma_min=float(sigma_min), sigma_max=float(sigma_max),
                               noise_hidden=int(noise_hidden), normalize_by_dims=self.normalize_by_dims,
                               learn_noise_prior=bool(learn_noise_prior), noise_prior_hidden=int(noise_prior_hidden),
                               noise_prior_std_min=float(noise_prior_std_min),
                               noise_prior_chunk_shift=bool(noise_prior_chunk_shift), chain_noise=self.chain_noise,
                               noise_prior_chunk_std=float(noise_prior_chunk_std))
        self.chunk_log_std = None
        if noise_prior_chunk_std > 0:
            self.chunk_log_std = nn.Parameter(torch.full((base_policy.action_dim,), math.log(noise_prior_chunk_std)))
        self.noise_head = None
        if self.chain_noise:
            self.noise_head = NoiseHead(base_policy.horizon, base_policy.action_dim,
                                        base_policy.obs_encoder.output_dim, int(noise_hidden),
                                        sigma_min, sigma_max)
        else:
            base_policy.velocity_net.requires_grad_(False)
        start = base_policy.n_obs_steps - 1
        self.exec_slice = slice(start, start + base_policy.n_action_steps)

    def head_parameters(self) -> List[nn.Parameter]:
        """Parameters added for RL (noise head, noise prior): they start at zero output and get
        their own learning rate (``ppo_trainer.head_lr``)."""
        heads = [h for h in (self.noise_head, self.base.noise_prior) if h is not None]
        chunk = [self.chunk_log_std] if self.chunk_log_std is not None else []
        return [p for head in heads for p in head.parameters()] + chunk

    def get_rl_config(self) -> Dict[str, Any]:
        """The RL-specific ctor kwargs (the base's are in ``base.get_policy_config()``)."""
        return dict(self._rl_config)

    @property
    def num_steps(self) -> int:
        """K: number of stochastic transitions in a chain."""
        return self.base.num_inference_steps

    def normalize_obs(self, obs_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Raw obs -> normalized ``n_obs_steps`` frames (the critic's input)."""
        return self.base.normalize_obs(obs_dict)

    def predict_action(self, obs_dict: Dict[str, torch.Tensor],
                       noise: torch.Tensor | None = None) -> Dict[str, torch.Tensor]:
        """Deterministic actions (evaluation), identical to the base policy's."""
        return self.base.predict_action(obs_dict, noise)

    def _transition(self, x: torch.Tensor, k: int, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and sigma ``(B, horizon, Da)`` of ``p(x_{k+1} | x_k)``."""
        mean = self.base.euler_mean(x, k, cond)
        sigma = self.noise_head(x, k * self.base.step_size(), cond)
        return mean, sigma

    def _slice_terms(self, x_next: torch.Tensor, mean: torch.Tensor,
                     sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian log-density of ``x_next`` and entropy, summed over the executed slice -> (B,), (B,)."""
        s = self.exec_slice
        return gaussian_terms(x_next[:, s], mean[:, s], sigma[:, s])

    def _prior_terms(self, x0: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-density of ``x0`` ``(B, horizon, Da)`` and entropy under the learned noise prior,
        summed over the whole horizon (every entry of ``x0`` reaches the executed actions through
        the velocity net) -> (B,), (B,); zeros without a prior (``N(0, I)`` has no parameters)."""
        if self.base.noise_prior is None:
            zeros = torch.zeros(x0.shape[0], device=x0.device)
            return zeros, zeros
        if self.chunk_log_std is None:
            return gaussian_terms(x0, *self.base.noise_prior(cond))
        return chunk_correlated_terms(x0, *self.base.noise_prior(cond), self.chunk_std())

    def chunk_std(self) -> torch.Tensor:
        """``(Da,)`` std of the chunk-shared ``x0`` exploration, at most 1 like the prior's own std."""
        return self.chunk_log_std.clamp(max=0.0).exp()

    def _normalizer_count(self) -> int:
        if not self.normalize_by_dims:
            return 1
        n_exec = self.exec_slice.stop - self.exec_slice.start
        prior_dims = self.base.horizon * self.base.action_dim if self.base.noise_prior is not None else 0
        chain_dims = self.num_steps * n_exec * self.base.action_dim if self.chain_noise else 0
        return chain_dims + prior_dims

    @torch.no_grad()
    def sample_actions(self, obs_dict: Dict[str, torch.Tensor], deterministic: bool = False,
                       noise: torch.Tensor | None = None,
                       generators: Sequence[torch.Generator] | None = None) -> RLSample:
        """Roll the chain. obs_dict: raw ``(B, To, ...)``; ``noise`` optional ``x_0`` ``(B, horizon, Da)``;
        ``generators`` optional, one per row: every random draw of row ``i`` (``x_0`` unless given, the
        chunk-shared exploration, the chain noise) comes from ``generators[i]`` (reproducible rollouts,
        :mod:`equi_diffpo.common.seeding`), else from the global RNG.

        Deterministic mode sets ``x_{k+1}`` to the transition mean and leaves out the chunk-shared ``x0``
        exploration (its ``log_prob`` is still the density of that chain under the stochastic policy,
        so it is well defined); ``x0`` itself stays a prior draw, as in :meth:`predict_action`.
        """
        cond = self.base.encode_obs(obs_dict)
        draw = lambda *shape: batched_randn(shape, cond.shape[0], cond.device, generators, cond.dtype)  # noqa: E731
        horizon, action_dim = self.base.horizon, self.base.action_dim
        x = self.base.initial_noise(cond, noise if noise is not None else draw(horizon, action_dim))
        if self.chunk_log_std is not None and not deterministic:
            x = x + self.chunk_std() * draw(1, action_dim)
        chain, log_prob = [x], self._prior_terms(x, cond)[0]
        for k in range(self.num_steps):
            if self.chain_noise:
                mean, sigma = self._transition(x, k, cond)
                x = mean if deterministic else mean + sigma * draw(horizon, action_dim)
                log_prob = log_prob + self._slice_terms(x, mean, sigma)[0]
            else:
                x = self.base.euler_mean(x, k, cond)
            chain.append(x)
        action = self.base.decode_actions(x)["action"]
        return RLSample(action=action, chains=torch.stack(chain, dim=1),
                        log_prob=log_prob / self._normalizer_count())

    @property
    def obs_encoder_frozen(self) -> bool:
        """True when no encoder parameter is trained: ``encode_obs`` is then a constant function of the
        obs, so the PPO trainer encodes a batch once and passes ``cond`` to every ``get_log_prob``."""
        return not any(p.requires_grad for p in self.base.obs_encoder.parameters())

    def encode_obs(self, obs_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw obs -> conditioning ``cond`` ``(B, cond_dim)`` (normalized by the policy's normalizer)."""
        return self.base.encode_obs(obs_dict)

    def get_log_prob(self, obs_dict: Dict[str, torch.Tensor], chains: torch.Tensor,
                     cond: torch.Tensor | None = None) -> LogProbResult:
        """Log-prob and entropy of stored ``chains`` ``(B, K+1, horizon, Da)`` under the current
        parameters; differentiable wrt the encoder, velocity net and noise head. obs_dict is raw.
        ``cond`` ``(B, cond_dim)``: ``encode_obs(obs_dict)`` computed beforehand, e.g. once per PPO batch
        while ``obs_encoder_frozen``; ``obs_dict`` is then not read."""
        if chains.shape[1] != self.num_steps + 1:
            raise ValueError(f"chains have {chains.shape[1] - 1} transitions, policy has K={self.num_steps}")
        if cond is None:
            cond = self.encode_obs(obs_dict)
        chains = chains.to(cond.device)
        log_prob, entropy = self._prior_terms(chains[:, 0], cond)
        # Same per-step computation as sample_actions, so an unchanged policy gives a ratio of 1.
        for k in range(self.num_steps if self.chain_noise else 0):
            mean, sigma = self._transition(chains[:, k].contiguous(), k, cond)
            step_log_prob, step_entropy = self._slice_terms(chains[:, k + 1], mean, sigma)
            log_prob = log_prob + step_log_prob
            entropy = entropy + step_entropy
        count = self._normalizer_count()
        return LogProbResult(log_prob=log_prob / count, entropy=entropy / count)
