"""ManiFlow point-cloud policy: PointNet obs encoder + flow velocity network over action chunks.

Time convention (``policy.time_convention == 't0_noise_t1_data'``, also stored in the checkpoint
cfg through ``get_policy_config``): ``t`` runs from 0 (pure noise ``x0 ~ N(0, I)``) to 1 (data
``x1`` = normalized action chunk); ``x_t = (1 - t) x0 + t x1``; the velocity target is
``v = x1 - x0``; sampling integrates with Euler from ``t = 0`` in ``num_inference_steps`` equal
steps. This is ManiFlow's direction; the seed fork flipped it, so its checkpoints don't load here.

Training (ManiFlow's consistency flow matching), on one batch split in two:
  * a ``flow_batch_ratio`` share gets the plain flow-matching loss at a uniform ``t`` with step
    ``dt = 0`` (instantaneous velocity);
  * the rest gets a consistency loss: ``t`` on a grid of ``consistency_t_steps`` points in [0, 1),
    ``Δ ~ U(0, consistency_delta)``, ``t' = min(t + Δ, 1)``. A teacher (the EMA model, or the model
    itself without gradient) predicts the average velocity from ``x_t'`` with step Δ, which gives
    an estimate of the endpoint ``x̂1 = x_t' + (1 - t') v_teacher``; the student at ``(x_t, t, Δ)``
    is regressed onto ``(x̂1 - x_t) / (1 - t)``. The net thereby learns velocities that stay accurate
    for large steps, so 1-2 Euler steps (``dt = 1/K`` is passed to the net) give good actions.
    The teacher uses its own obs encoder (ManiFlow feeds the student's features to the EMA net;
    using the EMA encoder keeps the teacher one consistent, slowly moving function).
With ``prediction='sample'`` the net's output is the clean chunk (``velocity_net`` still returns a
velocity, see :mod:`equi_diffpo.model.velocity_net`) and both losses compare the chunks the
velocities lead to, ``x_t + (1 - t) v``, instead of the velocities.

Data shapes (raw, un-normalized):
  obs ``point_cloud`` ``(B, To, N, C)``, ``agent_pos`` ``(B, To, agent_pos_dim)``;
  action ``(B, horizon, action_dim)``; only the first ``n_obs_steps`` obs frames are used.
Executed actions are ``action_pred[:, n_obs_steps-1 : n_obs_steps-1+n_action_steps]``.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from equi_diffpo.model.chunk_selector import ChunkSelector
from equi_diffpo.model.normalizer import LinearNormalizer
from equi_diffpo.model.pointnet_encoder import ObsEncoder
from equi_diffpo.model.residual_head import ResidualHead
from equi_diffpo.model.velocity_net import ConditionalUnet1D
from equi_diffpo.policy.noise_prior_mixin import NoisePriorMixin

TIME_CONVENTION = "t0_noise_t1_data"


class ManiFlowPointcloudPolicy(NoisePriorMixin, nn.Module):
    """See the module docstring. All ctor arguments are plain numbers/lists so hydra can build it."""

    time_convention = TIME_CONVENTION
    action_rot6d = "columns"   # our datasets' rot6d layout: what the envs take

    def __init__(self, point_dim: int = 3, agent_pos_dim: int = 9, action_dim: int = 7,
                 horizon: int = 16, n_action_steps: int = 8, n_obs_steps: int = 2,
                 num_inference_steps: int = 2, flow_batch_ratio: float = 0.75,
                 consistency_delta: float = 1.0, consistency_t_steps: int = 10,
                 encoder_output_dim: int = 128, state_output_dim: int = 64,
                 pointnet_hidden: Sequence[int] = (64, 128, 256),
                 down_dims: Sequence[int] = (64, 128), kernel_size: int = 5,
                 time_embed_dim: int = 64, n_groups: int = 8, clip_sample: bool = True,
                 time_convention: str = TIME_CONVENTION, prediction: str = "velocity", noise_prior: bool = False,
                 noise_prior_hidden: int = 256, noise_prior_std_min: float = 0.1,
                 noise_prior_chunk_shift: bool = False, residual: bool = False, residual_hidden: int = 256,
                 residual_scale: float = 0.1, residual_std_init: float = 0.5, residual_std_min: float = 0.05,
                 residual_per_chunk: bool = False, flow_sampling: bool = False, selector: bool = False,
                 selector_candidates: int = 16, selector_hidden: int = 256):
        """``noise_prior``: draw ``x0`` from a learnable :class:`ConditionalNoisePrior` instead of
        ``N(0, I)`` (added by RL fine-tuning; identical to ``N(0, I)`` until trained). ``residual``: add a
        :class:`ResidualHead`'s mean correction to the executed actions (added by residual RL; zero until
        trained). ``flow_sampling``: integrate the instantaneous velocity (``dt = 0`` passed to the net, the
        flow-matching branch) instead of the consistency branch's average velocity over each step; set by
        ``rl_policy=fpo``, whose flow-matching ratio trains that branch (on the shipped lift_d0 checkpoint both
        samplers give the same success: 0.34 vs 0.36 over 50 episodes at K=2). ``selector``: draw
        ``selector_candidates`` chunks and execute the one a :class:`ChunkSelector` scores highest (added by
        ``rl_policy=select``; until trained every score is 0 and the first draw is taken)."""
        super().__init__()
        if time_convention != TIME_CONVENTION:
            raise ValueError(f"this policy integrates {TIME_CONVENTION!r}; a config/checkpoint with "
                             f"time_convention={time_convention!r} is not compatible")
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(f"n_obs_steps - 1 + n_action_steps ({n_obs_steps - 1 + n_action_steps}) "
                             f"exceeds horizon ({horizon})")
        self._config = dict(
            point_dim=int(point_dim), agent_pos_dim=int(agent_pos_dim), action_dim=int(action_dim),
            horizon=int(horizon), n_action_steps=int(n_action_steps), n_obs_steps=int(n_obs_steps),
            num_inference_steps=int(num_inference_steps), flow_batch_ratio=float(flow_batch_ratio),
            consistency_delta=float(consistency_delta), consistency_t_steps=int(consistency_t_steps),
            encoder_output_dim=int(encoder_output_dim), state_output_dim=int(state_output_dim),
            pointnet_hidden=[int(h) for h in pointnet_hidden], down_dims=[int(d) for d in down_dims],
            kernel_size=int(kernel_size), time_embed_dim=int(time_embed_dim), n_groups=int(n_groups),
            clip_sample=bool(clip_sample), time_convention=TIME_CONVENTION, prediction=str(prediction),
            noise_prior=bool(noise_prior),
            noise_prior_hidden=int(noise_prior_hidden), noise_prior_std_min=float(noise_prior_std_min),
            noise_prior_chunk_shift=bool(noise_prior_chunk_shift), residual=bool(residual),
            residual_hidden=int(residual_hidden), residual_scale=float(residual_scale),
            residual_std_init=float(residual_std_init), residual_std_min=float(residual_std_min),
            residual_per_chunk=bool(residual_per_chunk), flow_sampling=bool(flow_sampling), selector=bool(selector),
            selector_candidates=int(selector_candidates), selector_hidden=int(selector_hidden))
        c = self._config
        self.action_dim, self.horizon = c["action_dim"], c["horizon"]
        self.n_action_steps, self.n_obs_steps = c["n_action_steps"], c["n_obs_steps"]
        self.num_inference_steps = c["num_inference_steps"]
        self.flow_batch_ratio = c["flow_batch_ratio"]
        self.consistency_delta, self.consistency_t_steps = c["consistency_delta"], c["consistency_t_steps"]
        self.clip_sample = c["clip_sample"]

        self.normalizer = LinearNormalizer()
        self.obs_encoder = ObsEncoder(c["point_dim"], c["agent_pos_dim"], c["n_obs_steps"],
                                      c["encoder_output_dim"], c["state_output_dim"], c["pointnet_hidden"])
        self.velocity_net = ConditionalUnet1D(c["action_dim"], self.obs_encoder.output_dim, c["horizon"],
                                              c["down_dims"], c["time_embed_dim"], c["kernel_size"],
                                              c["n_groups"], c["prediction"])
        self.noise_prior = self._build_noise_prior() if c["noise_prior"] else None
        self.residual_head = self._build_residual_head() if c["residual"] else None
        self.chunk_selector = self._build_chunk_selector() if c["selector"] else None
        if self.chunk_selector is not None and self.residual_head is not None:
            raise ValueError("a policy takes a chunk selector or a residual head, not both")

    # ----- configuration / normalizer -----
    def get_policy_config(self) -> Dict[str, Any]:
        """Ctor kwargs (``time_convention`` included) for checkpoint-compatibility checks;
        ``ManiFlowPointcloudPolicy(**policy.get_policy_config())`` rebuilds the same architecture."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    def task_dims(self) -> Dict[str, int]:
        """``point_dim``, ``agent_pos_dim``, ``action_dim``: what a task's envs must give and take."""
        return {k: self._config[k] for k in ("point_dim", "agent_pos_dim", "action_dim")}

    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        """Copy ``normalizer``'s fields into ours (kept as the same module, so EMA copies match)."""
        self.normalizer.load_state_dict(normalizer.state_dict())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ----- shared pieces (also used by the RL view) -----
    def normalize_obs(self, obs_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Raw obs ``(B, To>=n_obs_steps, ...)`` -> normalized first ``n_obs_steps`` frames."""
        n_frames = obs_dict["agent_pos"].shape[1]
        if n_frames < self.n_obs_steps:
            raise ValueError(f"need at least {self.n_obs_steps} obs frames, got {n_frames}")
        obs = {k: obs_dict[k][:, : self.n_obs_steps].to(self.device) for k in ("point_cloud", "agent_pos")}
        return self.normalizer.normalize(obs)

    def encode_obs(self, obs_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw obs -> conditioning ``(B, obs_encoder.output_dim)``."""
        return self.obs_encoder(self.normalize_obs(obs_dict))

    @property
    def cond_dim(self) -> int:
        """Width of ``cond_features``: the obs encoder's output (the U-Net's global conditioning)."""
        return self.obs_encoder.output_dim

    def cond_features(self, cond: torch.Tensor) -> torch.Tensor:
        """``cond`` ``(B, cond_dim)`` as the RL heads read it: already one vector per sample."""
        return cond

    def enable_residual(self, hidden: int = 256, scale: float = 0.1, std_init: float = 0.5,
                        std_min: float = 0.05, per_chunk: bool = False) -> None:
        """Add a (still zero) residual head to a policy trained without one; recorded in
        ``get_policy_config`` so checkpoints rebuild it. No-op if the policy already has one."""
        if self.residual_head is not None:
            return
        self._config.update(residual=True, residual_hidden=int(hidden), residual_scale=float(scale),
                            residual_std_init=float(std_init), residual_std_min=float(std_min),
                            residual_per_chunk=bool(per_chunk))
        self.residual_head = self._build_residual_head().to(self.device)

    def _build_residual_head(self) -> ResidualHead:
        c = self._config
        return ResidualHead(self.obs_encoder.output_dim, c["action_dim"], c["n_action_steps"], c["n_obs_steps"] - 1,
                            c["residual_hidden"], c["residual_scale"], c["residual_std_init"], c["residual_std_min"],
                            c["residual_per_chunk"])

    def enable_chunk_selector(self, n_candidates: int = 16, hidden: int = 256) -> None:
        """Add a (still uniform) chunk selector to a policy trained without one; recorded in
        ``get_policy_config`` so checkpoints rebuild it. No-op if the policy already has one."""
        if self.chunk_selector is not None:
            return
        if self.residual_head is not None:
            raise ValueError("this policy has a residual head; chunk selection would ignore it: fine-tune it "
                             "with rl_policy=residual")
        self._config.update(selector=True, selector_candidates=int(n_candidates), selector_hidden=int(hidden))
        self.chunk_selector = self._build_chunk_selector().to(self.device)

    def _build_chunk_selector(self) -> ChunkSelector:
        c = self._config
        return ChunkSelector(self.obs_encoder.output_dim, c["action_dim"], c["n_action_steps"], c["n_obs_steps"] - 1,
                             c["selector_candidates"], c["selector_hidden"])

    @property
    def noise_shape(self) -> tuple:
        """Shape of one observation's standard-normal draw for :meth:`predict_action`: ``(horizon, Da)``, or
        ``(N, horizon, Da)`` with a chunk selector (one ``x0`` per candidate)."""
        if self.chunk_selector is not None:
            return (self.chunk_selector.n_candidates, self.horizon, self.action_dim)
        return (self.horizon, self.action_dim)

    def candidate_chunks(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The deterministic flow from each of ``N`` draws: cond ``(B, cond_dim)``, noise ``(B, N, horizon, Da)``
        standard normal -> final normalized chunks ``(B, N, horizon, Da)`` (unclamped)."""
        B, N = noise.shape[:2]
        cond_rep = cond.repeat_interleave(N, dim=0)
        x = self.initial_noise(cond_rep, noise.flatten(0, 1))
        for k in range(self.num_inference_steps):
            x = self.euler_mean(x, k, cond_rep)
        return x.view(B, N, self.horizon, self.action_dim)

    def step_size(self) -> float:
        """Euler step ``dt = 1 / num_inference_steps``."""
        return 1.0 / self.num_inference_steps

    def euler_mean(self, x: torch.Tensor, k: int, cond: torch.Tensor) -> torch.Tensor:
        """Deterministic Euler step ``k``: ``x + v(x, t_k, dt, cond) * dt`` with ``t_k = k * dt``.

        x: ``(B, horizon, action_dim)`` normalized. The RL view uses this as its transition mean,
        so its deterministic mode equals :meth:`predict_action` bit for bit.
        """
        dt = self.step_size()
        return x + self.velocity_net(x, k * dt, 0.0 if self._config["flow_sampling"] else dt, cond) * dt

    def enable_flow_sampling(self) -> None:
        """Sample with the flow-matching branch from now on (recorded in ``get_policy_config``)."""
        self._config["flow_sampling"] = True

    def decode_actions(self, naction: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Final normalized chunk ``(B, horizon, Da)`` -> ``{'action', 'action_pred'}`` raw.

        With ``clip_sample`` the chunk is clamped to [-1, 1] first: the normalizer maps the
        training actions' min/max to ±1, so clamping only removes extrapolation beyond the demos
        (diffusion_policy's ``clip_sample``). The RL chain is stored unclamped.
        """
        if self.clip_sample:
            naction = naction.clamp(-1.0, 1.0)
        action_pred = self.normalizer["action"].unnormalize(naction)
        start = self.n_obs_steps - 1
        return {"action": action_pred[:, start:start + self.n_action_steps], "action_pred": action_pred}

    # ----- inference -----
    @torch.no_grad()
    def predict_action(self, obs_dict: Dict[str, torch.Tensor],
                       noise: torch.Tensor | None = None) -> Dict[str, torch.Tensor]:
        """Raw obs dict -> ``{'action': (B, n_action_steps, Da), 'action_pred': (B, horizon, Da)}``.

        ``noise`` ``(B, *noise_shape)`` is the standard-normal draw behind ``x0`` (``x0`` itself
        without a noise prior); given it, the output is deterministic. With a residual head its mean
        correction is added to the executed steps (the exploration noise is RL's only); with a chunk
        selector the highest-scored of the candidates is executed (the first on a tie).
        """
        cond = self.encode_obs(obs_dict)
        if self.chunk_selector is not None:
            if noise is None:
                noise = torch.randn(cond.shape[0], *self.noise_shape, device=cond.device)
            candidates = self.candidate_chunks(cond, noise.to(device=cond.device, dtype=cond.dtype))
            best = self.chunk_selector(cond, candidates).argmax(dim=1)
            return self.decode_actions(candidates[torch.arange(cond.shape[0], device=cond.device), best])
        x = self.initial_noise(cond, noise)
        for k in range(self.num_inference_steps):
            x = self.euler_mean(x, k, cond)
        if self.residual_head is not None:
            x = self.residual_head.add_to_chunk(x, self.residual_head(cond, x)[0])
        return self.decode_actions(x)

    # ----- training -----
    def compute_loss(self, batch: Dict[str, Any], ema_model: "ManiFlowPointcloudPolicy | None" = None
                     ) -> tuple[torch.Tensor, Dict[str, float]]:
        """Flow + consistency-flow loss. batch: ``{'obs': {...(B, T, ...)}, 'action': (B, horizon, Da)}``.

        ``ema_model`` provides the consistency targets; ``None`` uses this model without gradient.
        Returns ``(loss, info)`` with info keys ``loss``, ``loss_flow``, ``loss_consistency``.
        """
        nobs = self.normalize_obs(batch["obs"])
        x1 = self.normalizer["action"].normalize(batch["action"].to(self.device))
        cond = self.obs_encoder(nobs)
        x0 = torch.randn_like(x1)
        batch_size = x1.shape[0]
        n_flow = int(batch_size * self.flow_batch_ratio)

        # Flow matching: instantaneous velocity (dt = 0) at uniform t.
        t = torch.rand(n_flow, 1, 1, device=x1.device)
        x_t = (1 - t) * x0[:n_flow] + t * x1[:n_flow]
        v_pred = self.velocity_net(x_t, t.flatten(), 0.0, cond[:n_flow])
        loss_flow = self._regression_loss(v_pred, x1[:n_flow] - x0[:n_flow], t) if n_flow > 0 else x1.new_zeros(())

        loss_ct = x1.new_zeros(())
        if n_flow < batch_size:
            loss_ct = self._consistency_loss(x0[n_flow:], x1[n_flow:], cond[n_flow:],
                                             {k: v[n_flow:] for k, v in nobs.items()}, ema_model)
        loss = loss_flow + loss_ct
        info = {"loss": loss.item(), "loss_flow": loss_flow.item(), "loss_consistency": loss_ct.item()}
        return loss, info

    def _consistency_loss(self, x0: torch.Tensor, x1: torch.Tensor, cond: torch.Tensor,
                          nobs: Dict[str, torch.Tensor], ema_model: "ManiFlowPointcloudPolicy | None"
                          ) -> torch.Tensor:
        """Student at (x_t, t, Δ) regressed onto the teacher's endpoint estimate from t' = t + Δ."""
        n = x1.shape[0]
        # t on a grid in [0, 1) so 1 - t >= 1 / consistency_t_steps (no division blow-up) and the
        # inference times k / K are hit exactly when K divides consistency_t_steps.
        t = torch.randint(0, self.consistency_t_steps, (n, 1, 1), device=x1.device) / self.consistency_t_steps
        delta = torch.rand(n, device=x1.device) * self.consistency_delta
        t_next = (t + delta.view(-1, 1, 1)).clamp(max=1.0)
        x_t = (1 - t) * x0 + t * x1
        x_t_next = (1 - t_next) * x0 + t_next * x1

        teacher = ema_model if ema_model is not None else self
        with torch.no_grad():
            teacher_cond = teacher.obs_encoder(nobs)
            v_teacher = teacher.velocity_net(x_t_next, t_next.flatten(), delta, teacher_cond)
            x1_hat = x_t_next + (1 - t_next) * v_teacher
            v_target = (x1_hat - x_t) / (1 - t)
        v_pred = self.velocity_net(x_t, t.flatten(), delta, cond)
        return self._regression_loss(v_pred, v_target, t)

    def _regression_loss(self, v_pred: torch.Tensor, v_target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """MSE of velocities ``(n, horizon, Da)`` at times ``t`` ``(n, 1, 1)``; with ``prediction='sample'`` of
        the clean chunks they lead to, ``x_t + (1 - t) v`` (the velocity error times ``1 - t``), so every t
        weighs alike instead of ``1 / (1 - t)^2``."""
        if self._config["prediction"] == "sample":
            return F.mse_loss(v_pred * (1 - t), v_target * (1 - t))
        return F.mse_loss(v_pred, v_target)
