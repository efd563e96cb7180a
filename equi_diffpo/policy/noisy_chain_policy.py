"""Noisy Euler chain for PPO (ReinFlow-style, exact log-probs), optionally with a learned noise prior.

Each of the ``K = num_inference_steps`` Euler steps of the pretrained flow becomes a Gaussian transition

    x_0 ~ N(0, I) (or the learned prior),   x_{k+1} = x_k + v(x_k, t_k, dt, cond) dt + sigma_k * eps,

with ``sigma_k = sigma(x_k, t_k, cond)`` from a small learned noise head, per (time, dim) entry and bounded
in ``[sigma_min, sigma_max]`` (normalized action units). The whole chain is stored, so the log-prob of the
sampled chunk under the current parameters is a sum of Gaussian log-densities: exact and cheap, no ODE
likelihood. PPO tunes the velocity net (``policy_lr``) and the noise head (``head_lr``).

What the log-prob covers (the PPO ratio uses exactly this):
  * the ``K`` stochastic transitions, plus the prior term of ``x_0`` when the prior is learned;
  * only the executed slice of each transition, time indices ``n_obs_steps-1 : n_obs_steps-1+n_action_steps``
    and all action dims: the other predicted steps never reach the environment. Each transition's mean
    still depends on the full previous state ``x_k`` (stored), so this is the conditional density of the
    executed coordinates given the chain;
  * summed over transitions and dims; ``normalize_by_dims=True`` divides by the number of terms
    (ReinFlow's normalization).

The chain (``x_K`` included) is stored unclamped; the executed action is ``decode_actions(x_K)``, which
clamps with ``clip_sample``. Deterministic mode drops the noise and reproduces ``predict_action`` exactly.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from equi_diffpo.model.velocity_net import SinusoidalEmbedding
from equi_diffpo.policy.latent_noise_policy import LatentNoisePolicy
from equi_diffpo.policy.rl_policy_base import FlowPolicy, LogProbResult, RLPolicyBase, RLSample, gaussian_terms


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
        """``x`` ``(B, horizon, Da)``, ``cond`` ``(B, cond_dim)`` (the policy's ``cond_features``)."""
        t_emb = self.time_embed(torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
        raw = self.net(torch.cat([x.flatten(1), t_emb, cond], dim=-1)).view_as(x)
        return self.sigma_min + (self.sigma_max - self.sigma_min) * torch.sigmoid(raw)


class NoisyChainPolicy(LatentNoisePolicy):
    """The latent policy's prior machinery (optional here) plus a noise head on every Euler step;
    the velocity net trains. ``state_dict`` = ``base.*`` + ``noise_head.*`` (+ ``chunk_log_std``)."""

    def __init__(self, base_policy: FlowPolicy, sigma_min: float = 0.08, sigma_max: float = 0.14,
                 noise_hidden: int = 128, normalize_by_dims: bool = False, learn_noise_prior: bool = False,
                 noise_prior_hidden: int = 256, noise_prior_std_min: float = 0.1,
                 noise_prior_chunk_shift: bool = False, noise_prior_chunk_std: float = 0.0):
        """``sigma_min``/``sigma_max``: bounds of the learned per-step noise; ``normalize_by_dims``: divide
        the log-prob by its number of terms; ``learn_noise_prior`` (+ the ``noise_prior_*`` keys, as for
        :class:`LatentNoisePolicy`): make ``x_0`` a policy transition too."""
        RLPolicyBase.__init__(self, base_policy)
        self._setup_prior(learn_noise_prior, noise_prior_hidden, noise_prior_std_min, noise_prior_chunk_shift,
                          noise_prior_chunk_std)
        self.normalize_by_dims = bool(normalize_by_dims)
        self.noise_head = NoiseHead(base_policy.horizon, base_policy.action_dim, base_policy.cond_dim,
                                    int(noise_hidden), sigma_min, sigma_max)

    def head_parameters(self) -> List[nn.Parameter]:
        """Noise head + (learned) prior: zero-initialised, trained at ``head_lr``."""
        return list(self.noise_head.parameters()) + super().head_parameters()

    def _transition(self, x: torch.Tensor, k: int, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and sigma ``(B, horizon, Da)`` of ``p(x_{k+1} | x_k)``."""
        return (self.base.euler_mean(x, k, cond),
                self.noise_head(x, k * self.base.step_size(), self.base.cond_features(cond)))

    def _normalizer_count(self) -> int:
        if not self.normalize_by_dims:
            return 1
        n_exec = self.exec_slice.stop - self.exec_slice.start
        prior_dims = self.base.horizon * self.base.action_dim if self.base.noise_prior is not None else 0
        return self.num_steps * n_exec * self.base.action_dim + prior_dims

    @torch.no_grad()
    def sample_actions(self, obs_dict: Dict[str, torch.Tensor], deterministic: bool = False,
                       noise: torch.Tensor | None = None,
                       generators: Sequence[torch.Generator] | None = None) -> RLSample:
        """Roll the chain (see :meth:`LatentNoisePolicy.sample_actions`; per row, the chain noise is drawn
        after ``x_0``). Deterministic mode sets ``x_{k+1}`` to the transition mean; its ``log_prob`` is still
        that chain's density under the stochastic policy."""
        cond = self.encode_obs(obs_dict)
        x = self.initial_chain_state(cond, deterministic, noise, generators)
        chain, log_prob = [x], self.prior_terms(x, cond)[0]
        s = self.exec_slice
        for k in range(self.num_steps):
            mean, sigma = self._transition(x, k, cond)
            x = mean if deterministic else mean + sigma * self.draw(cond, generators, *mean.shape[1:])
            log_prob = log_prob + gaussian_terms(x[:, s], mean[:, s], sigma[:, s])[0]
            chain.append(x)
        return RLSample(action=self.base.decode_actions(x)["action"], chains=torch.stack(chain, dim=1),
                        log_prob=log_prob / self._normalizer_count(), cond=cond)

    def get_log_prob(self, obs_dict: Dict[str, torch.Tensor], chains: torch.Tensor,
                     cond: torch.Tensor | None = None) -> LogProbResult:
        """Log-prob and entropy ``(B,)`` of stored ``chains`` ``(B, K+1, horizon, Da)``; differentiable wrt the
        encoder, velocity net, noise head and prior."""
        if cond is None:
            cond = self.encode_obs(obs_dict)
        prior = super().get_log_prob(obs_dict, chains, cond)
        chains = chains.to(cond.device)
        log_prob, entropy = prior.log_prob, prior.entropy
        s = self.exec_slice
        # Same per-step computation as sample_actions, so an unchanged policy gives a ratio of 1.
        for k in range(self.num_steps):
            mean, sigma = self._transition(chains[:, k].contiguous(), k, cond)
            step_log_prob, step_entropy = gaussian_terms(chains[:, k + 1, s], mean[:, s], sigma[:, s])
            log_prob, entropy = log_prob + step_log_prob, entropy + step_entropy
        count = self._normalizer_count()
        return LogProbResult(log_prob=log_prob / count, entropy=entropy / count)
