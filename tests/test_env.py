"""The robosuite Lift wrapper: point clouds see the cube where the simulator has it, for both
sources; observation/state/render contracts; time-limit truncation.

The cube's pose and size are read from the MuJoCo model/data directly ('cube_main' body,
'cube_g0_vis' geom), independent of the point-cloud code.
"""
from dataclasses import dataclass

import mujoco
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv
from equi_diffpo.env.rotation import env_action_to_policy_action

torch.set_num_threads(1)

MAX_STEPS = 5


@dataclass
class Box:
    center: np.ndarray   # (3,) world
    rot: np.ndarray      # (3, 3) body -> world
    half: np.ndarray     # (3,) half extents

    def contains(self, points: np.ndarray, margin: float = 0.003) -> np.ndarray:
        """(P, 3) -> (P,) bool: inside the box grown by ``margin``."""
        local = (points[:, :3] - self.center) @ self.rot
        return np.all(np.abs(local) <= self.half + margin, axis=1)

    def top_surface(self, points: np.ndarray, depth: float = 0.005) -> np.ndarray:
        return self.contains(points) & (points[:, 2] > self.center[2] + self.half[2] - depth)


def cube_box(env: RobosuitePointCloudEnv) -> Box:
    model, data = env.env.sim.model._model, env.env.sim.data._data
    body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "cube_main")
    geom = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "cube_g0_vis")
    w, x, y, z = data.xquat[body]
    return Box(data.xpos[body].copy(), Rotation.from_quat([x, y, z, w]).as_matrix(), model.geom_size[geom].copy())


def hold_pose_action(agent_pos: np.ndarray) -> np.ndarray:
    """(9,) agent_pos -> (10,) policy action that keeps the gripper where it is, open."""
    rotvec = Rotation.from_quat(agent_pos[3:7]).as_rotvec()   # agent_pos quat is xyzw
    return env_action_to_policy_action(np.concatenate([agent_pos[:3], rotvec, [-1.0]]))


@pytest.fixture(scope="module")
def mesh_env():
    env = RobosuitePointCloudEnv("lift_d0", {"source": "mesh", "n_points": 1024}, max_episode_steps=MAX_STEPS,
                                 render_size=64, seed=0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def camera_env():
    # 4096 points: at 84x84 the cube covers few pixels, and the check needs enough of them.
    env = RobosuitePointCloudEnv("lift_d0", {"source": "camera", "n_points": 4096}, seed=0)
    yield env
    env.close()


# ----------------------------------------------------------------------------- point clouds
def test_mesh_cloud_sees_the_cube_and_follows_it(mesh_env):
    obs = mesh_env.reset(seed=0)
    box = cube_box(mesh_env)
    points = obs["point_cloud"]
    assert points.shape == (1024, 3) and points.dtype == np.float32
    inside = box.contains(points)
    assert inside.sum() > 20
    assert np.linalg.norm(points[inside].mean(0) - box.center) < 0.01

    # Teleport the cube 15 cm away, turned 40 deg about z, through its free joint.
    sim = mesh_env.env.sim
    adr = sim.model._model.jnt_qposadr[mujoco.mj_name2id(sim.model._model, mujoco.mjtObj.mjOBJ_JOINT, "cube_joint0")]
    new_pos = box.center + np.array([0.12, -0.09, 0.0])
    sim.data._data.qpos[adr: adr + 7] = np.concatenate([new_pos, [np.cos(0.35), 0, 0, np.sin(0.35)]])
    sim.forward()
    obs = mesh_env.reset_to(mesh_env.get_state())

    moved = cube_box(mesh_env)
    np.testing.assert_allclose(moved.center, new_pos, atol=1e-9)
    points = obs["point_cloud"]
    inside = moved.contains(points)
    assert inside.sum() > 20
    assert np.linalg.norm(points[inside].mean(0) - new_pos) < 0.01
    assert box.contains(points).sum() == 0     # nothing left where the cube was


def test_camera_cloud_agrees_with_mesh_cloud_on_the_cube(mesh_env, camera_env):
    mesh_env.reset(seed=3)
    state = mesh_env.get_state()
    mesh_points = mesh_env.reset_to(state)["point_cloud"]
    camera_points = camera_env.reset_to(state)["point_cloud"]    # the very same scene
    box = cube_box(camera_env)
    np.testing.assert_allclose(box.center, cube_box(mesh_env).center)

    assert camera_points.shape == (4096, 3)
    mesh_top, camera_top = mesh_points[box.top_surface(mesh_points)], camera_points[box.top_surface(camera_points)]
    assert len(mesh_top) >= 10 and len(camera_top) >= 5
    assert np.linalg.norm(camera_top[:, :2].mean(0) - mesh_top[:, :2].mean(0)) < 0.015
    assert np.linalg.norm(camera_top[:, :2].mean(0) - box.center[:2]) < 0.015
    # The cameras see surfaces only: nothing hovers above the cube, and the table is cropped away.
    above = (np.linalg.norm(camera_points[:, :2] - box.center[:2], axis=1) < 0.015) & (camera_points[:, 2] > box.center[2] + box.half[2] + 0.01)
    assert above.sum() == 0
    assert camera_points[:, 2].min() >= 0.805


def test_unknown_task_lists_valid_names():
    with pytest.raises(KeyError, match="lift_d0.*stack_d0"):
        RobosuitePointCloudEnv("lift_d9", {"source": "mesh", "n_points": 256})


# ----------------------------------------------------------------------------- contracts
def test_agent_pos_is_the_controller_site_pose_and_gripper(mesh_env):
    obs = mesh_env.reset(seed=0)
    agent_pos = obs["agent_pos"]
    assert agent_pos.shape == (9,) and agent_pos.dtype == np.float32
    model, data = mesh_env.env.sim.model._model, mesh_env.env.sim.data._data
    site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "gripper0_right_grip_site")
    np.testing.assert_allclose(agent_pos[:3], data.site_xpos[site], atol=1e-5)
    site_rot = data.site_xmat[site].reshape(3, 3)
    np.testing.assert_allclose(Rotation.from_quat(agent_pos[3:7]).as_matrix(), site_rot, atol=1e-4)
    assert np.all(np.abs(agent_pos[7:]) < 0.05)         # finger joint positions (m)


def test_step_rejects_non_finite_and_misshaped_actions(mesh_env):
    obs = mesh_env.reset(seed=0)
    action = hold_pose_action(obs["agent_pos"])
    for bad in (np.nan, np.inf):
        broken = action.copy()
        broken[4] = bad
        with pytest.raises(FloatingPointError):
            mesh_env.step(broken)
    with pytest.raises(ValueError, match="10"):
        mesh_env.step(action[:7])
    assert mesh_env.steps == 0


def test_get_state_reset_to_round_trip(mesh_env):
    obs = mesh_env.reset(seed=1)
    action = hold_pose_action(obs["agent_pos"])
    action[2] += 0.05                                    # move up so the later state differs
    for _ in range(3):
        obs, *_ = mesh_env.step(action)
    state = mesh_env.get_state()
    restored = mesh_env.reset_to(state)["agent_pos"]
    # step()'s obs comes from the kinematics computed before the last physics substep's
    # integration (MuJoCo's mj_step order), reset_to's from a forward pass at the state: <1 mm apart.
    np.testing.assert_allclose(restored, obs["agent_pos"], atol=1e-3)

    action[0] += 0.05
    for _ in range(3):
        moved, *_ = mesh_env.step(action)
    assert np.abs(moved["agent_pos"][:3] - restored[:3]).max() > 1e-3
    again = mesh_env.reset_to(state)
    np.testing.assert_allclose(again["agent_pos"], restored, atol=1e-6)
    np.testing.assert_array_equal(mesh_env.get_state(), state)
    with pytest.raises(ValueError, match="expects"):
        mesh_env.reset_to(state[:-1])


def test_render_returns_an_rgb_frame(mesh_env):
    mesh_env.reset(seed=0)
    frame = mesh_env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert frame.std() > 5                               # an actual image, not a blank buffer


def test_render_without_renderer_says_how_to_enable_it():
    env = RobosuitePointCloudEnv("lift_d0", {"source": "mesh", "n_points": 256}, seed=0)
    try:
        with pytest.raises(RuntimeError, match="render_size"):
            env.render()
    finally:
        env.close()


def test_time_limit_truncates_on_the_last_step(mesh_env):
    obs = mesh_env.reset(seed=2)
    action = hold_pose_action(obs["agent_pos"])
    for step in range(1, MAX_STEPS + 1):
        obs, reward, done, info = mesh_env.step(action)
        if step < MAX_STEPS:
            assert not done and not info["truncated"], f"ended early at step {step}"
    assert done and info["truncated"] and not info["success"]
    assert reward == 0.0


def test_episode_limit_comes_from_the_task_yaml_only():
    """One source of truth: an env built without a limit uses config/task/<name>.yaml's max_episode_steps."""
    from omegaconf import OmegaConf

    from equi_diffpo.env.task_registry import TASK_CONFIG_DIR, TASKS, episode_limit

    for name in TASKS:
        assert episode_limit(name) == OmegaConf.load(TASK_CONFIG_DIR / f"{name}.yaml").max_episode_steps
    assert episode_limit("lift_d0") == 200 and episode_limit("pick_place_d0") == 600
    with pytest.raises(KeyError, match="valid names"):
        episode_limit("lift_d9")


def test_stack_task_cloud_tells_the_cubes_apart_by_colour():
    """stack_d0 picks cubeA (red wood) and places it on cubeB (green wood): the task's cloud carries rgb and
    the two cubes' points differ in colour (xyz alone left a 1 cm size difference, and BC went for cubeB)."""
    from conftest import compose_cfg
    from omegaconf import OmegaConf

    task = compose_cfg("train_maniflow_pointcloud", ["task=stack_d0"]).task
    env = RobosuitePointCloudEnv("stack_d0", OmegaConf.to_container(task.point_cloud), max_episode_steps=MAX_STEPS)
    try:
        cloud = env.reset(seed=0)["point_cloud"]
        assert cloud.shape[1] == task.point_dim == 6
        for cube, half, (more, less) in (("cubeA", 0.02, (0, 1)), ("cubeB", 0.025, (1, 0))):
            rgb = cloud[np.abs(cloud[:, :3] - env.raw_obs[f"{cube}_pos"]).max(axis=1) < half + 0.003, 3:]
            assert len(rgb) > 20 and rgb[:, more].mean() > rgb[:, less].mean() + 0.15, (cube, rgb.mean(axis=0))
    finally:
        env.close()


def test_chunk_step_equals_single_steps():
    """ChunkedEnv converts a chunk's actions in one call (``env_actions``): the episode must be bit-identical
    to stepping the same actions one at a time."""
    from equi_diffpo.env.chunked_env import ChunkedEnv

    chunked = ChunkedEnv(n_obs_steps=2, task_name="lift_d0", point_cloud={"source": "mesh", "n_points": 256},
                         max_episode_steps=20, seed=0)
    single = RobosuitePointCloudEnv("lift_d0", {"source": "mesh", "n_points": 256}, max_episode_steps=20, seed=0)
    try:
        obs = single.reset(seed=3)
        chunked.reset(seed=3)
        rng = np.random.default_rng(0)
        actions = np.stack([hold_pose_action(obs["agent_pos"])] * 8)
        actions[:, :3] += rng.normal(0, 0.02, (8, 3))
        actions[:, 3:9] += rng.normal(0, 0.05, (8, 6))
        result = chunked.step_chunk(actions)
        steps = [single.step(a) for a in actions]
        assert result.n_steps == 8 and result.reward == sum(step[1] for step in steps)
        for key in ("agent_pos", "point_cloud", "privileged"):
            np.testing.assert_array_equal(result.obs[key][-1], steps[-1][0][key])
        np.testing.assert_array_equal(chunked.env.get_state(), single.get_state())
    finally:
        chunked.close()
        single.close()


def wobble_actions(agent_pos: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 10) policy actions: hold the pose of ``agent_pos`` (9,) plus noise, so frames differ."""
    actions = np.stack([hold_pose_action(agent_pos)] * n)
    actions[:, :3] += rng.normal(0, 0.02, (n, 3))
    actions[:, 3:9] += rng.normal(0, 0.05, (n, 6))
    return actions


def test_skipping_unread_clouds_returns_the_same_chunks():
    """``skip_unread_clouds`` builds clouds only for the frames left in the history: every chunk's history,
    reward and outcome must equal those of building every frame's cloud, over full chunks, a 1-step chunk
    (the history keeps a frame of the previous chunk) and an episode truncated in the middle of a chunk
    (its last two frames are steps 19 and 20, step 19's cloud is built after the fact)."""
    from equi_diffpo.env.chunked_env import ChunkedEnv

    kwargs = dict(n_obs_steps=2, task_name="lift_d0", point_cloud={"source": "mesh", "n_points": 256},
                  max_episode_steps=20, seed=0)
    skipping, eager = ChunkedEnv(skip_unread_clouds=True, **kwargs), ChunkedEnv(skip_unread_clouds=False, **kwargs)
    built = []
    complete = skipping.env.complete
    skipping.env.complete = lambda pending: built.append(pending.draw_key) or complete(pending)
    try:
        rng = np.random.default_rng(0)
        for seed, chunk_lengths in ((3, (8, 1, 8, 8)), (4, (8,))):
            results = [(skipping.reset(seed=seed), eager.reset(seed=seed))]
            for n in chunk_lengths:
                actions = wobble_actions(results[-1][1].obs["agent_pos"][-1], rng, n)
                results.append((skipping.step_chunk(actions), eager.step_chunk(actions)))
            assert results[-1][1].truncated == (seed == 3) and results[-1][1].n_steps == (3 if seed == 3 else 8)
            for skipped, full in results:
                assert (skipped.reward, skipped.done, skipped.success, skipped.truncated, skipped.n_steps) == \
                       (full.reward, full.done, full.success, full.truncated, full.n_steps)
                for key in ("point_cloud", "agent_pos", "privileged"):
                    np.testing.assert_array_equal(skipped.obs[key], full.obs[key])
        steps = [key[1] for key in built]
        assert steps == [0, 7, 8, 9, 16, 17, 19, 20, 0, 7, 8], steps     # never a frame nobody reads
    finally:
        skipping.close()
        eager.close()


def test_a_frames_cloud_does_not_depend_on_which_frames_were_built():
    """A frame's downsampling is drawn from its own key (episode seed, step), not from a stream shared by
    the episode's frames: building a few pending frames, in any order, gives the clouds of stepping eagerly."""
    kwargs = dict(task_name="lift_d0", point_cloud={"source": "mesh", "n_points": 256}, max_episode_steps=20)
    eager, lazy = RobosuitePointCloudEnv(seed=0, **kwargs), RobosuitePointCloudEnv(seed=1, **kwargs)
    try:
        actions = RobosuitePointCloudEnv.env_actions(
            wobble_actions(eager.reset(seed=5)["agent_pos"], np.random.default_rng(1), 6))
        lazy.reset(seed=5)
        clouds = [eager.step_env_action(a)[0]["point_cloud"] for a in actions]
        pending = [lazy.step_env_action_pending(a)[0] for a in actions]
        for i in (5, 2, 0):
            np.testing.assert_array_equal(lazy.complete(pending[i])["point_cloud"], clouds[i])
        assert not np.array_equal(clouds[0], clouds[1])
    finally:
        eager.close()
        lazy.close()
