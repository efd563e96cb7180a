"""VectorEnv (worker processes and inline) and run_episodes: shapes, crash recovery, and exactly
N complete episodes for any number of envs."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from equi_diffpo.common.robosuite_logs import IMPORT_NOISE
from equi_diffpo.env.rotation import env_action_to_policy_action
from equi_diffpo.env.vector_env import EnvWorkerError, VectorEnv
from equi_diffpo.env_runner.episode_loop import run_episodes

torch.set_num_threads(1)

N_POINTS, N_OBS_STEPS, N_ACTION_STEPS, MAX_STEPS = 256, 2, 8, 16
ENV_KWARGS = dict(task_name="lift_d0", point_cloud={"source": "mesh", "n_points": N_POINTS},
                  max_episode_steps=MAX_STEPS, n_obs_steps=N_OBS_STEPS)


def hold_pose_policy(obs: dict, rngs=None) -> dict:
    """obs agent_pos (B, To, 9) -> {'action': (B, Ta, 10)}: stay at the latest pose, gripper open.
    ``rngs`` (one per row, from run_episodes) is unused: this policy draws nothing."""
    agent_pos = obs["agent_pos"][:, -1]
    rotvec = Rotation.from_quat(agent_pos[:, 3:7]).as_rotvec()          # agent_pos quat is xyzw
    env_action = np.concatenate([agent_pos[:, :3], rotvec, -np.ones((len(agent_pos), 1))], axis=1)
    action = env_action_to_policy_action(env_action)
    return {"action": np.repeat(action[:, None], N_ACTION_STEPS, axis=1)}


@pytest.fixture(scope="module")
def process_vec():
    vec = VectorEnv(ENV_KWARGS, n_envs=2, mode="process", seed=0)
    yield vec
    vec.close()


def test_workers_do_not_print_robosuite_import_warnings(capfd):
    """Each worker imports robosuite anew; its import-time warnings (other robots, GR1 IK, macros) stay out."""
    plain = subprocess.run([sys.executable, "-c", "import robosuite"], capture_output=True, text=True, timeout=300)
    if not any(noise in plain.stderr for noise in IMPORT_NOISE):
        pytest.skip("this robosuite install prints no import warnings")   # e.g. robosuite_models installed
    capfd.readouterr()
    with VectorEnv(ENV_KWARGS, n_envs=2, mode="process", seed=0) as vec:
        vec.reset([0, 1], seeds=[0, 1], render=[False, False])
    err = capfd.readouterr().err     # the workers write to this process's stderr
    assert not [noise for noise in IMPORT_NOISE if noise in err], err


def test_process_reset_and_step_chunk_shapes(process_vec):
    results = process_vec.reset([0, 1], seeds=[0, 1], render=[False, False])
    for result in results:
        assert result.obs["point_cloud"].shape == (N_OBS_STEPS, N_POINTS, 3)
        assert result.obs["agent_pos"].shape == (N_OBS_STEPS, 9)
        assert result.n_steps == 0 and not result.done
    # Different seeds place the cube differently in the two workers.
    assert not np.allclose(results[0].obs["point_cloud"], results[1].obs["point_cloud"])

    actions = hold_pose_policy({"agent_pos": np.stack([r.obs["agent_pos"] for r in results])})["action"]
    assert actions.shape == (2, N_ACTION_STEPS, 10)
    stepped = process_vec.step_chunk([0, 1], actions, render=[False, False])
    for result in stepped:
        assert result.n_steps == N_ACTION_STEPS and not result.done
        assert result.obs["point_cloud"].shape == (N_OBS_STEPS, N_POINTS, 3)
        assert result.obs["agent_pos"].dtype == np.float32


def test_killed_worker_is_reported_and_restarted(process_vec):
    process_vec.reset([0, 1], seeds=[0, 1], render=[False, False])
    restarts = process_vec.n_restarts
    victim = process_vec._procs[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(timeout=10)

    results = process_vec.reset([0, 1], seeds=[2, 3], render=[False, False])
    assert results[0] is not None and results[1] is None
    assert process_vec.n_restarts == restarts + 1
    assert process_vec._procs[1].pid != victim.pid and process_vec._procs[1].is_alive()

    again = process_vec.reset([1], seeds=[3], render=[False])
    assert again[0] is not None and again[0].obs["agent_pos"].shape == (N_OBS_STEPS, 9)
    action = hold_pose_policy({"agent_pos": again[0].obs["agent_pos"][None]})["action"]
    stepped = process_vec.step_chunk([1], action, render=[False])
    assert stepped[0] is not None and stepped[0].n_steps == N_ACTION_STEPS
    assert process_vec.n_restarts == restarts + 1


def test_env_error_in_one_worker_leaves_the_others_in_sync(process_vec):
    results = process_vec.reset([0, 1], seeds=[0, 1], render=[False, False])
    actions = hold_pose_policy({"agent_pos": np.stack([r.obs["agent_pos"] for r in results])})["action"]
    actions[0, 0, 0] = np.nan
    with pytest.raises(EnvWorkerError, match="FloatingPointError"):
        process_vec.step_chunk([0, 1], actions, render=[False, False])
    # Env 1 did step; its reply must have been consumed, not handed to the next call.
    again = process_vec.reset([0, 1], seeds=[0, 1], render=[False, False])
    assert [r.n_steps for r in again] == [0, 0]
    np.testing.assert_allclose(again[1].obs["agent_pos"], results[1].obs["agent_pos"], atol=1e-6)


def check_episodes(episodes, n_episodes: int, seeds) -> None:
    assert [e.index for e in episodes] == list(range(n_episodes))
    assert [e.seed for e in episodes] == list(seeds[:n_episodes])
    for episode in episodes:
        assert episode.env_steps == MAX_STEPS
        assert len(episode.steps) == MAX_STEPS // N_ACTION_STEPS
        assert episode.steps[-1].truncated and not episode.steps[-1].success
        assert not any(s.truncated for s in episode.steps[:-1])
        assert not episode.success and episode.reward == 0.0


@pytest.mark.parametrize("n_envs", [1, 3])
def test_run_episodes_inline_returns_exactly_n_complete_episodes(n_envs):
    n_episodes = 4                    # not a multiple of 3: the last round runs with idle envs
    seeds = list(range(100, 110))
    vec = VectorEnv(ENV_KWARGS, n_envs=n_envs, mode="inline", seed=0)
    try:
        episodes = run_episodes(vec, n_episodes, hold_pose_policy, seeds, keep_steps=True)
    finally:
        vec.close()
    check_episodes(episodes, n_episodes, seeds)
    step = episodes[0].steps[0]
    assert step.obs["point_cloud"].shape == (N_OBS_STEPS, N_POINTS, 3)
    assert step.policy_out["action"].shape == (N_ACTION_STEPS, 10)


def test_run_episodes_with_worker_processes(process_vec):
    seeds = list(range(200, 210))
    episodes = run_episodes(process_vec, 3, hold_pose_policy, seeds)
    check_episodes(episodes, 3, seeds)


def test_run_episodes_replaces_an_episode_whose_worker_died(process_vec):
    calls = []

    def killing_policy(obs: dict, rngs) -> dict:
        calls.append(1)
        if len(calls) == 2:           # mid-episode for both envs: env 0's episode is lost
            os.kill(process_vec._procs[0].pid, signal.SIGKILL)
            process_vec._procs[0].join(timeout=10)
        return hold_pose_policy(obs)

    seeds = list(range(300, 310))
    restarts = process_vec.n_restarts
    episodes = run_episodes(process_vec, 3, killing_policy, seeds)
    assert process_vec.n_restarts == restarts + 1
    assert len(episodes) == 3
    # Episode 0 (seed 300, on env 0) died; episodes 1..3 complete it in its stead.
    assert [e.index for e in episodes] == [1, 2, 3] and [e.seed for e in episodes] == seeds[1:4]
    assert all(e.env_steps == MAX_STEPS and e.steps[-1].truncated for e in episodes)
