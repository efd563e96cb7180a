"""A compiled control loop for robosuite 1.5.2's absolute OSC_POSE arm + Panda gripper.

Why: one stock ``env.step`` (Panda, control_freq 20) runs 25 physics substeps, and for each one
robosuite walks ~10 layers of Python (``Robot.control`` -> composite controller -> OSC ->
``Controller.update`` -> site-Jacobian wrappers -> observables): ~87% of the step is that Python,
the physics itself is ~13% (cProfile of a stock Lift step, docs/BENCHMARKS.md). :class:`FastOSCStep` replaces only that per-substep
loop: one numba function runs the substeps (``mj_step1`` -> site Jacobians -> mass matrix -> OSC
torques -> ``mj_step2``) calling MuJoCo's C API directly. Robosuite stays the source of the task,
model, goal setting, gripper state, observations and reward.

Exactness: the loop reproduces ``OperationalSpaceController.run_controller`` operation by
operation, and calls the *same* numba functions robosuite calls (``opspace_matrices``,
``nullspace_torques``, ``orientation_error``). The three kinds of ``np.dot`` robosuite does in numpy
(site velocities, the decoupled wrench, ``J^T F``) are made with numpy's own BLAS routine
(``cblas_dgemv`` of the OpenBLAS numpy ships), called with the arguments numpy passes: a hand-written
loop would round differently (FMA, summation order), and contact dynamics amplify 1-ulp
differences. Two robosuite details matter as much: the arm's mass matrix reaches numba F-ordered
(``M[idx, :][:, idx]``), and numba/BLAS round differently per layout; and on the first substep after
a reset robosuite skips ``Controller.update`` (``new_update`` is False after the reset's forced
update), so that substep runs on the controller's stale cached state -- reproduced from the same
cache (:func:`_osc_substep_cached`). The result is bit-identical to ``env.step``
(tests/test_fast_control.py: qpos/qvel/reward/obs over 200 random steps on every task).

Observables: robosuite updates its observables after every substep and an observable samples the
simulator when its timer says so (at the 25th substep in steady state). The fast path replays the
same float timer arithmetic in Python and calls robosuite's own ``_update_observables`` only at the
substep(s) where a sample happens, so observations are those ``env.step`` would return.

Not maintained (none affects torques, observations or rewards of the supported envs): the
controllers' cached per-substep state (arm ``ref_pos``, ``J_full``, ``torques``, ..., gripper
``joint_pos/vel``; robosuite refreshes it before any use, ``new_update`` is left as robosuite leaves
it), the arm's ``origin_pos/ori`` (constant for a fixed base, unused in the world frame) and the
robot's end-effector histories ``recent_ee_*`` (read only by Wipe, which is rejected);
``recent_qpos/actions/torques`` are kept. MuJoCo is called without the Python bindings' error
interception: a fatal ``mju_error`` (not a warning) aborts the process instead of raising.
"""
from __future__ import annotations

import ctypes
import glob
import os
from typing import Any, Dict, List, Optional, Tuple

import llvmlite.binding as llvm
import mujoco
import numpy as np
from numba import njit, types
from scipy.spatial.transform import Rotation

ROBOSUITE_VERSION = "1.5.2"   # the internals reproduced below are this version's

# CBLAS enums (cblas.h)
_ROW_MAJOR, _COL_MAJOR, _NO_TRANS = 101, 102, 111


class UnsupportedControllerError(ValueError):
    """The env's controller/robot/env setup is not the one :class:`FastOSCStep` reproduces."""


# ---------------------------------------------------------------------------------------------
# Native symbols. They are registered with LLVM under our own names (so numba's cache stores the
# name, not an address that changes between processes) before any compiled function is loaded.

def _find_numpy_dgemv() -> int:
    """Address of the ``cblas_dgemv`` numpy's ``dot`` calls (the OpenBLAS wheel build bundled in
    numpy.libs, 64-bit integer interface)."""
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*"))):
        lib = ctypes.CDLL(path)
        for name in ("cblas_dgemv64_", "scipy_cblas_dgemv64_"):
            if hasattr(lib, name):
                return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
    raise OSError(f"numpy's ILP64 OpenBLAS (cblas_dgemv64_) not found in {libs}")


def _register_symbols() -> Optional[str]:
    """Register MuJoCo's and numpy's C functions; returns why not (the fast path is then refused)."""
    try:
        mj_dir = os.path.dirname(mujoco.__file__)
        mj_lib = ctypes.CDLL(sorted(glob.glob(os.path.join(mj_dir, "libmujoco*")))[0])   # the bindings' own copy
        for name in ("mj_step1", "mj_step2", "mj_jacSite", "mj_fullM"):
            llvm.add_symbol(f"maniflow_fc_{name}", ctypes.cast(getattr(mj_lib, name), ctypes.c_void_p).value)
        llvm.add_symbol("maniflow_fc_np_dgemv", _find_numpy_dgemv())
    except (OSError, IndexError, AttributeError) as e:
        return f"native functions unavailable ({e})"
    return None


_SYMBOLS_ERROR = _register_symbols()

_P = types.uintp   # pointers (mjModel*, mjData*, double*) are passed as integers
_mj_step1 = types.ExternalFunction("maniflow_fc_mj_step1", types.void(_P, _P))
_mj_step2 = types.ExternalFunction("maniflow_fc_mj_step2", types.void(_P, _P))
_mj_jacSite = types.ExternalFunction("maniflow_fc_mj_jacSite", types.void(_P, _P, _P, _P, types.int32))
_mj_fullM = types.ExternalFunction("maniflow_fc_mj_fullM", types.void(_P, _P, _P))
_np_dgemv = types.ExternalFunction("maniflow_fc_np_dgemv", types.void(
    types.int32, types.int32, types.int64, types.int64, types.float64, _P, types.int64, _P, types.int64,
    types.float64, _P, types.int64))

from robosuite.utils.control_utils import nullspace_torques, opspace_matrices, orientation_error  # noqa: E402
from robosuite.utils.observables import NO_DELAY  # noqa: E402


@njit(cache=True)
def _np_dot_mv(a: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = numpy.dot(a, x)`` for a (m, n) C- or F-contiguous ``a`` and (n,) ``x``, bit for bit:
    the same ``cblas_dgemv`` call numpy's ``cblas_matrixproduct`` makes (order from contiguity)."""
    m, n = a.shape
    if (n == 1 or a.strides[1] == 8) and (m == 1 or a.strides[0] == 8 * n):
        order, lda = _ROW_MAJOR, max(n, 1)
    else:
        order, lda = _COL_MAJOR, max(m, 1)
    _np_dgemv(np.int32(order), np.int32(_NO_TRANS), m, n, 1.0, a.ctypes.data, lda,
              x.ctypes.data, x.strides[0] // 8, 0.0, out.ctypes.data, 1)


@njit(cache=True)
def _osc_torques(m: int, d: int, sites: np.ndarray, qvel: np.ndarray, qfrc_bias: np.ndarray, qvel_idx: np.ndarray,
                 kp: np.ndarray, kd: np.ndarray, goal_pos: np.ndarray, goal_ori: np.ndarray, initial_joint: np.ndarray,
                 ref_pos: np.ndarray, ref_ori: np.ndarray, ref_pos_vel: np.ndarray, ref_ori_vel: np.ndarray,
                 j_pos: np.ndarray, j_ori: np.ndarray, j_full: np.ndarray, joint_pos: np.ndarray, joint_vel: np.ndarray,
                 mass: np.ndarray, base_jac: np.ndarray) -> np.ndarray:
    """``OperationalSpaceController.run_controller`` (absolute goal, world frame, no interpolator,
    uncoupled) from the controller state ``ref_*``/``j_*``/``joint_*``/``mass`` (robosuite's
    attribute names; k = arm dofs): returns the (k,) torques before clipping. ``base_jac`` (2, 3, nv)
    is scratch for the arm base site's Jacobian (its velocity is subtracted, as robosuite does)."""
    _mj_jacSite(m, d, base_jac[0].ctypes.data, base_jac[1].ctypes.data, np.int32(sites[1]))
    base_pos_vel = np.empty(3)
    base_ori_vel = np.empty(3)
    _np_dot_mv(base_jac[0], qvel, base_pos_vel)
    _np_dot_mv(base_jac[1], qvel, base_ori_vel)
    ori_error = orientation_error(goal_ori, ref_ori)
    position_error = goal_pos - ref_pos
    vel_pos_error = -(ref_pos_vel - base_pos_vel)
    desired_force = position_error * kp[0:3] + vel_pos_error * kd[0:3]
    vel_ori_error = -(ref_ori_vel - base_ori_vel)
    desired_torque = ori_error * kp[3:6] + vel_ori_error * kd[3:6]
    lambda_full, lambda_pos, lambda_ori, nullspace_matrix = opspace_matrices(mass, j_full, j_pos, j_ori)
    wrench = np.empty(6)
    _np_dot_mv(lambda_pos, desired_force, wrench[0:3])
    _np_dot_mv(lambda_ori, desired_torque, wrench[3:6])
    torques = np.empty(qvel_idx.shape[0])
    _np_dot_mv(j_full.T, wrench, torques)
    torques = torques + qfrc_bias[qvel_idx]
    torques += nullspace_torques(mass, nullspace_matrix, initial_joint, joint_pos, joint_vel)
    return torques


@njit(cache=True)
def _write_ctrl(ctrl: np.ndarray, torques: np.ndarray, arm_lo: np.ndarray, arm_hi: np.ndarray, arm_act: np.ndarray,
                grip_act: np.ndarray, grip_ctrl: np.ndarray) -> None:
    """``FixedBaseRobot.control``'s last lines: clip to the actuators' ctrlrange, write ``data.ctrl``."""
    torques = np.clip(torques, arm_lo, arm_hi)
    for c in range(arm_act.shape[0]):
        ctrl[arm_act[c]] = torques[c]
    for c in range(grip_act.shape[0]):
        ctrl[grip_act[c]] = grip_ctrl[c]


@njit(cache=True)
def _osc_substeps(n_sub: int, ptrs: np.ndarray, sites: np.ndarray, qpos_idx: np.ndarray, qvel_idx: np.ndarray,
                  arm_act: np.ndarray, grip_act: np.ndarray, grip_ctrl: np.ndarray, kp: np.ndarray, kd: np.ndarray,
                  goal_pos: np.ndarray, goal_ori: np.ndarray, initial_joint: np.ndarray, arm_lo: np.ndarray,
                  arm_hi: np.ndarray, qpos: np.ndarray, qvel: np.ndarray, qfrc_bias: np.ndarray, qm: np.ndarray,
                  site_xpos: np.ndarray, site_xmat: np.ndarray, ctrl: np.ndarray, jac: np.ndarray,
                  full_m: np.ndarray) -> None:
    """``n_sub`` substeps of ``MujocoEnv.step``'s loop with ``lite_physics``: step1, the controller
    state (``Controller.update``), OSC torques and gripper ctrl, step2.

    ptrs (2,) uint: mjModel*, mjData*. sites (2,): controller ref site (grip site), arm base
    ('<prefix>right_center'). qpos_idx/qvel_idx/arm_act (k,), grip_act/grip_ctrl (g,): indexes and the
    gripper's already clipped ctrl (constant over a control step). kp/kd (6,), goal_pos (3,),
    goal_ori (3, 3) world, initial_joint (k,), arm_lo/arm_hi (k,) ctrlrange. qpos (nq,), qvel (nv,),
    qfrc_bias (nv,), qm (nM,), site_xpos (nsite, 3), site_xmat (nsite, 9), ctrl (nu,): views of mjData.
    Scratch: jac (4, 3, nv) = ref jacp, ref jacr, base jacp, base jacr; full_m (nv, nv).
    """
    m, d = ptrs[0], ptrs[1]
    k = qvel_idx.shape[0]
    jacp, jacr = jac[0], jac[1]
    for _ in range(n_sub):
        _mj_step1(m, d)
        # Controller.update / _update_single_reference, in robosuite's array layouts
        ref_pos = site_xpos[sites[0]].copy()
        ref_ori = site_xmat[sites[0]].copy().reshape((3, 3))
        _mj_jacSite(m, d, jacp.ctypes.data, jacr.ctypes.data, np.int32(sites[0]))
        ref_pos_vel = np.empty(3)
        ref_ori_vel = np.empty(3)
        _np_dot_mv(jacp, qvel, ref_pos_vel)
        _np_dot_mv(jacr, qvel, ref_ori_vel)
        j_pos = np.empty((3, k))
        j_ori = np.empty((3, k))
        j_full = np.empty((6, k))
        for r in range(3):
            for c in range(k):
                j_pos[r, c] = jacp[r, qvel_idx[c]]
                j_ori[r, c] = jacr[r, qvel_idx[c]]
                j_full[r, c] = j_pos[r, c]
                j_full[r + 3, c] = j_ori[r, c]
        _mj_fullM(m, full_m.ctypes.data, qm.ctypes.data)
        mass = np.empty((k, k)).T          # F-ordered, like numpy's M[idx, :][:, idx]: numba specializes
        for r in range(k):                 # (and BLAS rounds) by layout
            for c in range(k):
                mass[r, c] = full_m[qvel_idx[r], qvel_idx[c]]
        torques = _osc_torques(m, d, sites, qvel, qfrc_bias, qvel_idx, kp, kd, goal_pos, goal_ori, initial_joint,
                               ref_pos, ref_ori, ref_pos_vel, ref_ori_vel, j_pos, j_ori, j_full,
                               qpos[qpos_idx], qvel[qvel_idx], mass, jac[2:4])
        _write_ctrl(ctrl, torques, arm_lo, arm_hi, arm_act, grip_act, grip_ctrl)
        _mj_step2(m, d)


@njit(cache=True)
def _osc_substep_cached(ptrs: np.ndarray, sites: np.ndarray, qvel_idx: np.ndarray, arm_act: np.ndarray,
                        grip_act: np.ndarray, grip_ctrl: np.ndarray, kp: np.ndarray, kd: np.ndarray,
                        goal_pos: np.ndarray, goal_ori: np.ndarray, initial_joint: np.ndarray, arm_lo: np.ndarray,
                        arm_hi: np.ndarray, qvel: np.ndarray, qfrc_bias: np.ndarray, ctrl: np.ndarray,
                        ref_pos: np.ndarray, ref_ori: np.ndarray, ref_pos_vel: np.ndarray, ref_ori_vel: np.ndarray,
                        j_pos: np.ndarray, j_ori: np.ndarray, j_full: np.ndarray, joint_pos: np.ndarray,
                        joint_vel: np.ndarray, mass: np.ndarray, jac: np.ndarray) -> None:
    """One substep whose controller state is the controller's cached one, not refreshed: robosuite
    skips ``Controller.update`` while ``new_update`` is False, which is the case on the first substep
    after a reset (the reset's forced update happened before the gripper/objects were placed)."""
    m, d = ptrs[0], ptrs[1]
    _mj_step1(m, d)
    torques = _osc_torques(m, d, sites, qvel, qfrc_bias, qvel_idx, kp, kd, goal_pos, goal_ori, initial_joint,
                           ref_pos, ref_ori, ref_pos_vel, ref_ori_vel, j_pos, j_ori, j_full, joint_pos, joint_vel,
                           mass, jac[2:4])
    _write_ctrl(ctrl, torques, arm_lo, arm_hi, arm_act, grip_act, grip_ctrl)
    _mj_step2(m, d)


def _sample_schedule(t: float, sampled: bool, period: float, dt: float, n: int) -> Tuple[List[Tuple[int, float, bool]], float, bool]:
    """Replay ``Observable.update`` (no delay, no force) for ``n`` substeps of ``dt`` from timer state
    (t, sampled): returns [(substep, t before it, sampled before it)] for substeps that sample, and
    the final (t, sampled). The float operations are robosuite's, so the schedule is exact."""
    samples = []
    for k in range(n):
        t_before, sampled_before = t, sampled
        t += dt
        hit = False
        if not sampled and period - 0.0 >= t:
            sampled = hit = True
        if t >= period:
            hit = hit or not sampled          # robosuite samples late (and warns) if it has not yet
            t %= period
            sampled = False
        if hit:
            samples.append((k, t_before, sampled_before))
    return samples, t, sampled


def check_supported(env: Any) -> None:
    """Raise :class:`UnsupportedControllerError` unless ``env`` is a setup :class:`FastOSCStep`
    reproduces: robosuite 1.5.2 ``MujocoEnv.step`` with lite physics, one fixed-base robot with the
    BASIC composite controller, arm ``OSC_POSE`` (absolute, world frame, fixed impedance, uncoupled,
    no interpolators) and a ``GRIP`` gripper controller without interpolator."""
    import robosuite
    from robosuite.controllers.composite.composite_controller import CompositeController
    from robosuite.controllers.parts.arm.osc import OperationalSpaceController
    from robosuite.controllers.parts.gripper.simple_grip import SimpleGripController
    from robosuite.environments.base import MujocoEnv
    from robosuite.environments.robot_env import RobotEnv
    from robosuite.robots.fixed_base_robot import FixedBaseRobot

    problems: List[str] = [_SYMBOLS_ERROR] if _SYMBOLS_ERROR else []
    if robosuite.__version__ != ROBOSUITE_VERSION:
        problems.append(f"robosuite {robosuite.__version__} (reproduced: {ROBOSUITE_VERSION})")
    cls = type(env)
    for method, base in (("step", MujocoEnv), ("_update_observables", MujocoEnv), ("_pre_action", RobotEnv)):
        if getattr(cls, method, None) is not getattr(base, method):
            problems.append(f"{cls.__name__} overrides {method}")
    if any(c.__name__ == "Wipe" for c in cls.__mro__):
        problems.append("Wipe reads robot.recent_ee_* histories, which the fast path does not keep")
    if not getattr(env, "lite_physics", False):
        problems.append("lite_physics=False")
    robots = getattr(env, "robots", [])
    if len(robots) != 1:
        return _raise(problems + [f"{len(robots)} robots (supported: 1)"])
    robot = robots[0]
    if type(robot) is not FixedBaseRobot:
        problems.append(f"robot class {type(robot).__name__} (supported: FixedBaseRobot)")
    if type(robot.composite_controller) is not CompositeController:
        problems.append(f"composite controller {type(robot.composite_controller).__name__} (supported: BASIC)")
    parts = dict(robot.part_controllers)
    if sorted(parts) != ["right", "right_gripper"]:
        problems.append(f"controller parts {sorted(parts)} (supported: right, right_gripper)")
        return _raise(problems)
    if not all(robot._enabled_parts.get(p, False) for p in parts):
        problems.append("a controller part is disabled")
    arm, grip = parts["right"], parts["right_gripper"]
    if type(arm) is not OperationalSpaceController:
        problems.append(f"arm controller {type(arm).__name__} (supported: OSC_POSE)")
    else:
        expected = dict(use_ori=True, input_type="absolute", input_ref_frame="world", impedance_mode="fixed",
                        uncoupling=True, lite_physics=True, num_ref_sites=1)
        for name, value in expected.items():
            if getattr(arm, name) != value:
                problems.append(f"arm {name}={getattr(arm, name)!r} (supported: {value!r})")
        for name in ("interpolator_pos", "interpolator_ori", "position_limits", "orientation_limits"):
            if getattr(arm, name) is not None:
                problems.append(f"arm {name} is set (supported: None)")
    if type(grip) is not SimpleGripController or grip.interpolator is not None:
        problems.append(f"gripper controller {type(grip).__name__} with interpolator {getattr(grip, 'interpolator', None)}")
    for fn in (opspace_matrices, nullspace_torques, orientation_error):
        if not hasattr(fn, "py_func"):
            problems.append(f"robosuite's {fn.__name__} is not numba-compiled (macros.ENABLE_NUMBA)")
    _raise(problems)


def _raise(problems: List[str]) -> None:
    if problems:
        raise UnsupportedControllerError("fast_control cannot reproduce this env: " + "; ".join(problems)
                                         + " (set fast_control: false to use robosuite's own loop)")


class FastOSCStep:
    """``step(action)`` == ``env.step(action)`` for a supported robosuite env (see :func:`check_supported`),
    with the 25 controller substeps in compiled code. Construct once per env; it follows hard resets
    (a new ``MjSim`` or new controllers are re-bound on the next step)."""

    def __init__(self, env: Any):
        check_supported(env)
        self.env = env
        self._bound: Optional[Tuple[Any, Any, Any]] = None
        self._bind()

    def _bind(self) -> None:
        """Cache what depends on the current sim and controller objects: pointers, index arrays, views."""
        env = self.env
        robot = env.robots[0]
        arm, grip = robot.part_controllers["right"], robot.part_controllers["right_gripper"]
        if self._bound is not None:
            check_supported(env)      # controllers were rebuilt: check them again
        model, data = env.sim.model._model, env.sim.data._data
        self._model, self._data = model, data
        self._arm, self._grip, self._robot = arm, grip, robot
        self._gripper_model = robot.gripper["right"]
        self._ptrs = np.array([model._address, data._address], dtype=np.uintp)
        base_site = f"{arm.naming_prefix}{arm.part_name}_center"
        self._sites = np.array([env.sim.model.site_name2id(arm.ref_name), env.sim.model.site_name2id(base_site)], dtype=np.int64)
        self._qpos_idx = np.asarray(arm.qpos_index, dtype=np.int64)
        self._qvel_idx = np.asarray(arm.qvel_index, dtype=np.int64)
        self._arm_act = np.asarray(robot._ref_actuators_indexes_dict["right"], dtype=np.int64)
        self._grip_act = np.asarray(robot._ref_actuators_indexes_dict["right_gripper"], dtype=np.int64)
        ctrlrange = env.sim.model.actuator_ctrlrange
        self._arm_lo, self._arm_hi = ctrlrange[self._arm_act, 0].copy(), ctrlrange[self._arm_act, 1].copy()
        self._grip_lo, self._grip_hi = ctrlrange[self._grip_act, 0], ctrlrange[self._grip_act, 1]
        self._jac = np.zeros((4, 3, model.nv))
        self._full_m = np.zeros((model.nv, model.nv))
        self._views = (data.qpos, data.qvel, data.qfrc_bias, data.qM, data.site_xpos, data.site_xmat, data.ctrl)
        self._bound = (env.sim, arm, grip)

    # ------------------------------------------------------------------ the policy step
    def _set_goals(self, action: np.ndarray) -> np.ndarray:
        """What ``FixedBaseRobot.control(action, policy_step=True)`` does besides the torques: set the
        arm goal (absolute OSC: position as given, rotation vector -> matrix with scipy, as robosuite),
        advance the gripper's own state (``format_action``) and goal, push the proprio histories.
        Returns the gripper's clipped ctrl (constant over the control step: no interpolator)."""
        robot, arm, grip = self._robot, self._arm, self._grip
        start, end = robot._action_split_indexes["right"]
        arm_action = action[start:end]
        arm.goal_pos = np.array(arm_action[0:3])
        arm.goal_ori = Rotation.from_rotvec(arm_action[3:6]).as_matrix()
        start, end = robot._action_split_indexes["right_gripper"]
        grip.set_goal(self._gripper_model.format_action(action[start:end]))
        grip_ctrl = np.clip(grip.run_controller(), self._grip_lo, self._grip_hi)
        robot.recent_qpos.push(robot._joint_positions)
        robot.recent_actions.push(action)
        robot.recent_torques.push(robot.torques)
        return grip_ctrl

    def _run(self, n_sub: int, grip_ctrl: np.ndarray, goal_ori: np.ndarray) -> None:
        """``n_sub`` substeps; the first uses the arm controller's cached state if robosuite would."""
        arm = self._arm
        initial_joint = np.asarray(arm.initial_joint, dtype=np.float64)
        qpos, qvel, qfrc_bias, qm, site_xpos, site_xmat, ctrl = self._views
        if n_sub > 0 and not arm.new_update:
            _osc_substep_cached(self._ptrs, self._sites, self._qvel_idx, self._arm_act, self._grip_act, grip_ctrl,
                                arm.kp, arm.kd, arm.goal_pos, goal_ori, initial_joint, self._arm_lo, self._arm_hi,
                                qvel, qfrc_bias, ctrl, arm.ref_pos, arm.ref_ori_mat, arm.ref_pos_vel, arm.ref_ori_vel,
                                arm.J_pos, arm.J_ori, arm.J_full, arm.joint_pos, arm.joint_vel, arm.mass_matrix, self._jac)
            arm.new_update = True           # run_controller's last act: every later substep refreshes
            n_sub -= 1
        if n_sub > 0:
            _osc_substeps(n_sub, self._ptrs, self._sites, self._qpos_idx, self._qvel_idx, self._arm_act, self._grip_act,
                          grip_ctrl, arm.kp, arm.kd, arm.goal_pos, goal_ori, initial_joint, self._arm_lo, self._arm_hi,
                          *self._views, self._jac, self._full_m)

    def _substeps(self, n_sub: int, grip_ctrl: np.ndarray, goal_ori: np.ndarray) -> None:
        """The substep loop with robosuite's observable updates: only at the substeps where an
        observable samples (timers replayed by :func:`_sample_schedule`), or after every substep if
        the observables' timers differ or have delays (exact either way; the second is slower)."""
        env = self.env
        observables = [o for o in env._observables.values() if o._enabled]
        timers = {(o._time_since_last_sample, o._sampled, o._sampling_timestep, o._current_delay) for o in observables}
        if len(timers) != 1 or next(iter(timers))[3] != 0.0 or any(o._delayer is not NO_DELAY for o in observables):
            for _ in range(n_sub):
                self._run(1, grip_ctrl, goal_ori)
                env._update_observables()
            return
        t, sampled, period, _ = next(iter(timers))
        samples, t_end, sampled_end = _sample_schedule(t, sampled, period, env.model_timestep, n_sub)
        done = 0
        for k, t_before, sampled_before in samples:
            self._run(k + 1 - done, grip_ctrl, goal_ori)
            done = k + 1
            for o in observables:            # the timers as robosuite's loop would have them before substep k
                o._time_since_last_sample, o._sampled = t_before, sampled_before
            env._update_observables()
        self._run(n_sub - done, grip_ctrl, goal_ori)
        for o in observables:
            o._time_since_last_sample, o._sampled = t_end, sampled_end

    def step(self, action: np.ndarray) -> Tuple[Dict[str, Any], float, bool, Dict[str, Any]]:
        """``MujocoEnv.step`` (robosuite 1.5.2) with the substep loop compiled; same returns."""
        env = self.env
        if env.done:
            raise ValueError("executing action in terminated episode")
        env.timestep += 1
        parts = env.robots[0].part_controllers
        current = (env.sim, parts["right"], parts["right_gripper"])   # new after a hard reset / each reset
        if any(bound is not now for bound, now in zip(self._bound, current)):
            self._bind()
        assert len(action) == env.action_dim, f"environment got invalid action dimension -- expected {env.action_dim}, got {len(action)}"
        grip_ctrl = self._set_goals(action)
        goal_ori = np.ascontiguousarray(self._arm.goal_ori, dtype=np.float64)
        self._substeps(int(env.control_timestep / env.model_timestep), grip_ctrl, goal_ori)

        # the rest of MujocoEnv.step, verbatim
        env.cur_time += env.control_timestep
        reward, done, info = env._post_action(action)
        if env.viewer is not None and env.renderer != "mujoco":
            env.viewer.update()
        elif env.has_renderer and env.renderer == "mjviewer" and env.viewer is None:
            env.initialize_renderer()
            env.viewer.update()
        observations = env.viewer._get_observations() if env.viewer_get_obs else env._get_observations()
        return observations, reward, done, info
