"""The interface every RL view of a pretrained ManiFlow policy offers the collector and the PPO trainer,
and the Gaussian pieces they share.

An RL policy wraps a pretrained flow policy (``base``: encoder, velocity net, normalizer): our U-Net
:class:`ManiFlowPointcloudPolicy` or the original ManiFlow DiT-X
:class:`~equi_diffpo.policy.maniflow.maniflow_pointcloud_policy.ManiFlowTransformerPointcloudPolicy`. Both
offer the same duck-typed pieces: ``encode_obs`` -> ``cond`` in the form their velocity net takes (a vector
for the U-Net, visual tokens for the DiT-X), ``cond_features(cond)`` -> one vector for the RL heads,
``initial_noise``/``enable_noise_prior``/``noise_prior_params``, ``euler_mean``, ``decode_actions``,
``velocity_net``. The RL view makes the base a stochastic policy PPO can score:

* ``sample_actions(obs, deterministic, noise, generators) -> RLSample``: executed actions, the stored
  ``chains`` that ``get_log_prob`` scores, and their log-prob at sampling time;
* ``get_log_prob(obs, chains, cond=None) -> LogProbResult``: differentiable log-prob (or surrogate) and
  entropy of stored chains under the current parameters;
* ``predict_action(obs, noise)``: evaluation actions, the base policy's own (whatever the RL added to it,
  e.g. a noise prior or a residual head, lives on ``base``, so a checkpoint evaluates without this class).

One class per method (``equi_diffpo/config/rl_policy/<method>.yaml`` names it with ``_target_``):
:class:`~equi_diffpo.policy.latent_noise_policy.LatentNoisePolicy`,
:class:`~equi_diffpo.policy.noisy_chain_policy.NoisyChainPolicy`,
:class:`~equi_diffpo.policy.residual_rl_policy.ResidualRLPolicy`,
:class:`~equi_diffpo.policy.fpo_rl_policy.FPORLPolicy`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch.distributions import LowRankMultivariateNormal

from equi_diffpo.common.seeding import batched_randn
from equi_diffpo.env.rotation import env_rot6d
from equi_diffpo.policy.maniflow.maniflow_pointcloud_policy import ManiFlowTransformerPointcloudPolicy
from equi_diffpo.policy.maniflow_pointcloud_policy import ManiFlowPointcloudPolicy

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# The pretrained policies an RL view can wrap (see the module docstring).
FlowPolicy = Union[ManiFlowPointcloudPolicy, ManiFlowTransformerPointcloudPolicy]


@dataclass
class RLSample:
    """``action`` (B, n_action_steps, Da) raw executed actions; ``chains`` (B, C, horizon, Da) what the
    method stores to score later (its layout is the method's); ``log_prob`` (B,) at sampling time;
    ``cond`` the ``encode_obs`` output the sample was drawn from (``(B, cond_dim)`` for the U-Net): while the
    encoder is frozen the collector keeps it, so the PPO update does not encode the batch's clouds again."""
    action: torch.Tensor
    chains: torch.Tensor
    log_prob: torch.Tensor
    cond: torch.Tensor


@dataclass
class LogProbResult:
    """``log_prob`` (B,) and ``entropy`` (B,) of stored chains, same slice/normalization."""
    log_prob: torch.Tensor
    entropy: torch.Tensor


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


class RLPolicyBase(nn.Module):
    """Shared plumbing of the RL views: ``state_dict`` = ``base.*`` (+ the subclass's own modules)."""

    # True: ``sample_actions`` leaves ``log_prob`` as a placeholder and PPOTrainer.update scores the batch
    # before its first step (for methods whose log-prob is costly per env step; see fpo_rl_policy.py).
    defers_log_prob = False
    # Methods of ``base`` this view needs beyond the shared pieces; a policy without them cannot be wrapped
    # (checked by :func:`~equi_diffpo.policy.rl_policy_factory.build_rl_policy`, which names the choices that fit).
    base_requires: Tuple[str, ...] = ()

    def __init__(self, base_policy: FlowPolicy):
        super().__init__()
        self.base = base_policy
        start = base_policy.n_obs_steps - 1
        self.exec_slice = slice(start, start + base_policy.n_action_steps)

    def train(self, mode: bool = True) -> "RLPolicyBase":
        """Train mode for the RL view's own heads; the base always stays in eval mode. Why: a rollout's chain
        is sampled in eval mode and PPO's ratio needs the scorer to be the same function (ratio exactly 1
        before any step), so the DiT-X's attention dropout must stay off during the update too."""
        super().train(mode)
        self.base.eval()
        return self

    def env_actions(self, action: torch.Tensor) -> np.ndarray:
        """Raw policy actions ``(B, n_action_steps, Da)`` -> what our envs execute: rot6d as matrix columns
        (a policy trained on the original's data predicts rows). Stored chains keep the policy's own layout."""
        return env_rot6d(action.cpu().numpy(), self.base.action_rot6d)

    def head_parameters(self) -> List[nn.Parameter]:
        """Parameters added for RL (zero-initialised heads): trained at ``ppo_trainer.head_lr``."""
        return []

    def std_parameters(self) -> List[nn.Parameter]:
        """The heads' learned x0 stds (``ppo_trainer.std_lr``): the noise prior's ``log_std`` when it trains."""
        prior = self.base.noise_prior
        return [prior.log_std] if prior is not None and prior.log_std.requires_grad else []

    @torch.no_grad()
    def project_parameters_(self) -> None:
        """Called by the trainer after each policy optimizer step: puts box-constrained parameters (a learned
        noise prior's ``log_std``) back into their box, so a clamp in the forward pass never cuts their gradient."""
        if self.base.noise_prior is not None:
            self.base.noise_prior.project_()

    @torch.no_grad()
    def diagnostics(self) -> Dict[str, float]:
        """Scalars logged after each RL epoch: the learned prior's per-entry std (mean, min), which shows whether
        RL narrows the flow's input noise at all (``noise_prior.log_std`` is not observation-dependent)."""
        if self.base.noise_prior is None:
            return {}
        std = self.base.noise_prior.std()
        return {"policy/noise_prior_std_mean": std.mean().item(), "policy/noise_prior_std_min": std.min().item()}

    @property
    def obs_encoder_frozen(self) -> bool:
        """True when no encoder parameter trains: ``encode_obs`` is then a constant function of the obs,
        so the PPO trainer encodes a batch once and passes ``cond`` to every ``get_log_prob``."""
        return not any(p.requires_grad for p in self.base.obs_encoder.parameters())

    def normalize_obs(self, obs_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Raw obs -> normalized ``n_obs_steps`` frames (the critic's input)."""
        return self.base.normalize_obs(obs_dict)

    def encode_obs(self, obs_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw obs -> the velocity net's conditioning ``cond`` (normalized by the policy's normalizer):
        ``(B, cond_dim)`` for the U-Net, visual tokens ``(B, n_obs_steps * N, D)`` for the DiT-X."""
        return self.base.encode_obs(obs_dict)

    def cond_features(self, cond: torch.Tensor) -> torch.Tensor:
        """``cond`` -> one vector ``(B, base.cond_dim)`` per sample (what the heads and critics read)."""
        return self.base.cond_features(cond)

    def predict_action(self, obs_dict: Dict[str, torch.Tensor],
                       noise: torch.Tensor | None = None) -> Dict[str, torch.Tensor]:
        """Evaluation actions: the base policy's own ``predict_action``."""
        return self.base.predict_action(obs_dict, noise)

    def draw(self, cond: torch.Tensor, generators: Optional[Sequence[torch.Generator]], *shape: int) -> torch.Tensor:
        """Standard normal ``(B, *shape)``, row ``i`` from ``generators[i]`` when given (reproducible rollouts,
        :mod:`equi_diffpo.common.seeding`), else from the global RNG."""
        return batched_randn(shape, cond.shape[0], cond.device, generators, cond.dtype)

    def base_chunk(self, cond: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The base's deterministic K-step Euler flow from ``x0`` ``(B, horizon, Da)`` (prior applied)."""
        x = self.base.initial_noise(cond, x0)
        for k in range(self.base.num_inference_steps):
            x = self.base.euler_mean(x, k, cond)
        return x
