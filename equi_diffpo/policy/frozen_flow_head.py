"""Base class of the RL views that train only a head added on top of a frozen BC flow (residual, select).

Why frozen: such a head reads what the base produces (encoder features, BC chunks), and the stored chains record
those outputs; training the encoder, the velocity net or a noise prior underneath would change what the stored
chains mean. Frozen encoders also let the PPO trainer encode each batch once (``obs_encoder_frozen``).
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn as nn

from equi_diffpo.policy.rl_policy_base import RLPolicyBase


class FrozenFlowHeadPolicy(RLPolicyBase):
    """Subclasses add their head to ``base`` first, then call :meth:`freeze_base`, and name it in ``head``
    and ``method`` (the ``rl_policy=<method>`` the error messages cite)."""

    method = ""

    def freeze_base(self) -> None:
        """No gradient for the encoder, the velocity net and any noise prior of the base."""
        for frozen in (self.base.obs_encoder, self.base.velocity_net, self.base.noise_prior):
            if frozen is not None:
                frozen.requires_grad_(False)

    @property
    def head(self) -> nn.Module:
        raise NotImplementedError

    def head_parameters(self) -> List[nn.Parameter]:
        """The head's parameters (zero-initialised output): trained at ``ppo_trainer.head_lr``."""
        return list(self.head.parameters())

    @property
    def num_steps(self) -> int:
        """Stochastic transitions per chunk step: one (the head's draw)."""
        return 1

    @property
    def obs_encoder_frozen(self) -> bool:
        """Always: the head never trains the encoder, so features can be computed once per batch."""
        return True

    def encode_obs(self, obs_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw obs -> frozen conditioning ``(B, cond_dim)`` (no graph)."""
        if any(p.requires_grad for p in self.base.obs_encoder.parameters()):
            raise ValueError(f"rl_policy={self.method} keeps the policy's encoder frozen (its head reads the "
                             "encoder's features and the BC chunks): set rl_training.finetune_obs_encoder=false")
        with torch.no_grad():
            return self.base.encode_obs(obs_dict)
