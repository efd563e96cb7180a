"""ManiFlow's own point-cloud policy: DP3 per-point tokens -> DiT-X velocity net over action chunks.

Our implementation of the original ``ManiFlowTransformerPointcloudPolicy`` (pummmmpkin/ManiFlow_Policy
and its equidiff/MimicGen port), under the same module path and class name so the ``_target_`` in
an original checkpoint's ``cfg.policy`` builds this class, and with the same module names so its
``state_dicts['ema_model']`` loads with ``strict=True``. It is built from the checkpoint's own
``cfg.policy`` (``shape_meta`` included); keyword names are the original's.

Conventions of the original, kept:
  * observations by ``shape_meta``: ``point_cloud`` ``(B, To, N, 6)`` (xyz + rgb in [0, 1]) and the
    low-dim keys ``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4, xyzw), ``robot0_gripper_qpos`` (2)
    (upstream ManiFlow: one ``agent_pos``). Every field, all 6 point channels included, is normalized
    by the checkpoint's equidiff normalizer; the colour channels are dropped after that unless
    ``use_pc_color``. When the three keys are not given, our envs' ``agent_pos`` (eef pos + eef quat
    of the grip SITE + gripper qpos) is split into them, the quaternion turned into the hand BODY's:
    robosuite <= 1.4 (MimicGen's data) recorded the body as ``robot0_eef_quat`` (1.5 keeps that key and
    adds ``robot0_eef_quat_site``); for the Panda the body is the site turned +90 deg about its z. A
    quaternion's sign is not fixed by the rotation: MuJoCo's body quaternion has x > 0 around the
    top-down poses of these tasks (x ~ 1), so that hemisphere is taken (exact on our rollouts; a hand
    turned ~180 deg in yaw away from them could get the other sign).
  * actions 10-d: pos(3) + rot6d(6) + gripper(1) with rot6d = the first two ROWS of the rotation
    matrix (pytorch3d ``matrix_to_rotation_6d``; ``action_rot6d='rows'``), returned unchanged by
    ``predict_action``; our datasets store columns (``action_rot6d='columns'`` for a policy trained
    on them). Evaluation converts rows to our envs' columns (:func:`equi_diffpo.env.rotation.rot6d_rows_to_columns`).
  * the flow-time direction is ``time_convention`` (see :mod:`.time_convention`): required, since
    the checkpoints do not record it.
  * sampling: Euler, ``num_inference_steps`` steps, relative target t; executed actions are
    ``action_pred[:, n_obs_steps-1 : n_obs_steps-1+n_action_steps]``; no clipping.
  * training: the batch is split ``flow_batch_ratio`` / rest; flow matching at ``t`` from
    ``sample_t_mode_flow`` (``beta``: 0.999 * Beta(1, 1.5), or ``uniform``) with target t 0; consistency
    flow at discrete ``t = i / denoise_timesteps`` and ``dt ~ U(0, 1)``, target from the EMA model's
    net fed the student's visual tokens (as the original). Unlike the original, the consistency
    share is the whole rest of the batch (the original's ``int()`` rounding could drop a sample and
    shift the teacher's tokens by one row).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from equi_diffpo.model.diffusion.ditx import DiTX
from equi_diffpo.model.equidiff_normalizer import EquidiffNormalizer
from equi_diffpo.model.vision_3d.pointnet_extractor import DP3Encoder
from equi_diffpo.policy.maniflow.time_convention import get_time_convention
from equi_diffpo.policy.noise_prior_mixin import NOISE_PRIOR_DEFAULTS, NoisePriorMixin

ROBOSUITE_STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
# Panda: hand body orientation = grip site orientation * Rz(+90 deg) (xyzw; measured, tests/test_maniflow_env.py).
SITE_TO_BODY_QUAT = (0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5))
# Keys of the original MimicGen cfg that the original forwarded to its net, which ignored them.
# ``canonicalization_mode`` only matters with ``use_canonicalization``, which is refused.
IGNORED_KWARGS = frozenset({"max_lang_cond_len", "pcd_input_channel", "pcd_down_sample_num", "crop_shape",
                            "canonicalization_mode"})
# Original options whose non-default values no point-cloud MimicGen checkpoint uses; refused, not ignored.
UNSUPPORTED = {"obs_as_global_cond": True, "block_type": "DiTX", "encoder_type": "DP3Encoder",
               "pointnet_type": "pointnet", "pre_norm_modality": False, "language_conditioned": False,
               "use_canonicalization": False, "sample_target_t_mode": "relative",
               "sample_t_mode_consistency": "discrete", "sample_dt_mode_consistency": "uniform"}


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of xyzw quaternions ``(..., 4)`` (rotation ``a`` then, in its frame, ``b``)."""
    ax, ay, az, aw = a.unbind(-1)
    bx, by, bz, bw = b.unbind(-1)
    return torch.stack([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz], dim=-1)


def agent_pos_to_robosuite_state(agent_pos: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Our ``agent_pos`` ``(..., 9)`` = eef pos, grip-site quat (xyzw), gripper qpos -> the original's
    ``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4: hand body, x >= 0 hemisphere), ``robot0_gripper_qpos`` (2)."""
    pos, site_quat, gripper = agent_pos.split([3, 4, 2], dim=-1)
    body_quat = quat_multiply(site_quat, site_quat.new_tensor(SITE_TO_BODY_QUAT))
    body_quat = torch.where(body_quat[..., :1] < 0, -body_quat, body_quat)
    return dict(zip(ROBOSUITE_STATE_KEYS, (pos, body_quat, gripper)))


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


class ManiFlowTransformerPointcloudPolicy(NoisePriorMixin, nn.Module):
    """See the module docstring. ``time_convention`` must be given (no default on purpose).

    ``noise_prior*`` (not the original's keys): a learnable
    :class:`~equi_diffpo.model.noise_prior.ConditionalNoisePrior` on ``x0``, added by RL fine-tuning and
    recorded in the RL checkpoint's ``cfg.policy`` (see :mod:`equi_diffpo.policy.noise_prior_mixin`).
    """

    def __init__(self, shape_meta: Mapping[str, Any], horizon: int, n_action_steps: int, n_obs_steps: int,
                 num_inference_steps: int = 10, time_convention: Optional[str] = None,
                 diffusion_timestep_embed_dim: int = 256, diffusion_target_t_embed_dim: int = 256,
                 visual_cond_len: int = 1024, n_layer: int = 3, n_head: int = 4, n_emb: int = 256,
                 qkv_bias: bool = False, qk_norm: bool = False, mlp_ratio: float = 4.0, p_drop_attn: float = 0.1,
                 encoder_output_dim: int = 256, use_pc_color: bool = False,
                 pointcloud_encoder_cfg: Optional[Mapping[str, Any]] = None, downsample_points: bool = False,
                 state_keys: Optional[Sequence[str]] = None, flow_batch_ratio: float = 0.75,
                 consistency_batch_ratio: float = 0.25, denoise_timesteps: int = 10,
                 sample_t_mode_flow: str = "beta", action_rot6d: str = "rows",
                 noise_prior: bool = NOISE_PRIOR_DEFAULTS["noise_prior"],
                 noise_prior_hidden: int = NOISE_PRIOR_DEFAULTS["noise_prior_hidden"],
                 noise_prior_std_min: float = NOISE_PRIOR_DEFAULTS["noise_prior_std_min"],
                 noise_prior_chunk_shift: bool = NOISE_PRIOR_DEFAULTS["noise_prior_chunk_shift"], **options: Any):
        super().__init__()
        self.time = get_time_convention(time_convention)
        for key, value in options.items():
            if key in UNSUPPORTED and _plain(value) != UNSUPPORTED[key]:
                raise ValueError(f"policy.{key}={value!r} is not supported (only {UNSUPPORTED[key]!r})")
            if key not in UNSUPPORTED and key not in IGNORED_KWARGS:
                raise TypeError(f"unknown policy option {key!r}")
        if abs(flow_batch_ratio + consistency_batch_ratio - 1.0) > 1e-6:
            raise ValueError("flow_batch_ratio + consistency_batch_ratio must be 1")
        if action_rot6d not in ("rows", "columns"):
            raise ValueError(f"action_rot6d={action_rot6d!r}; use 'rows' (the original's data) or 'columns' (ours)")
        if sample_t_mode_flow not in ("beta", "uniform"):
            raise ValueError(f"sample_t_mode_flow={sample_t_mode_flow!r}; use 'beta' or 'uniform'")
        shape_meta = _plain(shape_meta)
        action_shape = list(shape_meta["action"]["shape"])
        obs_meta = shape_meta["obs"]
        low_dim = {k: int(v["shape"][0]) for k, v in obs_meta.items() if v.get("type", "low_dim") == "low_dim"}
        if state_keys is None:
            state_keys = ["agent_pos"] if "agent_pos" in low_dim else list(ROBOSUITE_STATE_KEYS)
        enc_cfg = dict(_plain(pointcloud_encoder_cfg) or {})

        self._dummy_variable = nn.Parameter(torch.empty(0))   # the original's device anchor: a checkpoint key
        self.normalizer = EquidiffNormalizer()
        self.obs_encoder = DP3Encoder(
            low_dim, list(state_keys), out_channel=int(encoder_output_dim), use_pc_color=bool(use_pc_color),
            state_mlp_size=enc_cfg.get("state_mlp_size", (64, 64)), use_layernorm=enc_cfg.get("use_layernorm", False),
            final_norm=enc_cfg.get("final_norm", "none"), use_projection=enc_cfg.get("use_projection", True),
            pointwise=enc_cfg.get("pointwise", False), downsample_points=bool(downsample_points),
            num_points=enc_cfg.get("num_points", obs_meta["point_cloud"]["shape"][0]))
        self.action_dim = math.prod(int(d) for d in action_shape)
        self.model = DiTX(self.action_dim, self.action_dim, horizon, n_obs_steps, self.obs_encoder.output_dim,
                          visual_cond_len, diffusion_timestep_embed_dim, diffusion_target_t_embed_dim, n_layer,
                          n_head, n_emb, mlp_ratio, p_drop_attn, qkv_bias, qk_norm)
        self.state_keys = list(state_keys)
        self.use_pc_color = bool(use_pc_color)
        self.horizon, self.n_action_steps, self.n_obs_steps = int(horizon), int(n_action_steps), int(n_obs_steps)
        self.num_inference_steps = int(num_inference_steps)
        self.flow_batch_ratio, self.denoise_timesteps = float(flow_batch_ratio), int(denoise_timesteps)
        self.sample_t_mode_flow = sample_t_mode_flow
        self.time_convention = self.time.name
        self.action_rot6d = action_rot6d
        self._task_dims = {"point_dim": int(obs_meta["point_cloud"]["shape"][-1]),
                           "agent_pos_dim": sum(low_dim[k] for k in self.state_keys), "action_dim": self.action_dim}
        # What RL may change or the loader states, beyond the checkpoint's own cfg.policy (get_policy_config).
        self._config = dict(time_convention=self.time.name, noise_prior=bool(noise_prior),
                            noise_prior_hidden=int(noise_prior_hidden), noise_prior_std_min=float(noise_prior_std_min),
                            noise_prior_chunk_shift=bool(noise_prior_chunk_shift))
        self.noise_prior = self._build_noise_prior() if noise_prior else None
        self.residual_head = None   # residual RL (rl_policy=residual) is for the U-Net policy only

    def get_policy_config(self) -> Dict[str, Any]:
        """The ctor kwargs RL adds (noise prior) or the loader states (``time_convention``): merged over the
        pretrained checkpoint's ``cfg.policy``, they rebuild this policy (the RL workspace's checkpoints)."""
        return dict(self._config)

    def task_dims(self) -> Dict[str, int]:
        """``point_dim`` (channels of ``shape_meta``'s point cloud), ``agent_pos_dim`` (the state keys' widths
        summed: 9 for our ``agent_pos`` or the three robosuite keys it is split into) and ``action_dim``."""
        return dict(self._task_dims)

    @property
    def velocity_net(self) -> DiTX:
        """The flow's velocity network under the name the RL views freeze or train (``model`` in checkpoints)."""
        return self.model

    @property
    def device(self) -> torch.device:
        return self._dummy_variable.device

    def set_normalizer(self, normalizer: EquidiffNormalizer) -> None:
        self.normalizer.load_state_dict(normalizer.state_dict())

    # ----- observations -----
    def normalize_obs(self, obs_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Raw obs ``(B, To>=n_obs_steps, ...)`` -> the normalized first ``n_obs_steps`` frames of
        ``point_cloud`` (colour dropped unless ``use_pc_color``) and the state keys."""
        obs = dict(obs_dict)
        missing = [k for k in self.state_keys if k not in obs]
        if missing and "agent_pos" in obs and self.state_keys == list(ROBOSUITE_STATE_KEYS):
            obs.update(agent_pos_to_robosuite_state(obs["agent_pos"]))
        elif missing:
            raise KeyError(f"observation lacks {missing} (has {sorted(obs)})")
        if obs["point_cloud"].shape[1] < self.n_obs_steps:
            raise ValueError(f"need at least {self.n_obs_steps} obs frames, got {obs['point_cloud'].shape[1]}")
        nobs = {k: self.normalizer[k].normalize(obs[k][:, :self.n_obs_steps].to(self.device))
                for k in ("point_cloud", *self.state_keys)}
        if not self.use_pc_color:
            nobs["point_cloud"] = nobs["point_cloud"][..., :3]
        return nobs

    def encode_obs(self, obs_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw obs -> visual tokens ``(B, n_obs_steps * N, obs_encoder.output_dim)``."""
        nobs = self.normalize_obs(obs_dict)
        batch = nobs["point_cloud"].shape[0]
        tokens = self.obs_encoder({k: v.flatten(0, 1) for k, v in nobs.items()})   # (B * To, N, D)
        return tokens.reshape(batch, -1, tokens.shape[-1])

    @property
    def cond_dim(self) -> int:
        """Width of :meth:`cond_features`: ``n_obs_steps * obs_encoder.output_dim``."""
        return self.n_obs_steps * self.obs_encoder.output_dim

    def cond_features(self, cond: torch.Tensor) -> torch.Tensor:
        """Visual tokens ``(B, n_obs_steps * N, D)`` -> one vector ``(B, n_obs_steps * D)`` for the RL heads
        (noise prior, chain noise head, policy-feature critic), which take a vector, not a sequence.

        Max over each frame's points, frames concatenated: DP3's own global feature (its non-pointwise
        encoder max-pools the same per-point features), and the state features, repeated on every point
        token, come through unchanged. With a non-pointwise encoder (one token per frame) it is the identity.
        """
        return cond.reshape(cond.shape[0], self.n_obs_steps, -1, cond.shape[-1]).amax(dim=2).flatten(1)

    # ----- sampling -----
    def step_size(self) -> float:
        return 1.0 / self.num_inference_steps

    def euler_mean(self, x: torch.Tensor, k: int, cond: torch.Tensor) -> torch.Tensor:
        """Euler step ``k`` of ``num_inference_steps`` on the normalized chunk ``x (B, horizon, Da)``."""
        dt = self.step_size()
        t = self.time.sample_times(self.num_inference_steps, x.dtype, x.device)[k]
        v = self.model(x, torch.ones(x.shape[0], device=x.device) * t,
                       torch.tensor([self.time.sample_target_t(dt)], dtype=torch.float32, device=x.device), cond)
        return self.time.euler_step(x, v, dt)

    def decode_actions(self, naction: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Normalized chunk ``(B, horizon, Da)`` -> raw ``{'action': (B, n_action_steps, Da), 'action_pred'}``."""
        action_pred = self.normalizer["action"].unnormalize(naction)
        start = self.n_obs_steps - 1
        return {"action": action_pred[:, start:start + self.n_action_steps], "action_pred": action_pred}

    @torch.no_grad()
    def predict_action(self, obs_dict: Mapping[str, torch.Tensor],
                       noise: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Raw obs -> raw actions. ``noise`` ``(B, horizon, Da)``: the initial N(0, I) draw (fresh if None),
        pushed through the noise prior when RL gave the policy one."""
        cond = self.encode_obs(obs_dict)
        x = self.initial_noise(cond, noise)
        for k in range(self.num_inference_steps):
            x = self.euler_mean(x, k, cond)
        return self.decode_actions(x)

    # ----- training -----
    def _flow_times(self, n: int, device: torch.device) -> torch.Tensor:
        if self.sample_t_mode_flow == "uniform":
            return torch.rand(n, device=device)
        return 0.999 * torch.distributions.Beta(torch.tensor(1.0), torch.tensor(1.5)).sample((n,)).to(device)

    def compute_loss(self, batch: Dict[str, Any], ema_model: Optional["ManiFlowTransformerPointcloudPolicy"] = None
                     ) -> tuple[torch.Tensor, Dict[str, float]]:
        """Flow (+ consistency-flow) loss. batch: ``{'obs': {...(B, T, ...)}, 'action': (B, horizon, Da)}``.

        ``ema_model`` gives the consistency targets (``None``: this model without gradient).
        Returns ``(loss, info)``, info keys ``loss``, ``loss_flow``, ``loss_consistency``.
        """
        cond = self.encode_obs(batch["obs"])
        data = self.normalizer["action"].normalize(batch["action"].to(self.device))
        noise = torch.randn_like(data)
        n_flow = int(data.shape[0] * self.flow_batch_ratio)
        t = self._flow_times(n_flow, data.device)
        x_t = self.time.interpolate(noise[:n_flow], data[:n_flow], t.view(-1, 1, 1))
        v_pred = self.model(x_t, t, torch.zeros(n_flow, device=data.device), cond[:n_flow])
        loss_flow = F.mse_loss(v_pred, self.time.velocity(noise[:n_flow], data[:n_flow]))
        loss_ct = data.new_zeros(())
        if self.time.trains_consistency and n_flow < data.shape[0]:
            loss_ct = self._consistency_loss(noise[n_flow:], data[n_flow:], cond[n_flow:], ema_model or self)
        loss = loss_flow + loss_ct
        return loss, {"loss": loss.item(), "loss_flow": loss_flow.item(), "loss_consistency": loss_ct.item()}

    def _consistency_loss(self, noise: torch.Tensor, data: torch.Tensor, cond: torch.Tensor,
                          teacher: "ManiFlowTransformerPointcloudPolicy") -> torch.Tensor:
        """Student at ``(x_t, t, dt)`` regressed onto the velocity to the teacher's endpoint from ``t + dt``."""
        n = data.shape[0]
        t = torch.randint(0, self.denoise_timesteps, (n,), device=data.device).float() / self.denoise_timesteps
        dt = torch.rand(n, device=data.device)
        t_next = (t + dt).clamp(max=1.0)
        x_t = self.time.interpolate(noise, data, t.view(-1, 1, 1))
        x_next = self.time.interpolate(noise, data, t_next.view(-1, 1, 1))
        with torch.no_grad():
            v_teacher = teacher.model(x_next, t_next, dt, cond)
            v_target = self.time.consistency_target(x_t, t.view(-1, 1, 1), x_next, t_next.view(-1, 1, 1), v_teacher)
        return F.mse_loss(self.model(x_t, t, dt, cond), v_target)
