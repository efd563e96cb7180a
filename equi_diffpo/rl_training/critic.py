"""The PPO critic as the trainer sees it: raw obs -> value, normalizing with its own frozen copy.

:class:`~equi_diffpo.model.value_head.ValueHead` expects normalized ``n_obs_steps`` frames. The
critic keeps a *copy* of the policy's normalizer (buffers, no parameters) so actor and critic
share nothing trainable: two optimizers never update the same tensor.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
import torch.nn as nn

from equi_diffpo.model.normalizer import LinearNormalizer
from equi_diffpo.model.value_head import ValueHead


class NormalizedCritic(nn.Module):
    def __init__(self, value_head: ValueHead, normalizer: LinearNormalizer, n_obs_steps: int):
        super().__init__()
        self.value_head = value_head
        self.normalizer = copy.deepcopy(normalizer)
        self.n_obs_steps = n_obs_steps

    def forward(self, obs_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
        """obs_dict raw ``{'point_cloud': (B, To, N, C), 'agent_pos': (B, To, D)}`` -> ``(B,)``."""
        obs = {k: obs_dict[k][:, : self.n_obs_steps] for k in ("point_cloud", "agent_pos")}
        return self.value_head(self.normalizer.normalize(obs))
