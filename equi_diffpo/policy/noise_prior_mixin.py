"""The learnable noise prior both ManiFlow policies carry for RL (U-Net and DiT-X), in one place.

RL fine-tuning (``rl_policy=latent``, or ``chain`` with ``learn_noise_prior``) gives a pretrained policy
a :class:`~equi_diffpo.model.noise_prior.ConditionalNoisePrior`: ``x0 ~ N(mu(cond), std^2)`` instead of
``N(0, I)``. It lives on the policy (not on the RL view) so evaluation and checkpoints carry it, and it is
recorded in the policy's ``_config`` (returned by ``get_policy_config``), so ``load_policy`` rebuilds it.

What a policy using this mixin provides:
  * ``_config``: a dict with the keys ``noise_prior``, ``noise_prior_hidden``, ``noise_prior_std_min``,
    ``noise_prior_chunk_shift`` (ctor kwargs of the policy);
  * ``noise_prior`` (None or the module), ``horizon``, ``action_dim``, ``device``;
  * ``cond_dim`` and ``cond_features(cond) -> (B, cond_dim)``: the velocity net's conditioning as one
    vector per sample. The U-Net's ``cond`` already is one (identity); the DiT-X's is a token sequence
    ``(B, L, D)`` that it pools. The prior, the chain's noise head and the policy-feature critic read
    this vector, so the RL views pass ``cond`` around in whatever form the velocity net takes.
"""
from __future__ import annotations

import torch

from equi_diffpo.model.noise_prior import ConditionalNoisePrior

NOISE_PRIOR_DEFAULTS = dict(noise_prior=False, noise_prior_hidden=256, noise_prior_std_min=0.1,
                            noise_prior_chunk_shift=False)


class NoisePriorMixin:
    """``enable_noise_prior``, ``initial_noise`` and ``noise_prior_params`` for an ``nn.Module`` policy."""

    def _build_noise_prior(self) -> ConditionalNoisePrior:
        c = self._config
        return ConditionalNoisePrior(self.cond_dim, self.horizon, self.action_dim, c["noise_prior_hidden"],
                                     c["noise_prior_std_min"], c["noise_prior_chunk_shift"])

    def enable_noise_prior(self, hidden: int = 256, std_min: float = 0.1, chunk_shift: bool = False) -> None:
        """Add a (still identity) learnable noise prior to a policy trained without one; recorded
        in ``get_policy_config`` so checkpoints rebuild it. No-op if the policy already has one."""
        if self.noise_prior is not None:
            return
        self._config.update(noise_prior=True, noise_prior_hidden=int(hidden), noise_prior_std_min=float(std_min),
                            noise_prior_chunk_shift=bool(chunk_shift))
        self.noise_prior = self._build_noise_prior().to(self.device)

    @property
    def noise_shape(self) -> tuple:
        """Shape of one observation's standard-normal draw for ``predict_action``: ``(horizon, Da)``."""
        return (self.horizon, self.action_dim)

    def noise_prior_params(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` of ``x0``, each ``(B, horizon, Da)``, for the velocity net's conditioning ``cond``."""
        return self.noise_prior(self.cond_features(cond))

    def initial_noise(self, cond: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``x0`` ``(B, horizon, Da)`` for the velocity net's conditioning ``cond`` (``(B, ...)``):
        ``noise`` (or a fresh ``N(0, I)`` draw) itself, or ``mean + std * noise`` under a learned prior."""
        if noise is None:
            noise = torch.randn(cond.shape[0], self.horizon, self.action_dim, device=cond.device)
        noise = noise.to(device=cond.device, dtype=cond.dtype)
        if self.noise_prior is None:
            return noise
        mean, std = self.noise_prior_params(cond)
        return mean + std * noise
