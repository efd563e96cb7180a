"""Residual policy for PPO (ResiP: Ankile et al. 2024, "From Imitation to Refinement -- Residual RL for
Precise Assembly"): the frozen BC flow proposes, a small Gaussian residual corrects.

The pretrained :class:`ManiFlowPointcloudPolicy` produces its action chunk exactly as in BC evaluation
(``x0`` from its prior, deterministic Euler flow, normalized units). A
:class:`~equi_diffpo.model.residual_head.ResidualHead` living on the base policy (so evaluation and
checkpoints carry it, like the noise prior) adds a per-step correction to the executed steps only:

    a_exec[t] = a_bc[t] + scale * r[t],   r ~ N(mu(cond, a_bc), diag(std^2)),   t in the executed slice.

Stored chain ``(B, 2, horizon, Da)``: ``[0]`` the BC chunk (what the residual conditions on), ``[1]``
the executed chunk (BC + scaled residual on the executed slice, BC elsewhere), both unclamped; the
executed action is ``decode_actions(chains[:, 1])`` (clamped with ``clip_sample``, which PPO then sees
as part of the environment). The log-prob is the diagonal-Gaussian density of ``r`` over the
``n_action_steps x Da`` executed entries, in the residual's own units (the ``-log(scale)`` Jacobian
per entry is a constant that cancels in every ratio). The BC chunk's own randomness (``x0``) has no
trainable parameters here, so it is exogenous, like the env's.

Only the residual head trains: the velocity net, the encoder and any noise prior of the base stay
frozen (the residual conditions on the BC chunk and on the encoder's features; moving either would
change what the stored chains mean). Deterministic mode (and ``predict_action``) adds the residual
mean; with the zero-initialised head that is exactly the BC policy.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from equi_diffpo.model.residual_head import ResidualHead
from equi_diffpo.policy.frozen_flow_head import FrozenFlowHeadPolicy
from equi_diffpo.policy.maniflow_pointcloud_policy import ManiFlowPointcloudPolicy
from equi_diffpo.policy.rl_policy_base import LogProbResult, RLSample, gaussian_terms


class ResidualRLPolicy(FrozenFlowHeadPolicy):
    """Wraps a pretrained base policy, gives it a residual head (kept if it already has one, e.g. when
    fine-tuning a residual checkpoint again). ``state_dict`` = ``base.*`` (residual head included)."""

    method = "residual"
    base_requires = ("enable_residual",)   # the U-Net policy's residual head

    def __init__(self, base_policy: ManiFlowPointcloudPolicy, residual_hidden: int = 256,
                 residual_scale: float = 0.1, residual_std_init: float = 0.5, residual_std_min: float = 0.05,
                 residual_per_chunk: bool = False):
        """``residual_scale``: normalized action units per residual unit; ``residual_std_init``,
        ``residual_std_min``: the exploration std per action dim (residual units) at the start, and its floor;
        ``residual_per_chunk``: one residual per dim for the whole executed slice (see ``ResidualHead``)."""
        super().__init__(base_policy)
        base_policy.enable_residual(residual_hidden, residual_scale, residual_std_init, residual_std_min,
                                    residual_per_chunk)
        self.freeze_base()

    @property
    def head(self) -> ResidualHead:
        return self.base.residual_head

    def _terms(self, chains: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-density and entropy ``(B,)`` of the residual stored in ``chains`` ``(B, 2, horizon, Da)``."""
        bc, executed = chains[:, 0], chains[:, 1]
        mean, std = self.head(cond, bc)
        s = self.head.exec_slice
        # Per chunk, the executed steps all carry the same residual: score it once.
        residual = ((executed[:, s] - bc[:, s]) / self.head.scale)[:, : self.head.shape[0]]
        return gaussian_terms(residual, mean, std)

    @torch.no_grad()
    def sample_actions(self, obs_dict: Dict[str, torch.Tensor], deterministic: bool = False,
                       noise: torch.Tensor | None = None, generators: Sequence[torch.Generator] | None = None,
                       exploration_noise: torch.Tensor | None = None) -> RLSample:
        """BC chunk, then the residual. obs_dict: raw ``(B, To, ...)``; ``noise`` optional standard-normal
        draw behind ``x0`` ``(B, horizon, Da)``; ``exploration_noise`` optional ``eps`` ``(B, n_action_steps, Da)``
        of ``r = mean + std * eps``; ``generators`` optional, one per row: the draws not given come from
        ``generators[i]`` (``x0`` first, then ``eps``), else from the global RNG. Deterministic: ``r = mean``
        (its ``log_prob`` is still that chain's density under the stochastic policy)."""
        cond = self.encode_obs(obs_dict)
        base, head = self.base, self.head
        x = self.base_chunk(cond, noise if noise is not None else self.draw(cond, generators, base.horizon, base.action_dim))
        mean, std = head(cond, x)
        if deterministic:
            residual = mean
        else:
            eps = exploration_noise.to(mean) if exploration_noise is not None else self.draw(cond, generators, *head.shape)
            residual = mean + std * eps
        chains = torch.stack([x, head.add_to_chunk(x, residual)], dim=1)
        # Scored by the same function as get_log_prob, so an unchanged policy gives a ratio of exactly 1.
        log_prob = self._terms(chains, cond)[0]
        return RLSample(action=base.decode_actions(chains[:, 1])["action"], chains=chains, log_prob=log_prob,
                        cond=cond)

    def get_log_prob(self, obs_dict: Dict[str, torch.Tensor], chains: torch.Tensor,
                     cond: Optional[torch.Tensor] = None) -> LogProbResult:
        """Log-prob and entropy ``(B,)`` of stored ``chains`` ``(B, 2, horizon, Da)`` under the current
        residual head (differentiable wrt it). ``cond``: features from :meth:`encode_obs`; given, the
        obs are not encoded again."""
        if chains.shape[1] != 2:
            raise ValueError(f"residual chains are (B, 2, horizon, Da) [BC chunk, executed chunk], got {tuple(chains.shape)}")
        if cond is None:
            cond = self.encode_obs(obs_dict)
        log_prob, entropy = self._terms(chains.to(cond.device), cond)
        return LogProbResult(log_prob=log_prob, entropy=entropy)
