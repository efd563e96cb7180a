"""Delta OSC actions -> absolute world-frame targets, by replaying the recorded states through the controller.

Why: robomimic / MimicGen / robosuite demo files store *delta* OSC_POSE actions (a small pose change
relative to the current eef pose, scaled from [-1, 1]); our policies and envs use absolute targets
(equidiff lineage). The absolute action equivalent to a delta one is the goal the controller itself
derives from it: set the sim to ``states[t]``, hand ``actions[t]`` to the same OSC controller
(``set_goal``: scaling, clipping, base/world frame, achieved/desired goal update) and read its goal
pose. This is diffusion_policy's ``RobomimicAbsoluteActionConverter`` method, on robosuite 1.5.

Verification (:func:`replay_errors`): from each ``states[t]``, one step of the absolute action in our
absolute-controller env must land where the recording went, ``states[t+1]``; the per-demo maximum
eef position (m) and orientation (rad) errors are reported. Like diffusion_policy, step 0 is left out
of the maximum (the controller starts there from rest, unlike the recording).

Actions: ``(T, 7)`` = pos(3) + axis-angle(3) + gripper(1), delta in, absolute (world frame) out.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Dict, Mapping

import numpy as np
from scipy.spatial.transform import Rotation

from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv, _quiet_robosuite
from equi_diffpo.env.task_registry import get_task, resolve_env_name

# Replays for verification: a tiny mesh cloud, no renderer.
VERIFY_POINT_CLOUD = {"source": "mesh", "n_points": 16, "presample_points": 256}


def composite_controller_config(controller_configs: Mapping[str, Any]) -> Dict[str, Any]:
    """A file's ``controller_configs`` as a robosuite 1.5 composite config with ``body_parts['right']``
    (robosuite <= 1.4 files, e.g. robomimic / MimicGen, hold one part config
    ``{'type': 'OSC_POSE', 'control_delta': ...}``; robosuite's json nests arms under ``body_parts.arms``)."""
    from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config

    cfg = copy.deepcopy(dict(controller_configs))
    if not cfg:
        raise ValueError("the demo file records no controller_configs: cannot tell delta from absolute actions")
    if "body_parts" not in cfg and "control_delta" in cfg:          # 1.4 spelling of input_type
        cfg["input_type"] = "delta" if cfg.pop("control_delta") else "absolute"
    cfg = refactor_composite_controller_config(cfg, "Panda", ["right"])
    cfg["body_parts"].update(cfg["body_parts"].pop("arms", {}))
    return cfg


def is_delta_controller(controller_configs: Mapping[str, Any]) -> bool:
    arm = composite_controller_config(controller_configs)["body_parts"]["right"]
    return arm.get("input_type", "delta") == "delta"


def controller_configs_of(env_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    cfg = env_kwargs.get("controller_configs") or {}
    return json.loads(cfg) if isinstance(cfg, str) else dict(cfg)


class DeltaToAbsolute:
    """Converts one demo at a time with a robosuite env of ``task_name`` running the file's delta controller."""

    def __init__(self, task_name: str, controller_configs: Mapping[str, Any]):
        import robosuite

        _quiet_robosuite()
        spec = get_task(task_name)
        cfg = composite_controller_config(controller_configs)
        if cfg["body_parts"]["right"].get("input_type", "delta") != "delta":
            raise ValueError("the controller config is absolute already: nothing to convert")
        cfg["body_parts"] = {"right": cfg["body_parts"]["right"]}
        self.env = robosuite.make(resolve_env_name(spec), robots="Panda", controller_configs=cfg, control_freq=20,
                                  has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False,
                                  ignore_done=True, hard_reset=False, **spec.env_kwargs)

    def convert(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``states (T, S)``, delta ``actions (T, 7)`` -> absolute ``(T, 7)``, in order: with
        ``goal_update_mode='desired'`` a goal builds on the previous one, as it did when recorded."""
        self.env.reset()
        robot = self.env.robots[0]
        arm = robot.part_controllers["right"]
        out = np.empty_like(np.asarray(actions, dtype=np.float64))
        for t, (state, action) in enumerate(zip(states, actions)):
            self.env.sim.set_state_from_flattened(state)
            self.env.sim.forward()
            robot.composite_controller.update_state()
            arm.update(force=True)
            arm.set_goal(np.asarray(action[:6], dtype=np.float64))
            goal_pos, goal_ori = np.array(arm.goal_pos), np.array(arm.goal_ori)
            if arm.input_ref_frame == "base":        # goal held in the robot base frame
                goal_pos = arm.origin_pos + arm.origin_ori @ goal_pos
                goal_ori = arm.origin_ori @ goal_ori
            out[t, :3], out[t, 3:6], out[t, 6:] = goal_pos, Rotation.from_matrix(goal_ori).as_rotvec(), action[6:]
        return out

    def close(self) -> None:
        self.env.close()


@dataclass
class ReplayError:
    """Per-demo maximum over steps 1..T-2 of the one-step replay error."""
    max_pos_error: float     # metres
    max_rot_error: float     # radians


def _site_pose(env: RobosuitePointCloudEnv, state: np.ndarray) -> tuple[np.ndarray, Rotation]:
    env.reset_to(state)          # sets the state and runs its kinematics
    return env.raw_obs["robot0_eef_pos"].copy(), Rotation.from_quat(env.raw_obs["robot0_eef_quat_site"])


def replay_errors(env: RobosuitePointCloudEnv, states: np.ndarray, abs_actions: np.ndarray) -> ReplayError:
    """Step ``abs_actions[t]`` from ``states[t]`` in ``env`` (absolute controller) and compare the grip
    site's pose in the state reached with the one in ``states[t+1]``. Both poses come from the states
    themselves (set, then kinematics): right after a step robosuite's site data still holds the
    kinematics of the last substep's start."""
    pos_err, rot_err = [], []
    for t in range(1, len(states) - 1):
        env.reset_to(states[t])
        env.step_env_action(abs_actions[t])
        pos, rot = _site_pose(env, env.get_state())
        target_pos, target_rot = _site_pose(env, states[t + 1])
        pos_err.append(np.linalg.norm(pos - target_pos))
        rot_err.append((rot * target_rot.inv()).magnitude())
    return ReplayError(float(max(pos_err, default=0.0)), float(max(rot_err, default=0.0)))


def make_verify_env(task_name: str) -> RobosuitePointCloudEnv:
    return RobosuitePointCloudEnv(task_name, VERIFY_POINT_CLOUD, fast_control=False)
