"""The PPO critic as the trainer sees it: raw obs -> value. Three kinds, chosen by the ``critic`` config
group (``critic=privileged|policy|own``, ``equi_diffpo/config/critic/<kind>.yaml``, which sets ``critic.encoder``):

* ``policy`` (:class:`PolicyFeatureCritic`): a value MLP on the policy's own observation features
  ``policy.encode_obs(obs)``, with no gradient into them. While the policy's encoder is frozen (the
  default, ``finetune_obs_encoder: false``) the PPO trainer encodes a batch once for both actor and
  critic, so the critic's update costs an MLP step per minibatch.
* ``privileged`` (:class:`PrivilegedCritic`): a value MLP on the simulator's low-dim state (asymmetric
  actor-critic; the policy still reads point clouds only).
* ``own`` (:class:`NormalizedCritic`): its own point-cloud encoder, trained by the value loss with the
  MLP (optionally starting as a copy of the policy's), run forward and backward in every minibatch.

Either way actor and critic share nothing trainable: two optimizers never update the same tensor.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn

from equi_diffpo.common.checkpoint_io import CheckpointError
from equi_diffpo.common.errors import ConfigError
from equi_diffpo.env.robosuite_env import privileged_obs_dim
from equi_diffpo.model.normalizer import LinearNormalizer
from equi_diffpo.model.value_head import ValueHead, value_mlp
from equi_diffpo.policy.maniflow_pointcloud_policy import ManiFlowPointcloudPolicy

# Each critic kind's keys (besides ``encoder``), as its ``config/critic/<kind>.yaml`` gives them.
CRITIC_KEYS = {"policy": {"hidden"}, "privileged": {"hidden"},
               "own": {"hidden", "init_encoder_from_policy", "pc_out", "state_out"}}
CRITIC_ENCODERS = tuple(CRITIC_KEYS)


class _NamedCritic(nn.Module):
    """Loading a critic saved with another ``critic.encoder`` names the key instead of listing tensors."""
    encoder_setting = ""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as err:
            raise CheckpointError(f"the checkpoint's critic does not fit critic.encoder={self.encoder_setting!r} "
                                  f"(saved with another critic.encoder or other critic sizes?): {err}") from err


class NormalizedCritic(_NamedCritic):
    """Own encoder + MLP. :class:`ValueHead` expects normalized ``n_obs_steps`` frames; the critic keeps
    a *copy* of the policy's normalizer (buffers, no parameters)."""
    encoder_setting = "own"

    def __init__(self, value_head: ValueHead, normalizer: LinearNormalizer, n_obs_steps: int):
        super().__init__()
        self.value_head = value_head
        self.normalizer = copy.deepcopy(normalizer)
        self.n_obs_steps = n_obs_steps

    def forward(self, obs_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
        """obs_dict raw ``{'point_cloud': (B, To, N, C), 'agent_pos': (B, To, D)}`` -> ``(B,)``."""
        obs = {k: obs_dict[k][:, : self.n_obs_steps] for k in ("point_cloud", "agent_pos")}
        return self.value_head(self.normalizer.normalize(obs))


class PolicyFeatureCritic(_NamedCritic):
    """Value MLP on ``policy.cond_features(policy.encode_obs(obs))`` ``(B, feature_dim)``; its ``state_dict``
    is the MLP only. The cached features are the policy's ``cond`` itself (a vector for the U-Net, tokens
    for the DiT-X), reduced to one vector here.

    The policy is referenced, not registered as a submodule, so its parameters are neither in this
    critic's ``parameters()`` (the critic optimizer) nor in its ``state_dict`` (saved with the policy).
    ``reads_policy_features`` tells the PPO trainer that the policy's cached ``cond`` *is* this
    critic's input, so a batch is encoded once for both.
    """
    encoder_setting = "policy"
    reads_policy_features = True

    def __init__(self, policy: nn.Module, feature_dim: int, hidden: int):
        super().__init__()
        object.__setattr__(self, "policy", policy)   # bypasses nn.Module's submodule registration
        self.mlp = value_mlp(feature_dim, hidden)

    @property
    def obs_encoder_frozen(self) -> bool:
        """As frozen as the policy's encoder: features cached once per batch stay exact."""
        return bool(getattr(self.policy, "obs_encoder_frozen", False))

    @torch.no_grad()
    def encode_obs(self, obs_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
        """obs_dict raw -> the policy's ``cond`` (``(B, feature_dim)`` for the U-Net, tokens for the DiT-X),
        without a graph (the value loss never trains the policy's encoder)."""
        return self.policy.encode_obs(obs_dict)

    def forward(self, obs_dict: Dict[str, torch.Tensor] | None, features: torch.Tensor | None = None) -> torch.Tensor:
        """obs_dict raw ``{'point_cloud': (B, To, N, C), 'agent_pos': (B, To, D)}`` -> ``(B,)``.
        ``features``: ``encode_obs(obs_dict)`` computed beforehand (``obs_dict`` is then not read)."""
        if features is None:
            features = self.encode_obs(obs_dict)
        return self.mlp(self.policy.cond_features(features)).squeeze(-1)


class PrivilegedCritic(_NamedCritic):
    """``forward(obs_dict)`` -> values ``(B,)`` from ``obs_dict['agent_pos']`` and ``obs_dict['privileged']``.

    Asymmetric critic: the value from the simulator's low-dim state instead of the point cloud.

    Why: the critic only exists during training in simulation, so it may read what the policy cannot
    (asymmetric actor-critic, Pinto et al. 2018). On lift_d0 a value MLP on the frozen policy's
    point-cloud features explained < 10% of the return variance in its first epochs: the features were
    trained to imitate actions, not to tell how close the cube is to the gripper or how much time is
    left. The env's ``privileged`` observation holds exactly that (object poses, gripper-to-object
    vectors, elapsed fraction of the episode; :mod:`equi_diffpo.env.robosuite_env`). The policy never
    reads it, so a trained policy still acts from point clouds alone.

    Input: the last frame of ``agent_pos`` ``(B, To, 9)`` and ``privileged`` ``(B, To, P)``, standardized by
    statistics fitted once on the first RL batch (:meth:`fit_input_stats`; stored as buffers, so a resumed
    run keeps them): positions in metres, quaternions and a gripper opening of a few cm differ in scale by 100x.
    """
    encoder_setting = "privileged"

    def __init__(self, agent_pos_dim: int, privileged_dim: int, hidden: int = 256):
        super().__init__()
        in_dim = int(agent_pos_dim) + int(privileged_dim)
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.register_buffer("input_fitted", torch.tensor(0, dtype=torch.uint8))   # gloo broadcasts uint8, not bool
        self.mlp = value_mlp(in_dim, hidden)

    @staticmethod
    def state_input(obs_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Last frame of agent_pos and privileged state, concatenated: ``(B, agent_pos_dim + P)``."""
        if "privileged" not in obs_dict:
            raise KeyError("critic.encoder=privileged needs the env's 'privileged' observation; "
                           "this batch has only " + ", ".join(sorted(obs_dict)))
        return torch.cat([obs_dict["agent_pos"][:, -1], obs_dict["privileged"][:, -1]], dim=-1)

    @property
    def needs_input_stats(self) -> bool:
        return not bool(self.input_fitted)

    @torch.no_grad()
    def fit_input_stats(self, obs_dict: Dict[str, torch.Tensor]) -> None:
        """Per-feature mean/std of a batch of obs (the first RL batch); constant features keep std 1."""
        x = self.state_input(obs_dict).to(self.input_mean.device)
        std = x.std(dim=0, correction=0)
        self.input_mean.copy_(x.mean(dim=0))
        self.input_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        self.input_fitted.fill_(1)

    def forward(self, obs_dict: Dict[str, torch.Tensor], features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``features`` is unused (the trainer's cache is for point-cloud encoders; this input is cheap)."""
        x = self.state_input(obs_dict).to(self.input_mean.device)
        return self.mlp((x - self.input_mean) / self.input_std).squeeze(-1)


def build_critic(critic_cfg: Mapping[str, Any], policy: nn.Module, base: nn.Module, task: Mapping[str, Any],
                 n_obs_steps: int) -> nn.Module:
    """The ``critic`` config group -> critic for ``policy`` (an RL policy around the pretrained ``base``)."""
    cfg = dict(critic_cfg)
    encoder = cfg.pop("encoder", "own")
    if encoder not in CRITIC_KEYS:
        raise ValueError(f"critic.encoder={encoder!r}; valid: {CRITIC_ENCODERS} (choose one with critic=<kind>)")
    foreign = sorted(set(cfg) - CRITIC_KEYS[encoder])
    if foreign:
        raise ValueError(f"critic key(s) {foreign} are not read by critic.encoder={encoder!r}: choose the critic "
                         f"with critic=<kind> ({', '.join(CRITIC_ENCODERS)}), whose yaml has that kind's keys")
    init_from_policy = cfg.pop("init_encoder_from_policy", True)
    if encoder == "policy":
        return PolicyFeatureCritic(policy, base.cond_dim, cfg["hidden"])
    if encoder == "privileged":
        return PrivilegedCritic(task["agent_pos_dim"], privileged_obs_dim(task["name"]), cfg["hidden"])
    if not isinstance(base, ManiFlowPointcloudPolicy):
        # ValueHead copies the U-Net policy's encoder and normalizer (point_cloud + agent_pos fields).
        raise ConfigError(f"critic=own builds on the U-Net policy's encoder and normalizer; for "
                          f"{type(base).__name__} choose critic=<one of ['privileged', 'policy']>")
    value_head = ValueHead(task["point_dim"], task["agent_pos_dim"], n_obs_steps, **cfg,
                           obs_encoder=base.obs_encoder if init_from_policy else None)
    return NormalizedCritic(value_head, base.normalizer, n_obs_steps)
