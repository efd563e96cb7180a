"""Scripted experts that produce varied, successful demonstrations for BC pretraining.

Why scripted: the point-cloud policy needs demos recorded with *our* env wrapper and controller
(absolute OSC_POSE, world frame), which real robomimic files were not. An expert is a small
waypoint planner over privileged simulator state (object poses), so it is fast and reliable.

How an expert moves: each task writes its plan as a Python generator of :class:`Waypoint`. The
generator is lazy, so each waypoint is computed from the sim state at the moment the previous one
finished (e.g. the place target uses the measured offset of the held cube), and plain ``while``
loops express retries (re-grasp when a grasp failed). :class:`ScriptedExpert` moves a setpoint
toward the current waypoint with capped per-step translation and yaw, because an absolute OSC target
far away makes the arm move violently.

Orientation: grasps are top-down. The expert keeps the gripper orientation it had at reset and only
rotates about the world z axis (``yaw``, relative to that reset orientation) to square the fingers
with the object. Actions are robosuite's 7-d absolute action: grip-site xyz (m), axis-angle (3),
gripper (-1 open, +1 close).

Variety: every episode draws approach height, speeds, grasp point (a few mm), pauses and closing
time from the ``rng`` passed to :meth:`ScriptedExpert.reset`, so demos are not copies of each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Type

import numpy as np
from scipy.spatial.transform import Rotation

GRIPPER_OPEN = -1.0
GRIPPER_CLOSED = 1.0
MAX_YAW_STEP = 0.1          # rad per control step
ARRIVAL_TIMEOUT = 25        # steps to wait for the arm once the setpoint has arrived (blocked motion)
MAX_ABS_YAW = 1.75          # rad from the reset wrist angle: keeps Panda joint 7 inside its limits
PICK_CHECK_HEIGHT = 0.04    # m raised after closing, before checking that the object came along
OBSTACLE_RADIUS = 0.1      # m: obstacles farther than this from the grasped object can't meet the fingers
PLACE_CLEARANCE = 0.006     # m between a placed object's bottom and its support when released


@dataclass
class Waypoint:
    """One target of the planner: the setpoint moves there, then waits ``settle`` steps.

    ``pos`` is the grip-site target (3,) in world metres; ``yaw`` the rotation about world z relative
    to the reset orientation (rad); ``max_step`` the setpoint speed (m per control step); ``tol`` the
    distance of the measured grip site to ``pos`` that counts as arrived.
    """
    pos: np.ndarray
    yaw: float
    gripper: float
    max_step: float
    settle: int = 0
    tol: float = 0.01


@dataclass
class ExpertParams:
    """Per-episode random choices that make demos differ (all drawn in :meth:`ScriptedExpert.reset`)."""
    approach_height: float      # m above the grasp point before descending
    travel_step: float          # m per step for free-space motion
    fine_step: float            # m per step near objects (descend, place)
    grasp_offset: np.ndarray    # (3,) m added to the grasp point
    yaw_noise: float            # rad added to the aligned grasp yaw
    close_steps: int            # steps to hold while the fingers close
    pause_steps: int            # extra settle at the pre-grasp and pre-place poses
    lift_height: float          # m the object is raised after grasping

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "ExpertParams":
        return cls(
            approach_height=float(rng.uniform(0.06, 0.11)),
            travel_step=float(rng.uniform(0.010, 0.016)),
            fine_step=float(rng.uniform(0.005, 0.009)),
            grasp_offset=np.array([*rng.uniform(-0.004, 0.004, size=2), rng.uniform(-0.004, 0.002)]),
            yaw_noise=float(rng.uniform(-0.05, 0.05)),
            close_steps=int(rng.integers(8, 13)),
            pause_steps=int(rng.integers(0, 4)),
            lift_height=float(rng.uniform(0.08, 0.14)),
        )


def wrap_angle(angle: float, period: float) -> float:
    """``angle`` shifted by multiples of ``period`` into [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


def planar_angle(vec: np.ndarray) -> float:
    """Angle of the xy projection of a 3-vector about world z."""
    return float(np.arctan2(vec[1], vec[0]))


class ScriptedExpert:
    """Base class: setpoint tracking of a waypoint generator. Subclasses write :meth:`plan`.

    Usage: ``expert.reset(env, rng)`` after ``env.reset``, then ``env.step_env_action(expert.act(env))``
    until the env reports success. ``env`` is a :class:`~equi_diffpo.env.robosuite_env.RobosuitePointCloudEnv`.
    """

    def reset(self, env, rng: np.random.Generator) -> None:
        obs = env.raw_obs
        self.rng = rng
        self.params = ExpertParams.sample(rng)
        self.initial_rot = Rotation.from_quat(obs["robot0_eef_quat_site"])  # robosuite obs quats are xyzw
        self.setpoint = np.array(obs["robot0_eef_pos"], dtype=np.float64)
        self.yaw = 0.0
        self.gripper = GRIPPER_OPEN
        self._plan: Iterator[Waypoint] = self.plan(env)
        self._waypoint: Optional[Waypoint] = next(self._plan, None)
        self._wait = 0           # steps spent since the setpoint reached the waypoint

    def plan(self, env) -> Iterator[Waypoint]:
        raise NotImplementedError

    def act(self, env) -> np.ndarray:
        """Next robosuite action (7,) = grip-site xyz, axis-angle, gripper."""
        wp = self._waypoint
        if wp is not None and self._advance_setpoint(env, wp):
            self._waypoint = next(self._plan, None)
            self._wait = 0
        rot = Rotation.from_euler("z", self.yaw) * self.initial_rot
        return np.concatenate([self.setpoint, rot.as_rotvec(), [self.gripper]])

    def _advance_setpoint(self, env, wp: Waypoint) -> bool:
        """Move the setpoint one capped step toward ``wp``; True once ``wp`` is reached and settled."""
        delta = wp.pos - self.setpoint
        dist = float(np.linalg.norm(delta))
        self.setpoint = wp.pos.copy() if dist <= wp.max_step else self.setpoint + delta * (wp.max_step / dist)
        self.yaw += float(np.clip(wp.yaw - self.yaw, -MAX_YAW_STEP, MAX_YAW_STEP))
        self.gripper = wp.gripper
        if dist > wp.max_step or abs(wp.yaw - self.yaw) > 1e-9:
            return False
        self._wait += 1
        arrived = np.linalg.norm(env.raw_obs["robot0_eef_pos"] - wp.pos) < wp.tol
        return (arrived or self._wait > ARRIVAL_TIMEOUT) and self._wait > wp.settle

    # ------------------------------------------------------------------ helpers for plans
    def grasp_yaw(self, object_quat_xyzw: np.ndarray, symmetry: float, avoid_dir: Optional[np.ndarray] = None) -> float:
        """Yaw (relative to reset) that squares the fingers with an object whose footprint repeats
        every ``symmetry`` rad. Among the equivalent yaws within the wrist's comfortable range it
        takes the one that turns the least or, given ``avoid_dir`` (xy direction from the object to
        a nearby obstacle), the one whose fingers lie most across that direction so they miss it."""
        obj_axis = Rotation.from_quat(object_quat_xyzw).as_matrix()[:, 0]
        finger = planar_angle((Rotation.from_euler("z", self.yaw) * self.initial_rot).as_matrix()[:, 0])
        base = wrap_angle(planar_angle(obj_axis) - finger, symmetry)
        turns = [base + k * symmetry for k in range(-3, 4) if abs(self.yaw + base + k * symmetry) <= MAX_ABS_YAW]
        if avoid_dir is None:
            turn = min(turns, key=abs)
        else:
            away = planar_angle(avoid_dir)
            turn = max(turns, key=lambda t: abs(np.sin(finger + t - away)) - 0.1 * abs(t))
        return self.yaw + turn + self.params.yaw_noise

    def pick(self, env, obj, obj_key: str, symmetry: float, avoid_key: Optional[str] = None) -> Iterator[Waypoint]:
        """Grasp ``obj`` (a robosuite object; its pose in ``raw_obs[obj_key + '_pos' / '_quat']``) top-down
        and raise it a little; on a failed grasp open, back off and try again from fresh poses.
        ``avoid_key`` names a nearby object the fingers must not land on."""
        p = self.params
        while True:
            obj_pos = np.array(env.raw_obs[obj_key + "_pos"])
            avoid = None if avoid_key is None else (np.asarray(env.raw_obs[avoid_key + "_pos"]) - obj_pos)[:2]
            if avoid is not None and np.linalg.norm(avoid) > OBSTACLE_RADIUS:
                avoid = None
            yaw = self.grasp_yaw(env.raw_obs[obj_key + "_quat"], symmetry, avoid)
            target = obj_pos + p.grasp_offset
            yield Waypoint(target + [0, 0, p.approach_height], yaw, GRIPPER_OPEN, p.travel_step, settle=p.pause_steps, tol=0.02)
            yield Waypoint(target, yaw, GRIPPER_OPEN, p.fine_step, tol=0.006)
            yield Waypoint(target, yaw, GRIPPER_CLOSED, p.fine_step, settle=p.close_steps, tol=0.02)
            yield Waypoint(target + [0, 0, PICK_CHECK_HEIGHT], yaw, GRIPPER_CLOSED, p.fine_step, tol=0.01)
            if self.is_grasping(env, obj) and env.raw_obs[obj_key + "_pos"][2] > obj_pos[2] + PICK_CHECK_HEIGHT / 2:
                return
            yield Waypoint(self.setpoint.copy(), self.yaw, GRIPPER_OPEN, p.fine_step, settle=5)
            yield Waypoint(self.setpoint + [0, 0, 0.05], self.yaw, GRIPPER_OPEN, p.fine_step)

    def is_grasping(self, env, obj) -> bool:
        raw = env.env
        return bool(raw._check_grasp(gripper=raw.robots[0].gripper, object_geoms=obj))

    def held_offset(self, env, obj_key: str) -> np.ndarray:
        """Grip site minus held object position (3,), measured now: objects sit a few mm off-centre."""
        return np.asarray(env.raw_obs["robot0_eef_pos"]) - np.asarray(env.raw_obs[obj_key + "_pos"])


class LiftExpert(ScriptedExpert):
    """Lift (``lift_d0``): grasp the cube top-down and raise it; success is cube > table + 4 cm."""

    def plan(self, env) -> Iterator[Waypoint]:
        yield from self.pick(env, env.env.cube, "cube", np.pi / 2)
        yield Waypoint(self.setpoint + [0, 0, self.params.lift_height], self.yaw, GRIPPER_CLOSED, self.params.fine_step)


class StackExpert(ScriptedExpert):
    """Stack (``stack_d0``): pick cubeA, carry it over cubeB, lower it until it nearly touches, release.
    Success needs cubeA resting on cubeB and not grasped, so the release itself ends the episode."""

    def plan(self, env) -> Iterator[Waypoint]:
        raw, p = env.env, self.params
        half_a, half_b = raw.cubeA.size[2], raw.cubeB.size[2]
        yield from self.pick(env, raw.cubeA, "cubeA", np.pi / 2, avoid_key="cubeB")
        cube_b = np.array(env.raw_obs["cubeB_pos"])
        carry_z = cube_b[2] + half_b + 2 * half_a + p.approach_height
        yield Waypoint(np.array([*self.setpoint[:2], carry_z]), self.yaw, GRIPPER_CLOSED, p.fine_step, tol=0.02)
        held = self.held_offset(env, "cubeA")
        above = np.array([*(cube_b[:2] + held[:2]), carry_z])
        yield Waypoint(above, self.yaw, GRIPPER_CLOSED, p.travel_step, settle=p.pause_steps, tol=0.01)
        held = self.held_offset(env, "cubeA")
        drop_z = cube_b[2] + half_b + half_a + PLACE_CLEARANCE + held[2]
        yield Waypoint(np.array([*(cube_b[:2] + held[:2]), drop_z]), self.yaw, GRIPPER_CLOSED, p.fine_step, settle=2, tol=0.005)
        yield Waypoint(self.setpoint.copy(), self.yaw, GRIPPER_OPEN, p.fine_step, settle=10)
        yield Waypoint(self.setpoint + [0, 0, 0.08], self.yaw, GRIPPER_OPEN, p.fine_step)


EXPERTS: Dict[str, Type[ScriptedExpert]] = {
    "lift_d0": LiftExpert,
    "stack_d0": StackExpert,
}


def get_expert(task_name: str) -> ScriptedExpert:
    """A fresh expert for ``task_name``; unknown names raise a ``KeyError`` listing those with experts."""
    if task_name not in EXPERTS:
        raise KeyError(f"no scripted expert for task_name={task_name!r}; tasks with experts: {', '.join(sorted(EXPERTS))}")
    return EXPERTS[task_name]()


@dataclass
class EpisodeResult:
    """One expert episode: whether it succeeded, how many env steps it took, and its actions (T, 7)."""
    success: bool
    n_steps: int
    actions: np.ndarray


def run_episode(env, expert: ScriptedExpert, seed: int) -> EpisodeResult:
    """Reset ``env`` with ``seed`` and roll ``expert`` until success or the env's time limit.
    The expert's own randomness is seeded from ``seed`` too, on a separate stream from the env's."""
    env.reset(seed=seed)
    expert.reset(env, np.random.default_rng([seed, 1]))
    actions = []
    while True:
        action = expert.act(env)
        actions.append(action)
        _, _, done, info = env.step_env_action(action)
        if done:
            return EpisodeResult(bool(info["success"]), len(actions), np.asarray(actions))
