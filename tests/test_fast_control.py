"""The compiled controller loop (:mod:`equi_diffpo.env.fast_control`) is robosuite's ``env.step``, bit for bit.

For every task, a stock env (``fast_control=False``) and a fast one with the same seed are reset to
the same state and stepped with the same random absolute actions (targets a few cm / ~0.2 rad
around the current gripper pose, gripper command uniform in [-1, 1]): 200 steps over two episodes
(the reset in between reloads robosuite's controllers, and the first substep after a reset runs
on the controller's stale cached state -- both must be reproduced). The bound asserted is exact
equality (0.0) for qpos, qvel, every raw observation, reward and the point cloud: measured 0.0 on
all four tasks. It is exact, not 1e-8, because the fast path performs the same floating-point
operations in the same order -- it calls robosuite's own numba functions with the array layouts
robosuite passes (the arm mass matrix is F-ordered there, and numba/BLAS round differently per
layout) and makes numpy's ``np.dot`` calls through numpy's own BLAS routine (a plain loop rounds
differently from OpenBLAS's kernel in ~1 of 3 products: checked below). Anything looser would hide
such slips; a 1-ulp torque difference grows to ~1e-7 in qpos within one step through contacts.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv

TASKS = ["lift_d0", "stack_d0", "square_d0", "pick_place_d0"]
N_STEPS = 200
RESET_AT = 100
CLOUD = {"source": "mesh", "n_points": 64, "presample_points": 2048}


def random_action(raw: dict, rng: np.random.Generator) -> np.ndarray:
    """(7,) absolute env action near the current grip-site pose: pos +-5 cm, rotation +-0.2 rad, gripper in [-1, 1]."""
    pos = raw["robot0_eef_pos"] + rng.uniform(-0.05, 0.05, 3)
    rot = Rotation.from_quat(raw["robot0_eef_quat_site"]) * Rotation.from_rotvec(rng.uniform(-0.2, 0.2, 3))
    return np.concatenate([pos, rot.as_rotvec(), [rng.uniform(-1.0, 1.0)]])


def make_pair(task: str, seed: int = 0):
    stock = RobosuitePointCloudEnv(task, CLOUD, max_episode_steps=N_STEPS + 1, seed=seed, fast_control=False)
    fast = RobosuitePointCloudEnv(task, CLOUD, max_episode_steps=N_STEPS + 1, seed=seed, fast_control=True)
    return stock, fast


def assert_same(stock: RobosuitePointCloudEnv, fast: RobosuitePointCloudEnv, where: str) -> None:
    a, b = stock.env.sim.data, fast.env.sim.data
    assert np.array_equal(a.qpos, b.qpos), f"{where}: qpos differs by {np.abs(a.qpos - b.qpos).max():.3g}"
    assert np.array_equal(a.qvel, b.qvel), f"{where}: qvel differs by {np.abs(a.qvel - b.qvel).max():.3g}"
    assert stock.raw_obs.keys() == fast.raw_obs.keys()
    for key in stock.raw_obs:
        assert np.array_equal(stock.raw_obs[key], fast.raw_obs[key]), f"{where}: obs {key} differs"


def run_pair(stock: RobosuitePointCloudEnv, fast: RobosuitePointCloudEnv, n_steps: int, reset_at: int | None) -> None:
    rng = np.random.default_rng(123)
    for env in (stock, fast):
        env.reset(seed=7)
    assert np.array_equal(stock.get_state(), fast.get_state())
    for t in range(n_steps):
        if t == reset_at:
            obs_a, obs_b = stock.reset(seed=8), fast.reset(seed=8)
            assert np.array_equal(obs_a["point_cloud"], obs_b["point_cloud"])
        action = random_action(stock.raw_obs, rng)
        obs_a, reward_a, done_a, info_a = stock.step_env_action(action)
        obs_b, reward_b, done_b, info_b = fast.step_env_action(action.copy())
        assert reward_a == reward_b and done_a == done_b and info_a == info_b, f"step {t}"
        assert np.array_equal(obs_a["agent_pos"], obs_b["agent_pos"]), f"step {t}: agent_pos differs"
        assert np.array_equal(obs_a["point_cloud"], obs_b["point_cloud"]), f"step {t}: point cloud differs"
        assert_same(stock, fast, f"step {t}")
    assert stock.env.timestep == fast.env.timestep and stock.env.cur_time == fast.env.cur_time


@pytest.mark.parametrize("task", TASKS)
def test_fast_control_is_bit_identical(task):
    stock, fast = make_pair(task)
    try:
        assert fast._fast_step is not None and stock._fast_step is None
        run_pair(stock, fast, N_STEPS, RESET_AT)
        # robosuite state the next stock step would read: gripper state, goals, proprio history
        arm_a, arm_b = (e.env.robots[0].part_controllers["right"] for e in (stock, fast))
        assert np.array_equal(arm_a.goal_pos, arm_b.goal_pos) and np.array_equal(arm_a.goal_ori, arm_b.goal_ori)
        robot_a, robot_b = stock.env.robots[0], fast.env.robots[0]
        assert np.array_equal(robot_a.gripper["right"].current_action, robot_b.gripper["right"].current_action)
        assert np.array_equal(robot_a.recent_actions.current, robot_b.recent_actions.current)
        assert np.array_equal(robot_a.recent_qpos.current, robot_b.recent_qpos.current)
    finally:
        stock.close()
        fast.close()


def test_per_substep_observable_fallback_is_exact():
    """Observables on different timers take the slow exact branch (update after every substep)."""
    stock, fast = make_pair("lift_d0")
    try:
        for env in (stock, fast):
            env.env.modify_observable("robot0_joint_pos", "sampling_rate", 10)
        run_pair(stock, fast, 30, None)
    finally:
        stock.close()
        fast.close()


def test_numpy_dot_is_reproduced_bit_for_bit():
    """``_np_dot_mv`` == ``np.dot`` for the shapes/layouts OSC uses; a plain loop is not."""
    from equi_diffpo.env.fast_control import _np_dot_mv

    rng = np.random.default_rng(0)
    loop_differs = 0
    for _ in range(300):
        for a in (rng.standard_normal((3, 15)), rng.standard_normal((3, 3)), rng.standard_normal((6, 7)).T):
            x = rng.standard_normal(a.shape[1])
            out = np.empty(a.shape[0])
            _np_dot_mv(a, x, out)
            assert np.array_equal(out, np.dot(a, x))
            loop = np.array([sum(a[i, j] * x[j] for j in range(a.shape[1])) for i in range(a.shape[0])])
            loop_differs += not np.array_equal(loop, np.dot(a, x))
    assert loop_differs > 0


def test_unsupported_controller_is_rejected():
    import robosuite
    from robosuite.controllers import load_composite_controller_config

    from equi_diffpo.env.fast_control import FastOSCStep, UnsupportedControllerError

    delta_cfg = load_composite_controller_config(controller="BASIC", robot="Panda")   # robosuite's default: delta OSC
    delta_cfg["body_parts"] = {"right": delta_cfg["body_parts"]["right"]}
    env = robosuite.make("Lift", robots="Panda", controller_configs=delta_cfg, has_renderer=False,
                         has_offscreen_renderer=False, use_camera_obs=False)
    try:
        with pytest.raises(UnsupportedControllerError, match="input_type='delta'"):
            FastOSCStep(env)
    finally:
        env.close()

    env = RobosuitePointCloudEnv("lift_d0", CLOUD, seed=0, fast_control=True)
    try:
        arm = env.env.robots[0].part_controllers["right"]
        arm.uncoupling = False          # e.g. a config with uncouple_pos_ori: false
        with pytest.raises(UnsupportedControllerError, match="uncoupling"):
            FastOSCStep(env.env)
    finally:
        env.close()
