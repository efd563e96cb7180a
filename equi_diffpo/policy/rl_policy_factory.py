"""``rl_policy.method`` -> the RL view of a pretrained policy, built from the ``rl_policy`` config.

``flow`` (:class:`ManiFlowRLPolicy`: latent-noise prior or noisy Euler chain), ``residual``
(:class:`ResidualRLPolicy`: frozen BC chunk + Gaussian residual) and ``fpo`` (:class:`FPORLPolicy`: the
velocity net itself, with a flow-matching-loss ratio). The config holds both methods' keys;
each class gets only its own (read from its constructor), and a key neither knows is an error naming it.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from equi_diffpo.policy.maniflow_pointcloud_policy import ManiFlowPointcloudPolicy
from equi_diffpo.policy.fpo_rl_policy import FPORLPolicy
from equi_diffpo.policy.maniflow_rl_policy import ManiFlowRLPolicy
from equi_diffpo.policy.residual_rl_policy import ResidualRLPolicy

RL_POLICIES = {"flow": ManiFlowRLPolicy, "residual": ResidualRLPolicy, "fpo": FPORLPolicy}


def _ctor_keys(cls: type) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "base_policy")]


def build_rl_policy(base: ManiFlowPointcloudPolicy, rl_policy_cfg: Mapping[str, Any] | DictConfig) -> nn.Module:
    """The ``rl_policy.method`` class (default ``flow``) around ``base``, given its keys of ``rl_policy_cfg``."""
    cfg: Dict[str, Any] = (OmegaConf.to_container(rl_policy_cfg, resolve=True)
                           if isinstance(rl_policy_cfg, DictConfig) else dict(rl_policy_cfg))
    method = cfg.pop("method", "flow")
    if method not in RL_POLICIES:
        raise ValueError(f"rl_policy.method={method!r}; valid: {sorted(RL_POLICIES)}")
    keys = {name: _ctor_keys(cls) for name, cls in RL_POLICIES.items()}
    known = {k for ks in keys.values() for k in ks}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown rl_policy key(s) {unknown}; valid keys: "
                         + "; ".join(f"method={name}: {ks}" for name, ks in keys.items()))
    if method == "flow" and base.residual_head is not None:
        raise ValueError("the checkpoint's policy has a residual head, which rl_policy.method=flow would ignore "
                         "in its rollouts: fine-tune it with rl_policy.method=residual")
    return RL_POLICIES[method](base, **{k: v for k, v in cfg.items() if k in keys[method]})
