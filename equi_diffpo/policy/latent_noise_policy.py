"""Latent-noise policy for PPO (DSRL's idea: steer a frozen diffusion/flow policy through its noise).

The pretrained flow stays frozen; the policy is its starting noise, made observation-conditioned:

    x_0 ~ N(mu(cond), std^2)  (:class:`~equi_diffpo.model.noise_prior.ConditionalNoisePrior`, on ``base``),
    a = flow(x_0)             (the base's deterministic K-step Euler sampler).

At the start ``mu = 0`` and ``std = 1``: exactly the BC policy. The log-prob is the prior's density of the
stored ``x_0`` (``horizon * Da`` well-conditioned terms at std ~1), so its samples are exactly what
evaluation draws and the velocity net, which gets no gradient, is frozen.

Chunk-shared exploration in ``x_0`` (``noise_prior_chunk_std`` > 0): rollouts add ``chunk_std * eta``,
``eta ~ N(0, I_Da)`` drawn once per chunk and shared by all its time steps, so each action dim's ``x_0``
column is ``N(mu_d, diag(std_d^2) + chunk_std_d^2 1 1^T)``. Why: with i.i.d. noise per (time, dim) entry a
chunk-wide correction (on lift_d0, lower the gripper for the whole grasp) is explored only through the
average of 16 independent draws, and the policy gradient for it is at noise level per batch
(``scripts/diagnose_policy_gradient.py``); temporally correlated exploration ("Pink Noise Is All You
Need", Eberhard et al. 2023) explores it directly. The log-prob stays exact (rank-one covariance);
evaluation (``predict_action``, deterministic mode) leaves the term out.

Stored chain ``(B, K+1, horizon, Da)``: ``x_0 .. x_K`` (``x_K`` unclamped; the executed action is
``decode_actions(x_K)``, which clamps with ``clip_sample``: part of the environment from PPO's view).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from equi_diffpo.policy.rl_policy_base import (FlowPolicy, LogProbResult, RLPolicyBase, RLSample,
                                               chunk_correlated_terms, gaussian_terms)


class LatentNoisePolicy(RLPolicyBase):
    """Gives ``base`` a learnable noise prior (kept if it already has one, e.g. when fine-tuning an RL
    checkpoint again) and trains only it (+ the chunk-shared exploration std)."""

    def __init__(self, base_policy: FlowPolicy, noise_prior_hidden: int = 256,
                 noise_prior_std_min: float = 0.1, noise_prior_chunk_shift: bool = True,
                 noise_prior_chunk_std: float = 0.5):
        """``noise_prior_*``: the prior's MLP width, std floor, one mean shift per action dim for the whole
        chunk (see :mod:`equi_diffpo.model.noise_prior`); ``noise_prior_chunk_std`` > 0: chunk-shared
        exploration std per action dim at the start (learnable)."""
        super().__init__(base_policy)
        self._setup_prior(True, noise_prior_hidden, noise_prior_std_min, noise_prior_chunk_shift, noise_prior_chunk_std)
        base_policy.velocity_net.requires_grad_(False)

    def _setup_prior(self, learn: bool, hidden: int, std_min: float, chunk_shift: bool, chunk_std: float) -> None:
        """Give ``base`` a learnable prior (``learn``; kept if it already has one) and the chunk-shared std."""
        base = self.base
        if base.residual_head is not None:
            raise ValueError("the checkpoint's policy has a residual head, which this method would ignore in its "
                             "rollouts: fine-tune it with rl_policy=residual")
        if learn:
            base.enable_noise_prior(hidden, std_min, chunk_shift)
        if not 0 <= chunk_std <= 1:
            raise ValueError(f"rl_policy.noise_prior_chunk_std must lie in [0, 1], got {chunk_std}")
        if chunk_std > 0 and base.noise_prior is None:
            raise ValueError("rl_policy.noise_prior_chunk_std > 0 explores x0: set rl_policy.learn_noise_prior=true")
        self.chunk_log_std = None
        if chunk_std > 0:
            self.chunk_log_std = nn.Parameter(torch.full((base.action_dim,), math.log(chunk_std)))

    def head_parameters(self) -> List[nn.Parameter]:
        """The noise prior and the chunk-shared std: they start at the BC prior and get ``head_lr``."""
        prior = list(self.base.noise_prior.parameters()) if self.base.noise_prior is not None else []
        return prior + ([self.chunk_log_std] if self.chunk_log_std is not None else [])

    def std_parameters(self) -> List[nn.Parameter]:
        """The prior's ``log_std`` (base class) and the chunk-shared exploration std."""
        return super().std_parameters() + ([self.chunk_log_std] if self.chunk_log_std is not None else [])

    @torch.no_grad()
    def project_parameters_(self) -> None:
        """The prior's box (base class) and the chunk-shared std's upper bound 1 (``chunk_std`` clamps it)."""
        super().project_parameters_()
        if self.chunk_log_std is not None:
            self.chunk_log_std.clamp_(max=0.0)

    @torch.no_grad()
    def diagnostics(self) -> Dict[str, float]:
        """The prior's std (base class) and the mean chunk-shared exploration std."""
        stats = super().diagnostics()
        if self.chunk_log_std is not None:
            stats["policy/chunk_std_mean"] = self.chunk_std().mean().item()
        return stats

    @property
    def num_steps(self) -> int:
        """K: Euler steps in a stored chain."""
        return self.base.num_inference_steps

    def chunk_std(self) -> torch.Tensor:
        """``(Da,)`` std of the chunk-shared ``x0`` exploration, at most 1 like the prior's own std."""
        return self.chunk_log_std.clamp(max=0.0).exp()

    def prior_terms(self, x0: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-density of ``x0`` ``(B, horizon, Da)`` and entropy under the learned prior, summed over the
        whole horizon (every entry reaches the executed actions through the velocity net) -> (B,), (B,);
        zeros without a prior (``N(0, I)`` has no parameters: it cancels in every ratio)."""
        if self.base.noise_prior is None:
            zeros = torch.zeros(x0.shape[0], device=x0.device)
            return zeros, zeros
        if self.chunk_log_std is None:
            return gaussian_terms(x0, *self.base.noise_prior_params(cond))
        return chunk_correlated_terms(x0, *self.base.noise_prior_params(cond), self.chunk_std())

    def initial_chain_state(self, cond: torch.Tensor, deterministic: bool, noise: torch.Tensor | None,
                            generators: Sequence[torch.Generator] | None) -> torch.Tensor:
        """``x_0`` ``(B, horizon, Da)``: the prior applied to ``noise`` (or a fresh draw), plus the chunk-shared
        exploration unless ``deterministic``. Draw order per row: ``x_0``, then the chunk-shared term."""
        horizon, action_dim = self.base.horizon, self.base.action_dim
        x = self.base.initial_noise(cond, noise if noise is not None else self.draw(cond, generators, horizon, action_dim))
        if self.chunk_log_std is not None and not deterministic:
            x = x + self.chunk_std() * self.draw(cond, generators, 1, action_dim)
        return x

    @torch.no_grad()
    def sample_actions(self, obs_dict: Dict[str, torch.Tensor], deterministic: bool = False,
                       noise: torch.Tensor | None = None,
                       generators: Sequence[torch.Generator] | None = None) -> RLSample:
        """obs_dict raw ``(B, To, ...)``; ``noise`` optional standard-normal draw behind ``x_0``
        ``(B, horizon, Da)``; ``generators`` optional, one per row. Deterministic mode leaves out the
        chunk-shared exploration (``x_0`` stays a prior draw, as in :meth:`predict_action`)."""
        cond = self.encode_obs(obs_dict)
        x = self.initial_chain_state(cond, deterministic, noise, generators)
        chain = [x]
        for k in range(self.num_steps):
            x = self.base.euler_mean(x, k, cond)
            chain.append(x)
        return RLSample(action=self.base.decode_actions(x)["action"], chains=torch.stack(chain, dim=1),
                        log_prob=self.prior_terms(chain[0], cond)[0], cond=cond)

    def get_log_prob(self, obs_dict: Dict[str, torch.Tensor], chains: torch.Tensor,
                     cond: torch.Tensor | None = None) -> LogProbResult:
        """Log-prob and entropy ``(B,)`` of stored ``chains`` ``(B, K+1, horizon, Da)``: the prior term of
        ``chains[:, 0]``. ``cond``: ``encode_obs(obs_dict)`` computed beforehand (``obs_dict`` then unread)."""
        if chains.shape[1] != self.num_steps + 1:
            raise ValueError(f"chains have {chains.shape[1] - 1} transitions, policy has K={self.num_steps}")
        if cond is None:
            cond = self.encode_obs(obs_dict)
        log_prob, entropy = self.prior_terms(chains[:, 0].to(cond.device), cond)
        return LogProbResult(log_prob=log_prob, entropy=entropy)
