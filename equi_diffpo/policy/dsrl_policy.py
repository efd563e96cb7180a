"""DSRL-style latent policy trained off-policy (SAC): the frozen flow steered through its starting noise.

Same policy class as :class:`~equi_diffpo.policy.latent_noise_policy.LatentNoisePolicy`
(``x_0 ~ N(mu(cond), std^2)`` pushed through the frozen K-step Euler flow, the prior living on ``base`` so a
checkpoint evaluates without this class), with three differences that suit a Q-function learner
(:mod:`equi_diffpo.rl_training.sac_trainer`) rather than PPO:

* one mean per ``(time, action dim)`` entry (``horizon * Da`` outputs): PPO's per-entry gradient was at noise
  level on lift_d0, but SAC's actor follows ``dQ/dx_0``, one dense vector per sample, so the extra freedom is
  usable;
* the mean is bounded (``noise_prior_mean_bound * tanh``), as DSRL bounds its latent actions, so the actor
  stays where the flow was trained and the critic is not an extrapolation;
* :meth:`rsample` draws ``x_0`` with the reparameterisation trick (the actor loss backpropagates ``Q`` into
  the prior) and returns its log-density ratio to the BC noise ``N(0, I)``: SAC's entropy bonus becomes a
  KL penalty towards the BC policy (KL-regularised RL with the BC policy as the reference).

Why KL to BC instead of SAC's entropy: with the entropy bonus (measured on lift_d0, 53k env steps) the actor
followed the young critic's gradient in the 160-d ``x_0`` to where the flow's chunks fail: the rollout success
went 0.41 -> 0.00 within 4 epochs and Q rose to 4x the largest possible return. Under a KL budget
(``sac_trainer.target_kl``, alpha tuned to hold it) the prior moves only as far as the critic's evidence pays for.

Why off-policy at all: on lift_d0 the PPO latent policy used each transition for one update and reached
0.61-0.77 from the 0.39 BC checkpoint in ~450k env steps (docs/EXPERIMENTS.md); a replay buffer reuses each
chunk transition in many critic and actor steps (DSRL: Wagenmaker et al. 2025, "Steering Your Diffusion
Policy with Latent Space Reinforcement Learning").
"""
from __future__ import annotations

from typing import Tuple

import torch

from equi_diffpo.policy.latent_noise_policy import LatentNoisePolicy
from equi_diffpo.policy.rl_policy_base import FlowPolicy, gaussian_terms


class DSRLPolicy(LatentNoisePolicy):
    """The latent-noise policy with a per-entry, bounded prior mean, for :class:`SACTrainer`."""

    # The RL workspace trains this view with SAC (``rl_training.sac_trainer``), not PPO.
    algorithm = "sac"

    def __init__(self, base_policy: FlowPolicy, noise_prior_hidden: int = 256, noise_prior_std_min: float = 0.1,
                 noise_prior_mean_bound: float = 1.5):
        """``noise_prior_mean_bound``: ``|mean| <= bound`` per ``x_0`` entry (DSRL's latent action bound)."""
        if noise_prior_mean_bound <= 0:
            raise ValueError(f"rl_policy.noise_prior_mean_bound must be > 0, got {noise_prior_mean_bound}")
        super().__init__(base_policy, noise_prior_hidden, noise_prior_std_min, noise_prior_chunk_shift=False,
                         noise_prior_chunk_std=0.0, noise_prior_mean_bound=noise_prior_mean_bound)
        prior = self.base.noise_prior
        if prior.mean_bound == 0 or prior.mean_shape != prior.shape:
            raise ValueError("the checkpoint's policy already has a noise prior of another kind (a chunk-shared or "
                             "unbounded mean, from rl_policy=latent): continue it with rl_policy=latent, or start "
                             "rl_policy=dsrl from its BC checkpoint")

    @property
    def latent_dim(self) -> int:
        """Entries of one ``x_0``: ``horizon * Da`` (the critic's action input)."""
        return self.base.horizon * self.base.action_dim

    def rsample(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``features`` ``(B, cond_dim)`` (``cond_features(cond)``) -> a differentiable draw ``x_0``
        ``(B, horizon, Da)`` and ``log pi(x_0 | s) - log N(x_0; 0, I)`` ``(B,)``: a one-sample estimate of
        the KL from the BC policy's own noise ``N(0, I)`` to the learned prior (SAC's regulariser here)."""
        mean, std = self.base.noise_prior(features)
        x0 = mean + std * torch.randn_like(mean)
        bc = gaussian_terms(x0, torch.zeros_like(x0), torch.ones_like(x0))[0]
        return x0, gaussian_terms(x0, mean, std)[0] - bc

    def prior_std(self) -> torch.Tensor:
        """``(horizon, Da)`` current std of the prior (the same for every observation)."""
        return self.base.noise_prior.log_std.clamp(self.base.noise_prior.log_std_min, 0.0).exp()
