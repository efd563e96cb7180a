"""A robosuite task with point-cloud + ``agent_pos`` observations and 10-d absolute actions.

Control: Panda, OSC_POSE with *absolute* world-frame targets (equidiff lineage): the controller
tracks ``gripper0_right_grip_site``, so orientation in ``agent_pos`` is ``robot0_eef_quat_site``
(``robot0_eef_quat`` is 90 deg off from the controller frame). Policy actions are
pos(3) + rot6d(6) + gripper(1) (see :mod:`equi_diffpo.env.rotation`).
Observation: ``point_cloud`` (N, 3|6) float32 world frame, ``agent_pos`` (9,) = eef pos(3),
eef quat xyzw(4), gripper finger qpos(2); ``privileged`` (P,) = robosuite's ``object-state`` (object poses,
gripper-to-object vectors) + the elapsed fraction of the episode, for an asymmetric critic only (the
simulator's own state: the policy never reads it, so a trained policy still runs on point clouds alone).
Reward: robosuite's sparse success reward (1.0 on success), episodes terminate on success.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from equi_diffpo.env.point_cloud import (CameraPointCloud, GeomPoses, MeshPointCloud, PointCloudConfig,  # noqa: E402
                                          downsample_points)
from equi_diffpo.env.rotation import POLICY_ACTION_DIM, policy_action_to_env_action  # noqa: E402
from equi_diffpo.env.task_registry import episode_limit, get_task, resolve_env_name  # noqa: E402

AGENT_POS_DIM = 9
VIDEO_CAMERA = "agentview"


# robosuite draws the model's own randomization (e.g. Lift's cube edge in [2.0, 2.2] cm) from the env's rng
# once, when the env is built, and keeps it (``hard_reset=False``). Seeded per worker, every worker built a
# different cube, so an episode's outcome depended on which worker ran it: all envs build the same model.
MODEL_SEED = 0


def _quiet_robosuite() -> None:
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("robosuite"):
            logging.getLogger(name).setLevel(logging.ERROR)


def absolute_pose_controller_config() -> Dict[str, Any]:
    """robosuite 1.5 BASIC composite config with the arm's OSC_POSE in absolute world frame."""
    from robosuite.controllers import load_composite_controller_config

    cfg = load_composite_controller_config(controller="BASIC", robot="Panda")
    arm = cfg["body_parts"]["right"]
    arm["input_type"] = "absolute"
    arm["input_ref_frame"] = "world"
    # Only the arm exists on a Panda: drop the other body parts so robosuite doesn't warn each make.
    cfg["body_parts"] = {"right": arm}
    return cfg


def apply_fast_render_settings(env, size: int) -> None:
    """No shadows/reflections/skybox, no MSAA, small offscreen buffer: ~3x faster on Mesa llvmpipe."""
    ctx = env.sim._render_context_offscreen
    model = env.sim.model._model
    for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
        ctx.scn.flags[flag] = 0
    model.vis.quality.offsamples = 0
    model.vis.quality.shadowsize = 256
    model.vis.global_.offwidth = size    # every render of this env is at most ``size`` square
    model.vis.global_.offheight = size
    ctx._set_mujoco_context_and_buffers()


@dataclass
class PendingObs:
    """One frame's observation whose point cloud is not built yet (:meth:`RobosuitePointCloudEnv.complete` builds it).

    Why: a chunked env executes ``n_action_steps`` (8) actions, but the policy reads only the last
    ``n_obs_steps`` (2) frames; the cloud is ~0.6 ms, a third of an env step. What the cloud needs is kept
    instead, so a completed frame equals the one an eager step would have returned.
    ``agent_pos`` (9,), ``privileged`` (P,) float32; ``cloud_input``: the mesh source's geom poses, or the
    camera source's cropped cloud (M, C) (its images exist only at this step); ``draw_key``: seeds this
    frame's downsampling (see :meth:`RobosuitePointCloudEnv.draw_key`)."""
    agent_pos: np.ndarray
    privileged: np.ndarray
    cloud_input: GeomPoses | np.ndarray
    draw_key: Tuple[int, int, int]


class RobosuitePointCloudEnv:
    """One robosuite env. ``step`` takes a policy action (10,), ``step_env_action`` a robosuite one (7,)."""

    def __init__(self, task_name: str, point_cloud: PointCloudConfig | Dict[str, Any] | None = None,
                 max_episode_steps: Optional[int] = None, render_size: Optional[int] = None, seed: Optional[int] = None,
                 reward_shaping: bool = False, fast_control: bool = True):
        """``reward_shaping``: robosuite's dense staged reward (e.g. Lift: reaching + grasping) instead
        of the sparse success reward; success then counts as an absorbing state (see ``step_env_action``).
        ``fast_control``: run the controller substeps of each step in compiled code
        (:mod:`equi_diffpo.env.fast_control`, bit-identical to ``env.step``, ~4x faster)."""
        import robosuite

        _quiet_robosuite()
        self.spec = get_task(task_name)
        self.task_name = task_name
        self.pc_cfg = point_cloud if isinstance(point_cloud, PointCloudConfig) else PointCloudConfig(**(point_cloud or {}))
        self.max_episode_steps = int(max_episode_steps or episode_limit(task_name))
        self.render_size = render_size
        self.reward_shaping = bool(reward_shaping)
        use_camera = self.pc_cfg.source == "camera"
        self.env_kwargs: Dict[str, Any] = dict(
            robots="Panda", controller_configs=absolute_pose_controller_config(), control_freq=20,
            use_camera_obs=use_camera, has_renderer=False, has_offscreen_renderer=use_camera or render_size is not None,
            camera_names=list(self.pc_cfg.camera_names) if use_camera else VIDEO_CAMERA,
            camera_heights=self.pc_cfg.camera_size, camera_widths=self.pc_cfg.camera_size,
            camera_depths=use_camera, reward_shaping=self.reward_shaping, ignore_done=True, hard_reset=False,
            **self.spec.env_kwargs,
        )
        self.env_name = resolve_env_name(self.spec)
        # robosuite.make's seed fixes the model (see MODEL_SEED); ``reset(seed)`` seeds each episode.
        self.env = robosuite.make(self.env_name, seed=MODEL_SEED, **self.env_kwargs)
        self._rng = np.random.default_rng(seed)     # draws one key per episode (seeded by ``seed``)
        self._episode_key = 0
        self._restores = 0                          # ``reset_to`` calls in this episode
        if self.env.has_offscreen_renderer:  # depth cameras and/or videos
            self.env.reset()  # creates the offscreen context that the fast settings rebuild
            apply_fast_render_settings(self.env, max(self.pc_cfg.camera_size if use_camera else 0, render_size or 0))
        self._mesh_cloud = MeshPointCloud(self.env.sim.model._model, self.pc_cfg, seed=0) if not use_camera else None
        self._camera_cloud = CameraPointCloud(self.pc_cfg) if use_camera else None
        self.fast_control = bool(fast_control)
        self._fast_step = None
        if self.fast_control:
            from equi_diffpo.env.fast_control import FastOSCStep   # raises if it cannot reproduce this env
            self._fast_step = FastOSCStep(self.env)
        self.raw_obs: Dict[str, np.ndarray] = {}
        self.steps = 0

    # ------------------------------------------------------------------ observations
    def draw_key(self) -> Tuple[int, int, int]:
        """Seed of the current frame's downsampling draw: (episode key, env step, ``reset_to`` calls).

        Why not one stream per episode: a frame's cloud must not depend on which earlier frames were built
        (:class:`PendingObs` skips most of them). The episode key comes from the ``seed`` of ``reset``;
        ``reset_to`` counts separately so that a demo's replayed states (all at step 0) draw differently."""
        return self._episode_key, self.steps, self._restores

    def _pending_observation(self, raw_obs: Dict[str, np.ndarray]) -> PendingObs:
        """The frame of the current sim state with its cloud deferred (cheap: copies of geom poses)."""
        self.raw_obs = raw_obs
        if self._mesh_cloud is not None:
            cloud_input = self._mesh_cloud.poses(self.env.sim.data._data)
        else:
            cloud_input = self._camera_cloud(self.env.sim, raw_obs)
        agent_pos = np.concatenate([raw_obs["robot0_eef_pos"], raw_obs["robot0_eef_quat_site"], raw_obs["robot0_gripper_qpos"]])
        # The elapsed fraction: with a time limit (and the shaped reward's finite-horizon success bonus)
        # the value of a state depends on the time left (Pardo et al. 2018, "Time Limits in RL").
        privileged = np.append(raw_obs["object-state"], self.steps / self.max_episode_steps)
        return PendingObs(agent_pos.astype(np.float32), privileged.astype(np.float32), cloud_input, self.draw_key())

    def complete(self, pending: PendingObs) -> Dict[str, np.ndarray]:
        """The full observation of a pending frame: ``point_cloud`` (N, C), ``agent_pos``, ``privileged``."""
        cloud = self._mesh_cloud.at(pending.cloud_input) if self._mesh_cloud is not None else pending.cloud_input
        points = downsample_points(cloud, self.pc_cfg.n_points, self.pc_cfg.downsample,
                                   np.random.default_rng(pending.draw_key))
        return {"point_cloud": points.astype(np.float32), "agent_pos": pending.agent_pos, "privileged": pending.privileged}

    def _observation(self, raw_obs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return self.complete(self._pending_observation(raw_obs))

    # ------------------------------------------------------------------ episode control
    def seed(self, seed: int) -> None:
        """Reseed object placement and the next episodes' downsampling keys (robosuite keeps its rng on the env)."""
        self._rng = np.random.default_rng(seed)
        self.env.rng = np.random.default_rng(seed)
        sampler = getattr(self.env, "placement_initializer", None)
        if sampler is not None:
            sampler.rng = self.env.rng
            # SequentialCompositeSampler (square, pick_place) keeps one rng per inner sampler.
            for inner in getattr(sampler, "samplers", {}).values():
                inner.rng = self.env.rng

    def reset(self, seed: Optional[int] = None) -> Dict[str, np.ndarray]:
        if seed is not None:
            self.seed(seed)
        self.steps = self._restores = 0
        self._episode_key = int(self._rng.integers(2**63))
        return self._observation(self.env.reset())

    def step_env_action(self, env_action: np.ndarray) -> Tuple[Dict[str, np.ndarray], float, bool, Dict[str, Any]]:
        """Step with a robosuite 7-d absolute action. ``done`` = success or time limit; ``info``
        says which (``success``, ``truncated``) so RL can bootstrap on truncation only."""
        pending, reward, done, info = self.step_env_action_pending(env_action)
        return self.complete(pending), reward, done, info

    def step_env_action_pending(self, env_action: np.ndarray) -> Tuple[PendingObs, float, bool, Dict[str, Any]]:
        """:meth:`step_env_action` with the observation's point cloud deferred (:class:`PendingObs`)."""
        env_action = np.asarray(env_action, dtype=np.float64)
        raw, reward, _, _ = self._fast_step.step(env_action) if self._fast_step is not None else self.env.step(env_action)
        self.steps += 1
        success = bool(self.env._check_success())
        truncated = (not success) and self.steps >= self.max_episode_steps
        if success and self.reward_shaping:
            # Success ends the episode, so with per-step shaping an agent could earn more by hovering
            # near the goal until the time limit. Count success as absorbing: it keeps paying the
            # success reward (robosuite's maximum per-step reward) for the remaining steps.
            reward *= 1 + self.max_episode_steps - self.steps
        return (self._pending_observation(raw), float(reward), success or truncated,
                {"success": success, "truncated": truncated})

    @staticmethod
    def env_actions(actions: np.ndarray) -> np.ndarray:
        """Policy actions ``(T, 10)`` = pos + rot6d + gripper -> robosuite actions ``(T, 7)``, checked.

        Why a batch: the rot6d -> axis-angle conversion (scipy) costs ~0.4 ms per call whatever its size,
        ~10% of an env step; converting a whole chunk at once gives bit-identical actions for ~1/6 of it."""
        actions = np.asarray(actions)
        if actions.ndim != 2 or actions.shape[1] != POLICY_ACTION_DIM:
            raise ValueError(f"expected policy actions of shape (T, {POLICY_ACTION_DIM}), got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise FloatingPointError(f"non-finite action in {actions}")
        return policy_action_to_env_action(actions)

    def step(self, action: np.ndarray) -> Tuple[Dict[str, np.ndarray], float, bool, Dict[str, Any]]:
        """Step with a policy action (10,) = pos + rot6d + gripper."""
        action = np.asarray(action)
        if action.shape != (POLICY_ACTION_DIM,):
            raise ValueError(f"expected a policy action of shape ({POLICY_ACTION_DIM},), got {action.shape}")
        return self.step_env_action(self.env_actions(action[None])[0])

    # ------------------------------------------------------------------ robomimic-format state
    def get_state(self) -> np.ndarray:
        """Flattened MuJoCo state (time, qpos, qvel): robomimic's ``states`` entry."""
        return np.asarray(self.env.sim.get_state().flatten())

    def model_xml(self) -> str:
        return self.env.sim.model.get_xml()

    def reset_to(self, state: np.ndarray) -> Dict[str, np.ndarray]:
        """Set the sim to a recorded ``states`` entry and return the observation there."""
        expected = self.get_state().shape[0]
        if state.shape[0] != expected:
            raise ValueError(f"state has {state.shape[0]} entries but {self.env_name} expects {expected}: "
                             "the hdf5 was recorded with a different robot/env/robosuite version")
        self.env.sim.set_state_from_flattened(state)
        self.env.sim.forward()
        self._restores += 1
        return self._observation(self.env._get_observations(force_update=True))

    def env_args(self) -> Dict[str, Any]:
        """robomimic's ``env_args`` attribute (type 1 = robosuite)."""
        kwargs = {k: v for k, v in self.env_kwargs.items()}
        return {"env_name": self.env_name, "type": 1, "env_version": "1.5.2",
                "env_kwargs": json.loads(json.dumps(kwargs, default=str)), "task_name": self.task_name}

    # ------------------------------------------------------------------ video
    def render(self, size: Optional[int] = None, camera: str = VIDEO_CAMERA) -> np.ndarray:
        """RGB frame (H, W, 3) uint8, right side up; needs ``render_size`` (or the camera source)."""
        if not self.env.has_offscreen_renderer:
            raise RuntimeError("this env was created without an offscreen renderer: pass render_size=...")
        size = size or self.render_size or 128
        return self.env.sim.render(camera_name=camera, width=size, height=size)[::-1].copy()

    def close(self) -> None:
        self.env.close()


def privileged_obs_dim(task_name: str) -> int:
    """Length ``P`` of the ``privileged`` observation of ``task_name`` (built once to ask robosuite, ~1 s)."""
    env = RobosuitePointCloudEnv(task_name, point_cloud={"source": "mesh", "n_points": 16, "presample_points": 256},
                                 fast_control=False)
    try:
        return int(env.reset(seed=0)["privileged"].shape[0])
    finally:
        env.close()
