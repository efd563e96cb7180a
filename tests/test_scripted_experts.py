"""Scripted experts: seeded episodes succeed, judged from the sim state rather than the env's flag,
and their actions respect the smoothness caps (checked with scipy, not the expert's own maths)."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv
from equi_diffpo.env.scripted_experts import get_expert, run_episode, wrap_angle

SEEDS = (0, 1, 2)
MAX_STEP_M = 0.02       # the experts' fastest setpoint speed is 1.6 cm per step
MAX_TURN_RAD = 0.1 + 1e-6


def make_env(task_name: str) -> RobosuitePointCloudEnv:
    return RobosuitePointCloudEnv(task_name, {"source": "mesh", "n_points": 256}, seed=0)


def assert_smooth(actions: np.ndarray) -> None:
    """Per-step position change and rotation angle between consecutive orientation targets."""
    assert actions.shape[1] == 7
    assert np.all(np.linalg.norm(np.diff(actions[:, :3], axis=0), axis=1) <= MAX_STEP_M)
    rots = Rotation.from_rotvec(actions[:, 3:6])
    assert np.all((rots[1:] * rots[:-1].inv()).magnitude() <= MAX_TURN_RAD)
    assert set(np.unique(actions[:, 6])) <= {-1.0, 1.0}


@pytest.fixture(scope="module")
def lift_env():
    env = make_env("lift_d0")
    yield env
    env.close()


@pytest.fixture(scope="module")
def stack_env():
    env = make_env("stack_d0")
    yield env
    env.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_lift_expert_lifts_the_cube(lift_env, seed):
    result = run_episode(lift_env, get_expert("lift_d0"), seed)
    assert result.success and result.n_steps < 150
    # Lift's table top is at z = 0.8; the cube counts as lifted 4 cm above it.
    assert lift_env.raw_obs["cube_pos"][2] > 0.84
    assert_smooth(result.actions)


@pytest.mark.parametrize("seed", SEEDS)
def test_stack_expert_puts_cube_a_on_cube_b(stack_env, seed):
    result = run_episode(stack_env, get_expert("stack_d0"), seed)
    assert result.success and result.n_steps < 250
    a, b = stack_env.raw_obs["cubeA_pos"], stack_env.raw_obs["cubeB_pos"]
    # Stack's cubes have half-sizes 2.0 cm (A) and 2.5 cm (B): A's centre sits 4.5 cm above B's.
    assert np.linalg.norm(a[:2] - b[:2]) < 0.02
    assert abs((a[2] - b[2]) - 0.045) < 0.01
    assert_smooth(result.actions)


def test_expert_randomness_changes_the_demo(lift_env):
    """Same scene, different expert rng: the trajectories differ (approach, speed, grasp point)."""
    expert = get_expert("lift_d0")
    runs = []
    for expert_seed in (0, 1):
        lift_env.reset(seed=5)
        expert.reset(lift_env, np.random.default_rng(expert_seed))
        actions = []
        for _ in range(5):
            actions.append(expert.act(lift_env))
            lift_env.step_env_action(actions[-1])
        runs.append(np.array(actions))
    assert not np.allclose(runs[0], runs[1])


def test_unknown_task_names_the_tasks_with_experts():
    with pytest.raises(KeyError, match="lift_d0.*stack_d0|stack_d0.*lift_d0"):
        get_expert("no_such_task")


@pytest.mark.parametrize("angle, period, expected", [
    (0.3, np.pi / 2, 0.3),
    (np.pi / 2 - 0.1, np.pi / 2, -0.1),
    (-np.pi / 2 + 0.2, np.pi / 2, 0.2),
    (3.0, np.pi, 3.0 - np.pi),
])
def test_wrap_angle(angle, period, expected):
    assert wrap_angle(angle, period) == pytest.approx(expected)


def test_shaped_reward_is_dense_and_success_is_absorbing():
    """reward_shaping: robosuite's reaching reward (normalized, < 1) on every step before success;
    the success step pays the success reward (1.0) for itself and every step left until the limit."""
    env = RobosuitePointCloudEnv("lift_d0", {"source": "mesh", "n_points": 64}, max_episode_steps=150,
                                 seed=0, reward_shaping=True)
    expert = get_expert("lift_d0")
    env.reset(seed=SEEDS[0])
    expert.reset(env, np.random.default_rng([SEEDS[0], 1]))
    rewards = []
    while True:
        _, reward, done, info = env.step_env_action(expert.act(env))
        rewards.append(reward)
        if done:
            break
    env.close()
    assert info["success"]
    assert all(0.0 < r < 1.0 for r in rewards[:-1])
    assert rewards[-1] == pytest.approx(1 + 150 - len(rewards))
