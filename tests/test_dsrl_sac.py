"""rl_policy=dsrl: the bounded per-entry noise prior, the replay of chunk transitions, SAC's update (it must
learn a bandit in x0), and one workspace epoch from the tiny BC checkpoint to a checkpoint evaluation loads."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import TINY_POLICY_KWARGS, TINY_RL, compose_cfg, read_metrics, tiny_base_policy, tiny_obs
from equi_diffpo.common.checkpoint_io import load_policy
from equi_diffpo.model.noise_prior import ConditionalNoisePrior
from equi_diffpo.policy.dsrl_policy import DSRLPolicy
from equi_diffpo.policy.latent_noise_policy import LatentNoisePolicy
from equi_diffpo.rl_training.latent_q import LatentQCritic
from equi_diffpo.rl_training.rl_workspace import RLWorkspace
from equi_diffpo.rl_training.sac_trainer import SACConfig, SACTrainer, rollout_rows
from equi_diffpo.rl_training.transition_replay import TransitionReplay

torch.set_num_threads(1)
H, DA = TINY_POLICY_KWARGS["horizon"], TINY_POLICY_KWARGS["action_dim"]


def dsrl_policy(bound: float = 1.5) -> DSRLPolicy:
    torch.manual_seed(0)
    return DSRLPolicy(tiny_base_policy(), noise_prior_hidden=32, noise_prior_mean_bound=bound)


def test_bounded_prior_starts_at_bc_and_stays_in_bound():
    prior = ConditionalNoisePrior(cond_dim=5, horizon=H, action_dim=DA, hidden=16, mean_bound=0.5)
    cond = torch.randn(4, 5)
    mean, std = prior(cond)
    assert mean.shape == std.shape == (4, H, DA)
    assert torch.equal(mean, torch.zeros_like(mean)) and torch.equal(std, torch.ones_like(std))
    with torch.no_grad():
        prior.mean_net[-1].bias.fill_(100.0)
    assert prior(cond)[0].abs().max() <= 0.5
    with pytest.raises(ValueError, match="mean_bound"):
        ConditionalNoisePrior(5, H, DA, mean_bound=-1.0)


def test_dsrl_policy_samples_and_scores_its_x0():
    policy = dsrl_policy()
    obs = tiny_obs(3)
    sample = policy.sample_actions(obs, generators=[torch.Generator().manual_seed(i) for i in range(3)])
    assert sample.chains.shape == (3, 3, H, DA) and policy.latent_dim == H * DA
    # The stored log-prob is the prior's density of the chain's x0, as get_log_prob scores it.
    torch.testing.assert_close(policy.get_log_prob(obs, sample.chains).log_prob, sample.log_prob)
    x0, log_prob = policy.rsample(policy.cond_features(sample.cond))
    assert x0.shape == (3, H, DA) and log_prob.shape == (3,)
    log_prob.sum().backward()   # the reparameterised draw reaches the prior's parameters
    assert policy.base.noise_prior.log_std.grad is not None


def test_dsrl_refuses_a_latent_ppo_prior():
    base = tiny_base_policy()
    LatentNoisePolicy(base)   # gives the base a chunk-shared, unbounded prior
    with pytest.raises(ValueError, match="rl_policy=latent"):
        DSRLPolicy(base)


def test_replay_overwrites_the_oldest_rows():
    replay = TransitionReplay(capacity=5, device="cpu")
    rows = lambda start, n: {k: torch.arange(start, start + n, dtype=torch.float32).view(n, 1).expand(n, 2)  # noqa: E731
                             if k != "reward" and k != "done" else torch.arange(start, start + n, dtype=torch.float32)
                             for k in ("state", "features", "x0", "reward", "next_state", "next_features", "done")}
    replay.add(rows(0, 3))
    replay.add(rows(3, 4))
    assert len(replay) == 5
    assert sorted(replay.data["reward"].tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    batch = replay.sample(7, torch.Generator().manual_seed(0))
    assert batch["state"].shape == (7, 2) and set(batch["reward"].tolist()) <= {2.0, 3.0, 4.0, 5.0, 6.0}


def test_rollout_rows_link_each_step_to_the_next_within_its_episode():
    policy = dsrl_policy()
    m = 5   # two episodes: steps 0-2 and 3-4
    rollout = SimpleNamespace(
        obs={"agent_pos": np.arange(m * 2 * 9, dtype=np.float32).reshape(m, 2, 9),
             "privileged": np.zeros((m, 2, 4), np.float32), "point_cloud": np.zeros((m, 2, 1, 3), np.float32)},
        cond=np.random.rand(m, policy.base.cond_dim).astype(np.float32), chains=np.random.rand(m, 3, H, DA),
        rewards=np.arange(m, dtype=np.float32), episode_end=np.array([0, 0, 1, 0, 1], np.float32))
    rows = rollout_rows(rollout, policy, reward_scale=0.5)
    assert rows["state"].shape == (m, 13) and rows["x0"].shape == (m, H, DA)
    torch.testing.assert_close(rows["next_state"], rows["state"][[1, 2, 2, 4, 4]])
    torch.testing.assert_close(rows["next_features"], rows["features"][[1, 2, 2, 4, 4]])
    torch.testing.assert_close(rows["reward"], torch.arange(m, dtype=torch.float32) * 0.5)


def test_sac_learns_a_bandit_in_x0():
    """One-step episodes whose reward is highest at x0 = +1 in every entry: the prior's mean must move there
    (from 0) and its std shrink, as far as the KL budget to N(0, I) allows (56 entries: ~28 nats at mean 1)."""
    policy = dsrl_policy(bound=2.0)
    critic = LatentQCritic(agent_pos_dim=2, privileged_dim=1, latent_dim=policy.latent_dim, hidden=64)
    cfg = SACConfig(batch_size=64, warmup_transitions=0, init_alpha=1e-3, target_kl=40.0, actor_lr=3e-3,
                    critic_lr=3e-3, reward_scale=1.0)
    trainer = SACTrainer(policy, critic, cfg)
    features = policy.cond_features(policy.encode_obs(tiny_obs(1))).detach()
    gen = torch.Generator().manual_seed(0)
    start = policy.base.noise_prior(features)[0].mean().item()
    for _ in range(30):
        with torch.no_grad():
            x0, _ = policy.rsample(features.expand(32, -1))
        reward = -(x0 - 1.0).square().mean(dim=(1, 2))
        state = torch.randn(32, 3, generator=gen)
        trainer.replay.add({"state": state, "features": features.expand(32, -1), "x0": x0, "reward": reward,
                            "next_state": state, "next_features": features.expand(32, -1), "done": torch.ones(32)})
        if critic.needs_input_stats:
            critic.fit_state_stats(state)
        stats = trainer.update(20)
    mean = policy.base.noise_prior(features)[0].mean().item()
    assert start == 0.0 and mean > 0.5, mean
    assert policy.prior_std().mean() < 0.8 and np.isfinite(stats["sac/critic_loss"])


@pytest.fixture(scope="module")
def dsrl_run(tiny_checkpoint, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("dsrl_run"))
    cfg = compose_cfg("train_maniflow_pointcloud_rl", TINY_RL + [
        f"pretrained_policy_path={tiny_checkpoint}", "rl_policy=dsrl", "rl_training.sac_trainer.warmup_transitions=1",
        "rl_training.sac_trainer.batch_size=4", "rl_training.sac_trainer.critic_hidden=16"])
    workspace = RLWorkspace(cfg, output_dir=output_dir)
    bc_weights = {k: v.clone() for k, v in workspace.model.state_dict().items()}
    return workspace, workspace.run(), bc_weights


def test_dsrl_epoch_trains_the_prior_and_saves_an_evaluable_checkpoint(dsrl_run):
    workspace, metrics, bc_weights = dsrl_run
    assert isinstance(workspace.trainer, SACTrainer) and workspace.epoch == 1
    assert metrics["sac/gradient_steps"] == metrics["perf/chunk_steps"] and np.isfinite(metrics["sac/critic_loss"])
    changed = [k for k, v in workspace.model.state_dict().items() if k not in bc_weights or not torch.equal(v, bc_weights[k])]
    assert any(k.startswith("noise_prior.") for k in changed)
    assert not any(k.startswith("velocity_net.") for k in changed)
    path = os.path.join(workspace.checkpoint_dir, "latest.ckpt")
    policy, _, _ = load_policy(path)
    assert policy.noise_prior.mean_bound == 1.5 and policy.noise_prior.mean_shape == (policy.horizon, policy.action_dim)
    assert read_metrics(workspace.output_dir)[-1]["step"] == workspace.env_steps


def test_dsrl_resume_restores_the_trainer(dsrl_run, tiny_checkpoint, tmp_path):
    first, _, _ = dsrl_run
    cfg = compose_cfg("train_maniflow_pointcloud_rl", TINY_RL + [
        f"pretrained_policy_path={tiny_checkpoint}", "rl_policy=dsrl", "rl_training.sac_trainer.critic_hidden=16"])
    resumed = RLWorkspace(cfg, output_dir=first.output_dir)
    resumed.load_checkpoint()
    assert resumed.trainer.log_alpha.item() == pytest.approx(first.trainer.log_alpha.item())
    for (name, a), b in zip(first.trainer.target_critic.state_dict().items(),
                            resumed.trainer.target_critic.state_dict().values()):
        assert torch.equal(a, b), name
