"""``scripts/failure_map.py``: the grid of success by initial object position (hand-made points) and the
replay of a demo's first sim state to its object position (real lift_d0 env)."""
from __future__ import annotations

import sys

import numpy as np

from conftest import REPO_ROOT
from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import failure_map  # noqa: E402


def test_grid_counts_successes_and_demos_per_cell():
    starts = np.array([[-0.03, -0.03], [-0.02, -0.02], [0.03, 0.03], [0.02, 0.03], [0.03, -0.03]])
    success = np.array([True, False, True, True, False])
    demos = np.array([[0.025, 0.025], [0.025, 0.02], [-0.05, -0.05]])   # the last lies outside: edge cell
    table = failure_map.grid_markdown(starts, success, demos, bins=2).splitlines()
    assert table[0] == "| y \\ x | -3.0..+0.0 cm | +0.0..+3.0 cm |"
    assert table[2] == "| +0.0..+3.0 cm | 0/0 [0] | 2/2 [2] |"      # high y first
    assert table[3] == "| -3.0..+0.0 cm | 1/2 [1] | 0/1 [0] |"
    assert "[" not in failure_map.grid_markdown(starts, success, None, bins=2)


def test_episode_starts_and_demo_replay_agree():
    env = RobosuitePointCloudEnv("lift_d0")
    try:
        starts = failure_map.episode_starts(env, [100000, 100001])
        assert starts.shape == (2, 2) and np.all(np.abs(starts) <= 0.031)    # Lift's placement range
        assert not np.allclose(starts[0], starts[1])
        env.reset(seed=100001)
        first_state = env.get_state()
        env.reset(seed=7)
        env.reset_to(first_state)             # how training_demo_starts reads a demo's start
        np.testing.assert_allclose(failure_map.object_xy(env), starts[1], atol=1e-9)
    finally:
        env.close()
