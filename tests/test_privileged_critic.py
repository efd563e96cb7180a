"""Asymmetric critic (critic.encoder=privileged): the env's privileged observation and the critic on it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from equi_diffpo.common.checkpoint_io import CheckpointError
from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv, privileged_obs_dim
from equi_diffpo.rl_training.critic import PrivilegedCritic, build_critic

torch.set_num_threads(1)


def test_env_privileged_obs_is_object_state_plus_elapsed_fraction():
    env = RobosuitePointCloudEnv("lift_d0", point_cloud={"source": "mesh", "n_points": 32, "presample_points": 512},
                                 max_episode_steps=10, seed=0)
    try:
        obs = env.reset(seed=3)
        assert obs["privileged"].shape == (privileged_obs_dim("lift_d0"),) and obs["privileged"].dtype == np.float32
        np.testing.assert_allclose(obs["privileged"][:-1], env.raw_obs["object-state"], rtol=1e-6)
        assert obs["privileged"][-1] == 0.0
        action = np.concatenate([obs["agent_pos"][:3], [np.pi, 0, 0], [-1]])
        for _ in range(3):
            obs, *_ = env.step_env_action(action)
        assert obs["privileged"][-1] == pytest.approx(0.3)
    finally:
        env.close()


def fake_obs(n: int, privileged_dim: int = 11) -> dict:
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(-2, 0, privileged_dim)       # features a hundred times apart in scale
    return {"agent_pos": torch.randn(n, 2, 9, generator=g) + 1.0,
            "privileged": torch.randn(n, 2, privileged_dim, generator=g) * scales + 0.5}


def test_input_stats_standardize_the_first_batch_and_travel_with_the_state_dict():
    critic = PrivilegedCritic(9, 11, hidden=16)
    obs = fake_obs(256)
    assert critic.needs_input_stats
    critic.fit_input_stats(obs)
    assert not critic.needs_input_stats
    x = (critic.state_input(obs) - critic.input_mean) / critic.input_std
    torch.testing.assert_close(x.mean(0), torch.zeros(20), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, correction=0), torch.ones(20), atol=1e-4, rtol=0)
    assert critic(obs).shape == (256,)
    restored = PrivilegedCritic(9, 11, hidden=16)
    restored.load_state_dict(critic.state_dict())
    assert not restored.needs_input_stats
    torch.testing.assert_close(restored(obs), critic(obs))


def test_missing_privileged_obs_and_wrong_checkpoint_are_named():
    critic = PrivilegedCritic(9, 11, hidden=16)
    with pytest.raises(KeyError, match="privileged"):
        critic({"agent_pos": torch.zeros(2, 2, 9), "point_cloud": torch.zeros(2, 2, 8, 3)})
    with pytest.raises(CheckpointError, match="critic.encoder='privileged'"):
        critic.load_state_dict(PrivilegedCritic(9, 24, hidden=16).state_dict())


def test_build_critic_sizes_the_input_from_the_task():
    critic = build_critic({"encoder": "privileged", "hidden": 16}, policy=None, base=None,
                          task={"name": "stack_d0", "agent_pos_dim": 9}, n_obs_steps=2)
    assert isinstance(critic, PrivilegedCritic)
    assert critic.input_mean.shape == (9 + privileged_obs_dim("stack_d0"),)
