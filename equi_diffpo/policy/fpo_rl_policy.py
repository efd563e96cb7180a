"""Flow Policy Optimization for PPO (FPO: McAllister et al. 2025, "Flow Matching Policy Gradients";
FPO++: Yi, Choi et al. 2026): fine-tune the whole velocity net with the loss it was pretrained with.

Why: the latent-noise policy (:mod:`equi_diffpo.policy.latent_noise_policy`) keeps the flow frozen and
can only choose among the actions the pretrained flow already maps noise to; from the shipped lift_d0
checkpoint it plateaued near 0.55 (docs/EXPERIMENTS.md). An under-trained BC policy needs its weights
moved, and the conditional flow-matching (CFM) regression is the one signal this network is known to
learn from quickly (BC reaches 0.9+ with it). FPO replaces PPO's likelihood ratio by a CFM-loss ratio,

    ratio = exp(L_old(a) - L_new(a)),   L(a) = mean_i  l(a; tau_i, eps_i),
    l(a; tau, eps) = mean_{exec t, d} || v(x_tau, tau, dt=0, cond) - (a - eps) ||^2,   x_tau = (1 - tau) eps + tau a,

so the clipped surrogate is advantage-weighted flow matching inside a trust region: good chunks get a
lower CFM loss (the flow carries more noise to them), bad ones a higher one. No noise head, no
likelihood: exploration is the flow's own randomness in ``x_0``, exactly what evaluation draws.

Measured on lift_d0 from the shipped checkpoint (docs/EXPERIMENTS.md, 2026-12-01): no setting tried beat the
latent-noise default; at ``policy_lr`` 1e-4 the rollout success fell to ~0 within 6 epochs, at 3e-5 it drifted
down. It is kept as a documented option for larger batches and GPU budgets, not as a recommendation.

Which branch: the flow-matching one (``dt = 0``, instantaneous velocity), for the loss and, from now on,
for sampling (``base.enable_flow_sampling``, recorded in the checkpoint). Its conditional targets ``a - eps``
have the marginal velocity as their minimizer, so the regression is unbiased there. Applied to the
consistency branch that the pretrained sampler uses (``dt = 1/K``), the same targets pull every step
towards the *average* velocity: measured on lift_d0, even weighting only positive advantages
(``negative_advantages=zero``) took the rollout success 0.38 -> 0.00 in 7 epochs. The shipped BC checkpoint
samples equally well with either branch (0.34 vs 0.36 over 50 episodes, K=2). ``tau_i`` is a stratified
grid, ``(i + 1/2) / n_mc``, so no draw of it needs storing.

Stored chain ``(B, 1 + n_mc, horizon, Da)``: ``[0]`` the executed normalized chunk ``a`` (clamped to
[-1, 1] with ``clip_sample``, i.e. what the env received), ``[1:]`` the ``eps_i`` draws (from the
episode's generator, so rollouts stay reproducible). ``log_prob`` = ``-L(a)`` over the executed slice:
a surrogate, not a density (entropy is reported as 0). Rollouts do not evaluate it (``defers_log_prob``):
the PPO trainer scores the whole batch once before its first step, with the weights that sampled it, in
large batches on cached features instead of ``n_mc`` extra net calls per env step (a third of the rollout's
policy time). Only the velocity net trains (``policy_lr``); the encoder follows
``rl_training.finetune_obs_encoder`` as for the other methods.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from equi_diffpo.policy.maniflow_pointcloud_policy import ManiFlowPointcloudPolicy
from equi_diffpo.policy.rl_policy_base import LogProbResult, RLPolicyBase, RLSample


class FPORLPolicy(RLPolicyBase):
    """Wraps (and trains) a pretrained base policy's velocity net. ``state_dict`` = ``base.*``."""

    # The rollout's log_prob is a placeholder: PPOTrainer.update scores the batch before any step.
    defers_log_prob = True
    # The U-Net policy's flow-matching branch (``velocity_net(x, t, dt=0, cond)`` on vector features).
    base_requires = ("enable_flow_sampling",)

    def __init__(self, base_policy: ManiFlowPointcloudPolicy, fpo_mc_samples: int = 4):
        """``fpo_mc_samples``: (tau, eps) pairs per chunk for the CFM-loss ratio."""
        super().__init__(base_policy)
        if base_policy.noise_prior is not None or base_policy.residual_head is not None:
            raise ValueError("rl_policy=fpo fine-tunes a plain flow; this checkpoint has a noise prior or a "
                             "residual head: fine-tune it with the method that made it (latent, chain or residual)")
        if fpo_mc_samples < 1:
            raise ValueError(f"rl_policy.fpo_mc_samples must be >= 1, got {fpo_mc_samples}")
        self.n_mc = int(fpo_mc_samples)
        base_policy.enable_flow_sampling()
        base_policy.velocity_net.requires_grad_(True)
        # tau_i = (i + 1/2) / n_mc, shape (n_mc,): a stratified grid over the flow time.
        self.register_buffer("taus", (torch.arange(self.n_mc) + 0.5) / self.n_mc, persistent=False)

    @property
    def num_steps(self) -> int:
        """Entries after the action in a stored chain: the ``eps`` draws."""
        return self.n_mc

    def cfm_losses(self, chains: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Per-draw CFM loss ``(B, n_mc)`` of the action ``chains[:, 0]`` for the draws ``chains[:, 1:]``,
        each a mean over the executed ``n_action_steps x Da`` entries (see the module docstring)."""
        B, n, H, D = chains.shape[0], self.n_mc, self.base.horizon, self.base.action_dim
        action, eps = chains[:, :1], chains[:, 1:]
        tau = self.taus.view(1, n, 1, 1).to(chains)
        x_tau = (1 - tau) * eps + tau * action
        cond_rep = cond.unsqueeze(1).expand(B, n, cond.shape[-1]).reshape(B * n, -1)
        v = self.base.velocity_net(x_tau.reshape(B * n, H, D), tau.expand(B, n, 1, 1).reshape(-1), 0.0,
                                   cond_rep).view(B, n, H, D)
        s = self.exec_slice
        return (v[:, :, s] - (action - eps)[:, :, s]).square().mean(dim=(2, 3))

    @torch.no_grad()
    def sample_actions(self, obs_dict: Dict[str, torch.Tensor], deterministic: bool = False,
                       noise: torch.Tensor | None = None,
                       generators: Sequence[torch.Generator] | None = None) -> RLSample:
        """The base sampler's chunk plus fresh ``eps`` draws for its ratio. obs_dict: raw ``(B, To, ...)``;
        ``noise`` optional ``x_0`` ``(B, horizon, Da)``; ``generators`` optional, one per row (``x_0`` first,
        then the ``eps``). The flow is deterministic given ``x_0``, so ``deterministic`` changes nothing:
        evaluation and rollouts draw ``x_0`` alike. ``log_prob`` is zeros (``defers_log_prob``)."""
        del deterministic
        cond = self.encode_obs(obs_dict)
        base = self.base
        x = self.base_chunk(cond, noise if noise is not None else self.draw(cond, generators, base.horizon, base.action_dim))
        if base.clip_sample:
            x = x.clamp(-1.0, 1.0)
        chains = torch.cat([x.unsqueeze(1), self.draw(cond, generators, self.n_mc, base.horizon, base.action_dim)], dim=1)
        return RLSample(action=base.decode_actions(x)["action"], chains=chains,
                        log_prob=torch.zeros(cond.shape[0], device=cond.device), cond=cond)

    def get_log_prob(self, obs_dict: Dict[str, torch.Tensor], chains: torch.Tensor,
                     cond: Optional[torch.Tensor] = None) -> LogProbResult:
        """``-L(a)`` ``(B,)`` of stored ``chains`` ``(B, 1 + n_mc, horizon, Da)`` under the current velocity
        net (differentiable), entropy zeros. ``cond``: precomputed ``encode_obs(obs_dict)``."""
        if chains.shape[1] != 1 + self.n_mc:
            raise ValueError(f"fpo chains are (B, 1 + {self.n_mc}, horizon, Da), got {tuple(chains.shape)}")
        if cond is None:
            cond = self.encode_obs(obs_dict)
        log_prob = -self.cfm_losses(chains.to(cond.device), cond).mean(dim=1)
        return LogProbResult(log_prob=log_prob, entropy=torch.zeros_like(log_prob))
