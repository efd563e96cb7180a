"""RL rollout collector: exactly N whole episodes for any number of envs, consistent flat arrays,
bootstrapping on truncation only, and stored log-probs that the PPO ratio reproduces (ratio 1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import MAX_EPISODE_STEPS, TINY_RL, compose_cfg
from equi_diffpo.env_runner.pointcloud_runner import torch_obs
from equi_diffpo.rl_training.rl_rollout_collector import RLRolloutCollector, RolloutBatch
from equi_diffpo.rl_training.rl_workspace import RLWorkspace

torch.set_num_threads(1)

N_EPISODES = 3
N_ACTION_STEPS = 8


@pytest.fixture(scope="module")
def rl_workspace(tiny_checkpoint, tmp_path_factory) -> RLWorkspace:
    cfg = compose_cfg("train_maniflow_pointcloud_rl", TINY_RL + [f"pretrained_policy_path={tiny_checkpoint}"])
    return RLWorkspace(cfg, output_dir=str(tmp_path_factory.mktemp("rl_collector")))


def collect_one_batch(rl_workspace: RLWorkspace, tmp_path, reward_shaping: bool, n_episodes: int, n_envs: int,
                      seed: int) -> RolloutBatch:
    """One batch from a fresh inline collector on the workspace's task with ``reward_shaping`` set."""
    task = dict(rl_workspace.cfg.task, reward_shaping=reward_shaping)
    collector = RLRolloutCollector(task, str(tmp_path), n_episodes_per_batch=n_episodes, n_envs=n_envs,
                                   max_episode_steps=MAX_EPISODE_STEPS, n_obs_steps=2, seed=seed, vec_mode="inline")
    try:
        return collector.collect(rl_workspace.rl_policy, rl_workspace.critic)
    finally:
        collector.close()


@pytest.mark.parametrize("n_envs", [1, 2, 3])
def test_collects_whole_episodes_with_consistent_arrays(rl_workspace, tmp_path, n_envs):
    # The sparse success reward: bootstrapped at the time limit.
    batch = collect_one_batch(rl_workspace, tmp_path, reward_shaping=False, n_episodes=N_EPISODES, n_envs=n_envs,
                              seed=n_envs)

    episodes = batch.episodes
    assert [e.index for e in episodes] == list(range(N_EPISODES))
    lengths = [len(e.steps) for e in episodes]
    m = sum(lengths)
    assert len(batch.rewards) == m
    for name in ("log_probs", "values", "next_values", "terminated", "episode_end"):
        assert getattr(batch, name).shape == (m,), name
    assert batch.chains.shape == (m, rl_workspace.rl_policy.num_steps + 1, 16, 10)
    assert batch.obs["point_cloud"].shape == (m, 2, 64, 3)
    assert batch.obs["agent_pos"].shape == (m, 2, 9)

    # Every episode is complete: it ended by success or by the time limit, never cut off.
    ends = np.cumsum(lengths) - 1
    assert np.flatnonzero(batch.episode_end).tolist() == ends.tolist()
    for episode in episodes:
        last = episode.steps[-1]
        assert last.success or last.truncated
        assert not any(s.success or s.truncated for s in episode.steps[:-1])
        assert episode.env_steps <= MAX_EPISODE_STEPS
        if not episode.success:
            assert episode.env_steps == MAX_EPISODE_STEPS
            assert len(episode.steps) == -(-MAX_EPISODE_STEPS // N_ACTION_STEPS)
    assert batch.env_steps == sum(e.env_steps for e in episodes)
    flat = [s for e in episodes for s in e.steps]
    np.testing.assert_array_equal(batch.terminated, [float(s.success) for s in flat])
    np.testing.assert_allclose(batch.rewards, [s.reward for s in flat])

    # Within an episode the next obs is the next step's obs.
    for i in np.flatnonzero(batch.episode_end == 0):
        np.testing.assert_array_equal(flat[i].next_obs["agent_pos"], batch.obs["agent_pos"][i + 1])

    critic = rl_workspace.critic.eval()
    with torch.no_grad():
        # A 16-step episode of a barely trained policy ends by the time limit: bootstrap from
        # V(next obs) there; a success (if any) is terminal and gets no bootstrap.
        truncated = [i for i, s in enumerate(flat) if s.truncated]
        assert truncated
        next_obs = {k: np.stack([flat[i].next_obs[k] for i in truncated]) for k in flat[0].next_obs}
        expected = critic(torch_obs(next_obs, torch.device("cpu"))).numpy()
        np.testing.assert_allclose(batch.next_values[truncated], expected, rtol=1e-5, atol=1e-6)
        assert np.all(batch.next_values[truncated] != 0)
        successes = [i for i, s in enumerate(flat) if s.success]
        assert np.all(batch.next_values[successes] == 0)
        np.testing.assert_allclose(batch.values, critic(torch_obs(batch.obs, torch.device("cpu"))).numpy(),
                                   rtol=1e-5, atol=1e-6)

        # The PPO ratio of an unchanged policy is 1: stored log-probs == recomputed ones.
        rl_workspace.rl_policy.eval()
        recomputed = rl_workspace.rl_policy.get_log_prob(torch_obs(batch.obs, torch.device("cpu")),
                                                         torch.from_numpy(batch.chains)).log_prob.numpy()
    np.testing.assert_allclose(np.exp(recomputed - batch.log_probs), 1.0, atol=1e-4)
    assert np.all(np.isfinite(batch.log_probs))

    # The frozen encoder's output the policy acted on is kept for the PPO update (which then encodes nothing).
    assert rl_workspace.rl_policy.obs_encoder_frozen
    with torch.no_grad():
        encoded = rl_workspace.rl_policy.encode_obs(torch_obs(batch.obs, torch.device("cpu"))).numpy()
    assert batch.cond.shape == encoded.shape
    np.testing.assert_allclose(batch.cond, encoded, rtol=1e-5, atol=1e-6)


def test_shaped_reward_episodes_are_not_bootstrapped_at_the_time_limit(rl_workspace, tmp_path):
    """task.reward_shaping: a success pays for the remaining steps (finite horizon), so a truncated episode
    must not get the critic's infinite-horizon value on top (see the collector's docstring)."""
    batch = collect_one_batch(rl_workspace, tmp_path, reward_shaping=True, n_episodes=2, n_envs=1, seed=0)
    flat = [s for e in batch.episodes for s in e.steps]
    truncated = [i for i, s in enumerate(flat) if s.truncated]
    assert truncated and np.all(batch.next_values[truncated] == 0)
    assert np.all(batch.next_values[batch.episode_end == 0] != 0)   # inside episodes the critic still bootstraps
