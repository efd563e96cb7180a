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
from typing import Dict, Iterator, Optional, Tuple, Type

import numpy as np
from scipy.spatial.transform import Rotation

GRIPPER_OPEN = -1.0
GRIPPER_CLOSED = 1.0
MAX_YAW_STEP = 0.1          # rad per control step
ARRIVAL_TIMEOUT = 15        # steps to wait for the arm once the setpoint has arrived (blocked motion)
MAX_ABS_YAW = 1.75          # rad the wrist may turn from its reset angle (Panda joint 7 spans +-2.9 rad)
PICK_CHECK_HEIGHT = 0.04    # m raised after closing, before checking that the object came along
OBSTACLE_RADIUS = 0.1       # m: obstacles farther than this from the grasped object can't meet the fingers
PLACE_CLEARANCE = 0.006     # m between a placed object's bottom and its support when released
RETREAT_HEIGHT = 0.08       # m the gripper backs off upward after a release


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


@dataclass
class GraspSpec:
    """How to pick one object top-down. ``obj_key`` is its ``raw_obs`` prefix (``<key>_pos``,
    ``<key>_quat``); ``symmetry`` the period (rad) of its footprint about z, ``None`` for round ones;
    the fingers close along column ``object_axis`` of the object's rotation; ``site`` is a MuJoCo
    site to grasp at instead of the object origin, ``offset`` (m, object frame) is added to it;
    ``avoid_key`` names a nearby object the fingers must not land on."""
    obj_key: str
    symmetry: Optional[float]
    object_axis: int = 0
    site: Optional[str] = None
    offset: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    avoid_key: Optional[str] = None


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
        if self._waypoint is not None and self._reached(env, self._waypoint):
            self._waypoint = next(self._plan, None)
            self._wait = 0
        if self._waypoint is not None:
            self._step_setpoint(self._waypoint)
        rot = Rotation.from_euler("z", self.yaw) * self.initial_rot
        return np.concatenate([self.setpoint, rot.as_rotvec(), [self.gripper]])

    def _step_setpoint(self, wp: Waypoint) -> None:
        """Move the setpoint one capped step toward ``wp``."""
        delta = wp.pos - self.setpoint
        dist = float(np.linalg.norm(delta))
        self.setpoint = wp.pos.copy() if dist <= wp.max_step else self.setpoint + delta * (wp.max_step / dist)
        turn = wp.yaw - self.yaw
        self.yaw = wp.yaw if abs(turn) <= MAX_YAW_STEP else self.yaw + float(np.sign(turn)) * MAX_YAW_STEP
        self.gripper = wp.gripper

    def _reached(self, env, wp: Waypoint) -> bool:
        """True once the setpoint sits on ``wp``, the arm got there (or gave up) and ``settle`` passed."""
        if np.any(self.setpoint != wp.pos) or self.yaw != wp.yaw or self.gripper != wp.gripper:
            return False
        self._wait += 1
        arrived = np.linalg.norm(env.raw_obs["robot0_eef_pos"] - wp.pos) < wp.tol
        return (arrived or self._wait > ARRIVAL_TIMEOUT) and self._wait > wp.settle

    # ------------------------------------------------------------------ building blocks for plans
    def aligning_turn(self, current: float, target: float, symmetry: Optional[float]) -> list[float]:
        """Wrist turns (rad) that bring a planar angle ``current`` to ``target`` modulo ``symmetry``,
        limited to the wrist's comfortable range, smallest first. ``symmetry=None``: round, no turn."""
        if symmetry is None:
            return [0.0]
        base = wrap_angle(target - current, symmetry)
        turns = [base + k * symmetry for k in range(-4, 5) if abs(self.yaw + base + k * symmetry) <= MAX_ABS_YAW]
        return sorted(turns, key=abs)

    def grasp_yaw(self, env, spec: GraspSpec) -> float:
        """Yaw (relative to reset) that squares the fingers with the object. Among equivalent yaws it
        takes the one that turns the least or, with an obstacle near, the one whose fingers lie most
        across the direction to the obstacle so they miss it."""
        obj_axis = Rotation.from_quat(env.raw_obs[spec.obj_key + "_quat"]).as_matrix()[:, spec.object_axis]
        finger = planar_angle((Rotation.from_euler("z", self.yaw) * self.initial_rot).as_matrix()[:, 0])
        turns = self.aligning_turn(finger, planar_angle(obj_axis), spec.symmetry)
        turn = turns[0]
        if spec.avoid_key is not None:
            away = (np.asarray(env.raw_obs[spec.avoid_key + "_pos"]) - env.raw_obs[spec.obj_key + "_pos"])[:2]
            if np.linalg.norm(away) < OBSTACLE_RADIUS:
                turn = max(turns, key=lambda t: abs(np.sin(finger + t - planar_angle(away))) - 0.1 * abs(t))
        return self.yaw + turn + self.params.yaw_noise

    def grasp_point(self, env, spec: GraspSpec) -> np.ndarray:
        """World point (3,) the grip site closes at."""
        if spec.site is None:
            point = np.array(env.raw_obs[spec.obj_key + "_pos"], dtype=np.float64)
        else:
            sim = env.env.sim
            point = np.array(sim.data.site_xpos[sim.model.site_name2id(spec.site)], dtype=np.float64)
        offset = Rotation.from_quat(env.raw_obs[spec.obj_key + "_quat"]).apply(spec.offset)
        return point + offset + self.params.grasp_offset

    def pick(self, env, spec: GraspSpec) -> Iterator[Waypoint]:
        """Grasp the object top-down and raise it a little; on a failed grasp open, back off and try
        again from the object's new pose."""
        p = self.params
        while True:
            yaw, target = self.grasp_yaw(env, spec), self.grasp_point(env, spec)
            yield Waypoint(target + [0, 0, p.approach_height], yaw, GRIPPER_OPEN, p.travel_step, settle=p.pause_steps, tol=0.02)
            # Measured again: objects are still dropping onto the table for a few steps after reset.
            target, start_z = self.grasp_point(env, spec), float(env.raw_obs[spec.obj_key + "_pos"][2])
            yield Waypoint(target, yaw, GRIPPER_OPEN, p.fine_step, tol=0.006)
            yield Waypoint(target, yaw, GRIPPER_CLOSED, p.fine_step, settle=p.close_steps, tol=0.02)
            yield Waypoint(target + [0, 0, PICK_CHECK_HEIGHT], yaw, GRIPPER_CLOSED, p.fine_step, tol=0.01)
            # The object rising with the fingers is the test: robosuite's _check_grasp needs both
            # pads on the object's contact geoms and misses good grasps of the nut's thin handle.
            if env.raw_obs[spec.obj_key + "_pos"][2] > start_z + PICK_CHECK_HEIGHT / 2:
                return
            yield Waypoint(self.setpoint.copy(), self.yaw, GRIPPER_OPEN, p.fine_step, settle=5)
            yield Waypoint(self.setpoint + [0, 0, 0.05], self.yaw, GRIPPER_OPEN, p.fine_step)

    def place(self, env, obj_key: str, target: np.ndarray, carry_z: float, turn: float = 0.0) -> Iterator[Waypoint]:
        """Carry the held object (``raw_obs[obj_key + '_pos']``) at height ``carry_z`` to above ``target``
        (3,) while turning the wrist by ``turn``, lower it to ``target``, release and back off up.
        Targets use the measured held offset: objects sit a few mm off-centre in the fingers."""
        p = self.params
        eef_z = self.setpoint[2] + carry_z - env.raw_obs[obj_key + "_pos"][2]
        yield Waypoint(np.array([*self.setpoint[:2], eef_z]), self.yaw, GRIPPER_CLOSED, p.fine_step, tol=0.02)
        held = Rotation.from_euler("z", turn).apply(self.held_offset(env, obj_key))
        yaw = self.yaw + turn
        yield Waypoint(np.array([*(target[:2] + held[:2]), eef_z]), yaw, GRIPPER_CLOSED, p.travel_step, tol=0.01)
        held = self.held_offset(env, obj_key)
        yield Waypoint(np.array([*(target[:2] + held[:2]), eef_z]), yaw, GRIPPER_CLOSED, p.fine_step, settle=p.pause_steps, tol=0.005)
        held = self.held_offset(env, obj_key)
        yield Waypoint(target + held, yaw, GRIPPER_CLOSED, p.fine_step, settle=2, tol=0.005)
        yield Waypoint(self.setpoint.copy(), yaw, GRIPPER_OPEN, p.fine_step, settle=p.close_steps)
        yield Waypoint(self.setpoint + [0, 0, RETREAT_HEIGHT], yaw, GRIPPER_OPEN, p.fine_step)

    def held_offset(self, env, obj_key: str) -> np.ndarray:
        """Grip site minus held object position (3,), measured now."""
        return np.asarray(env.raw_obs["robot0_eef_pos"]) - np.asarray(env.raw_obs[obj_key + "_pos"])


class LiftExpert(ScriptedExpert):
    """Lift (``lift_d0``): grasp the cube top-down and raise it; success is cube > table + 4 cm."""

    def plan(self, env) -> Iterator[Waypoint]:
        yield from self.pick(env, GraspSpec("cube", symmetry=np.pi / 2))
        yield Waypoint(self.setpoint + [0, 0, self.params.lift_height], self.yaw, GRIPPER_CLOSED, self.params.fine_step)


class StackExpert(ScriptedExpert):
    """Stack (``stack_d0``): pick cubeA, carry it over cubeB, lower it until it nearly touches, release.
    Success needs cubeA resting on cubeB and not grasped, so the release itself ends the episode."""

    def plan(self, env) -> Iterator[Waypoint]:
        raw = env.env
        half_a, half_b = raw.cubeA.size[2], raw.cubeB.size[2]
        yield from self.pick(env, GraspSpec("cubeA", symmetry=np.pi / 2, avoid_key="cubeB"))
        cube_b = np.array(env.raw_obs["cubeB_pos"])
        target = cube_b + [0.0, 0.0, half_b + half_a + PLACE_CLEARANCE]
        yield from self.place(env, "cubeA", target, carry_z=target[2] + self.params.approach_height)


class SquareExpert(ScriptedExpert):
    """Square (``square_d0``, NutAssemblySquare): grasp the square nut by its handle, turn it square
    with the peg, carry it above the peg, lower it around the peg and release.
    Success is the nut's centre within 3 cm of the peg axis and below table + 5 cm."""

    PEG_TOP_CLEARANCE = 0.04     # m between the nut's bottom and the peg top while carrying
    NUT_HALF_THICKNESS = 0.01    # m, the nut's geoms are 2 cm tall
    REACH_SLACK = 0.02           # m the gripper may end farther from the robot base than the peg
    RELEASE_HEIGHT = 0.025       # m of the nut's centre above the table when released

    def plan(self, env) -> Iterator[Waypoint]:
        raw = env.env
        nut = raw.nuts[raw.nut_id]
        # Fingers close across the handle (the nut's local y), a little outward of the handle site
        # so the pads clear the nut's wall, and a little high so the fingertips clear the table.
        yield from self.pick(env, GraspSpec("SquareNut", symmetry=np.pi, object_axis=1,
                                            site=nut.important_sites["handle"], offset=(0.01, 0.0, 0.01)))
        peg = np.array(raw.sim.data.body_xpos[raw.peg1_body_id])
        peg_top = peg[2] + raw.sim.model.geom_size[raw.sim.model.body_geomadr[raw.peg1_body_id]][2]
        target = np.array([peg[0], peg[1], raw.table_offset[2] + self.RELEASE_HEIGHT])
        turn = self.peg_turn(env, peg)
        yield from self.place(env, "SquareNut", target, carry_z=peg_top + self.PEG_TOP_CLEARANCE + self.NUT_HALF_THICKNESS,
                              turn=turn)


    def peg_turn(self, env, peg: np.ndarray) -> float:
        """Wrist turn that squares the nut with the (axis-aligned) peg. Of the four, the smallest one
        that doesn't leave the handle, and so the gripper, beyond the peg as seen from the robot:
        there the arm is at the edge of its reach and tracks its target only within centimetres."""
        nut_angle = planar_angle(Rotation.from_quat(env.raw_obs["SquareNut_quat"]).as_matrix()[:, 0])
        held = self.held_offset(env, "SquareNut")
        base = robot_base_xy(env.env)
        peg_reach = np.linalg.norm(peg[:2] - base)
        turns = self.aligning_turn(nut_angle, 0.0, np.pi / 2)
        for turn in turns:
            grip_xy = peg[:2] + Rotation.from_euler("z", turn).apply(held)[:2]
            if np.linalg.norm(grip_xy - base) < peg_reach + self.REACH_SLACK:
                return turn
        return turns[0]


class PickPlaceCanExpert(ScriptedExpert):
    """PickPlaceCan (``pick_place_d0``): grasp the can from its bin, carry it over the walls to its
    target bin, set it down and back off (success needs the gripper away from the can).
    The drop point is the part of the target bin nearest the robot: the bin's centre is at the edge
    of the Panda's reach, where the arm tracks its target only within a few centimetres."""

    CARRY_HEIGHT = 0.2           # m of the can's centre above the bins' floor while carrying
    BIN_MARGIN = 0.035           # m kept between the drop point and the target bin's borders
    TARGET_JITTER = 0.03         # m random offset of the drop point (then clipped into the bin)

    def plan(self, env) -> Iterator[Waypoint]:
        raw = env.env
        can = raw.objects[raw.object_id]
        yield from self.pick(env, GraspSpec("Can", symmetry=None, offset=(0.0, 0.0, 0.01)))
        lo, hi = target_bin_region(raw, raw.object_id)
        lo, hi = lo + self.BIN_MARGIN, hi - self.BIN_MARGIN
        drop_xy = np.clip(np.clip(robot_base_xy(raw), lo, hi) + self.rng.uniform(-self.TARGET_JITTER, self.TARGET_JITTER, size=2), lo, hi)
        drop = np.array([*drop_xy, raw.bin2_pos[2] - can.bottom_offset[2] + PLACE_CLEARANCE])
        yield from self.place(env, "Can", drop, carry_z=raw.bin2_pos[2] + self.CARRY_HEIGHT)


def robot_base_xy(raw_env) -> np.ndarray:
    """xy (2,) of the robot's base body in the world."""
    sim = raw_env.sim
    return np.array(sim.data.body_xpos[sim.model.body_name2id(raw_env.robots[0].robot_model.root_body)][:2])


def target_bin_region(raw_env, bin_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """xy corners (lo, hi) of the quadrant of bin2 that PickPlace counts as object ``bin_id``'s
    target (the same rectangle as robosuite's ``PickPlace.not_in_bin``)."""
    size = np.asarray(raw_env.bin_size[:2], dtype=np.float64)
    lo = np.asarray(raw_env.bin2_pos[:2], dtype=np.float64).copy()
    lo[0] -= size[0] / 2 if bin_id in (0, 2) else 0.0
    lo[1] -= size[1] / 2 if bin_id < 2 else 0.0
    return lo, lo + size / 2


EXPERTS: Dict[str, Type[ScriptedExpert]] = {
    "lift_d0": LiftExpert,
    "stack_d0": StackExpert,
    "square_d0": SquareExpert,
    "pick_place_d0": PickPlaceCanExpert,
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
