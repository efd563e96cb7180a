"""``rl_policy`` config -> the RL view of a pretrained policy.

The method is the hydra group choice (``rl_policy=latent|chain|residual|fpo``,
``equi_diffpo/config/rl_policy/<method>.yaml``), whose ``_target_`` names the class; its other keys are
that class's constructor arguments. Building goes through :func:`build_rl_policy` rather than a bare
``hydra.utils.instantiate`` so a key the method does not read (a typo, or another method's key) is an
error that names it and lists the valid ones.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

from equi_diffpo.common.errors import ConfigError
from equi_diffpo.common.hydra_cli import CONFIG_DIR
from equi_diffpo.policy.rl_policy_base import FlowPolicy, RLPolicyBase

RL_POLICY_DIR = CONFIG_DIR / "rl_policy"


def rl_policy_names() -> list[str]:
    """The methods with a yaml in ``config/rl_policy/``."""
    return sorted(p.stem for p in RL_POLICY_DIR.glob("*.yaml"))


def rl_policy_config(name: str, **overrides: Any) -> dict:
    """``config/rl_policy/<name>.yaml`` as a dict, with ``overrides`` applied (tests, scripts)."""
    path = RL_POLICY_DIR / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"rl_policy={name!r}; valid: {rl_policy_names()}")
    return {**OmegaConf.to_container(OmegaConf.load(path), resolve=True), **overrides}


def missing_base_methods(cls: type, base: FlowPolicy) -> list[str]:
    """What the RL view class ``cls`` needs of ``base`` (``cls.base_requires``) and ``base`` lacks."""
    return [name for name in cls.base_requires if not hasattr(base, name)]


def build_rl_policy(base: FlowPolicy, rl_policy_cfg: Mapping[str, Any] | DictConfig) -> RLPolicyBase:
    """The ``_target_`` class of ``rl_policy_cfg`` around ``base``, given the other keys. A method the base
    policy cannot take (e.g. ``rl_policy=residual`` on the DiT-X) is a :class:`ConfigError` naming the ones it can."""
    cfg = (OmegaConf.to_container(rl_policy_cfg, resolve=True) if isinstance(rl_policy_cfg, DictConfig)
           else dict(rl_policy_cfg))
    if "_target_" not in cfg:
        raise ValueError(f"the rl_policy config has no _target_; choose a method with rl_policy=<name> "
                         f"(one of {rl_policy_names()})")
    cls = hydra.utils.get_class(cfg.pop("_target_"))
    missing = missing_base_methods(cls, base)
    if missing:
        fits = [name for name in rl_policy_names()
                if not missing_base_methods(hydra.utils.get_class(rl_policy_config(name)["_target_"]), base)]
        raise ConfigError(f"rl_policy: {cls.__name__} needs {missing} of the policy, which "
                          f"{type(base).__name__} has not; choose rl_policy=<one of {fits}>")
    valid = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "base_policy")]
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ValueError(f"unknown rl_policy key(s) {unknown} for {cls.__name__}; valid keys: {valid}")
    return cls(base, **cfg)
