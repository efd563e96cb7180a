"""Tests for GAE, the PPO update and reward scaling, with tiny fake actor/critic modules.

The fake actor is a Gaussian over the last chain element, so its log-probs are known in closed
form; expected numbers are computed by hand in comments, not by the code under test.
"""
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from omegaconf import OmegaConf

from equi_diffpo.rl_training.ppo_trainer import (PPOBatch, PPOConfig, PPOTrainer, all_reduce_gradients,
                                                 compute_gae)
from equi_diffpo.rl_training.reward_scaling import RunningMeanStd, RunningRewardScaler

torch.set_num_threads(1)
H, DA, TO, N = 2, 2, 2, 4  # chains are (B, K+1=2, H, Da)


@dataclass
class FakeLogProb:
    log_prob: torch.Tensor
    entropy: torch.Tensor


class GaussianPolicy(nn.Module):
    """Actions = chains[:, -1] (H, Da) ~ N(mu, std^2) i.i.d.; obs are ignored (a bandit)."""

    def __init__(self, std: float = 0.3):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(DA))
        self.std = std

    def dist(self) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.mu, self.std)

    def sample_chains(self, batch_size: int) -> torch.Tensor:
        with torch.no_grad():
            actions = self.dist().sample((batch_size, H))  # (B, H, Da)
        return torch.stack([torch.randn_like(actions), actions], dim=1)  # (B, K+1, H, Da)

    def get_log_prob(self, obs, chains) -> FakeLogProb:
        d = self.dist()
        log_prob = d.log_prob(chains[:, -1]).sum(dim=(1, 2))
        return FakeLogProb(log_prob=log_prob, entropy=d.entropy().sum().expand(chains.shape[0]) * H)


class NaNPolicy(GaussianPolicy):
    def get_log_prob(self, obs, chains) -> FakeLogProb:
        out = super().get_log_prob(obs, chains)
        return FakeLogProb(log_prob=out.log_prob * math.nan, entropy=out.entropy)


class LinearCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(9, 1)

    def forward(self, obs):
        return self.head(obs["agent_pos"][:, -1]).squeeze(-1)


def make_obs(batch_size: int):
    return {"point_cloud": torch.randn(batch_size, TO, N, 3), "agent_pos": torch.randn(batch_size, TO, 9)}


def make_batch(policy, critic, batch_size=32, target=(0.5, -0.5), rewards=None) -> PPOBatch:
    """One-step bandit episodes: reward = -||a - target||^2 summed over the chunk, all terminal."""
    obs = make_obs(batch_size)
    chains = policy.sample_chains(batch_size)
    with torch.no_grad():
        log_probs = policy.get_log_prob(obs, chains).log_prob
        values = critic(obs)
    if rewards is None:
        rewards = -((chains[:, -1] - torch.tensor(target)) ** 2).sum(dim=(1, 2))
    ones = torch.ones(batch_size)
    gae = compute_gae(rewards, values, torch.zeros(batch_size), ones, ones, gamma=0.99, gae_lambda=0.95)
    return PPOBatch(obs=obs, chains=chains, log_probs=log_probs, values=values,
                    advantages=gae.advantages, returns=gae.returns)


def params_copy(module):
    return [p.detach().clone() for p in module.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- GAE
def test_gae_hand_computed_terminated_and_truncated():
    # Episode A: steps 0-1, terminated after step 1 (success). Episode B: steps 2-3, truncated.
    rewards = torch.tensor([1.0, 2.0, 0.0, 1.0])
    values = torch.tensor([0.5, 1.0, 0.2, 0.4])
    next_values = torch.tensor([1.0, 7.0, 0.4, 3.0])  # 7.0 must be ignored (terminal), 3.0 bootstrapped
    terminated = torch.tensor([0.0, 1.0, 0.0, 0.0])
    episode_end = torch.tensor([0.0, 1.0, 0.0, 1.0])
    # gamma=0.9, lambda=0.8, gamma*lambda=0.72
    # delta0 = 1 + 0.9*1.0 - 0.5 = 1.4      delta1 = 2 + 0 - 1.0 = 1.0
    # delta2 = 0 + 0.9*0.4 - 0.2 = 0.16     delta3 = 1 + 0.9*3.0 - 0.4 = 3.3
    # adv3 = 3.3; adv2 = 0.16 + 0.72*3.3 = 2.536; adv1 = 1.0 (episode end: B does not leak into A)
    # adv0 = 1.4 + 0.72*1.0 = 2.12; returns = adv + values = [2.62, 2.0, 2.736, 3.7]
    out = compute_gae(rewards, values, next_values, terminated, episode_end, gamma=0.9, gae_lambda=0.8)
    torch.testing.assert_close(out.advantages, torch.tensor([2.12, 1.0, 2.536, 3.3]))
    torch.testing.assert_close(out.returns, torch.tensor([2.62, 2.0, 2.736, 3.7]))


def test_gae_lambda_one_gives_discounted_return_plus_bootstrap():
    # lambda=1: returns are Monte-Carlo returns, whatever the values are.
    rewards = torch.tensor([1.0, 0.0, 2.0])
    values = torch.tensor([5.0, -3.0, 0.7])
    next_values = torch.tensor([-3.0, 0.7, 10.0])
    zero = torch.zeros(3)
    truncated_end = torch.tensor([0.0, 0.0, 1.0])
    out = compute_gae(rewards, values, next_values, zero, truncated_end, gamma=0.5, gae_lambda=1.0)
    # G2 = 2 + 0.5*10 = 7; G1 = 0 + 0.5*7 = 3.5; G0 = 1 + 0.5*3.5 = 2.75
    torch.testing.assert_close(out.returns, torch.tensor([2.75, 3.5, 7.0]))
    out = compute_gae(rewards, values, next_values, truncated_end, truncated_end, gamma=0.5, gae_lambda=1.0)
    # terminated: G2 = 2; G1 = 1; G0 = 1.5
    torch.testing.assert_close(out.returns, torch.tensor([1.5, 1.0, 2.0]))


# ----------------------------------------------------------------------------- config
def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="clip_ration") as err:
        PPOConfig.from_dict({"clip_ration": 0.1})
    assert "clip_ratio" in str(err.value)  # the valid keys are listed
    with pytest.raises(ValueError, match="entropy_coeff"):
        PPOTrainer(GaussianPolicy(), LinearCritic(), {"entropy_coeff": 0.01})


def test_config_from_hydra_dictconfig():
    cfg = PPOConfig.from_dict(OmegaConf.create({"_target_": "x", "clip_ratio": 0.1, "target_kl": None}))
    assert cfg.clip_ratio == 0.1 and cfg.target_kl is None and cfg.ppo_epochs == 4
    with pytest.raises(ValueError, match="total_epochs"):
        PPOConfig(lr_schedule="cosine")


# ----------------------------------------------------------------------------- PPO update
def test_first_minibatch_ratio_is_one():
    torch.manual_seed(0)
    policy, critic = GaussianPolicy(), LinearCritic()
    batch = make_batch(policy, critic, batch_size=16)
    trainer = PPOTrainer(policy, critic, PPOConfig(ppo_epochs=1, mini_batch_size=16, policy_lr=1e-2))
    stats = trainer.update(batch, epoch=0)
    assert stats.ppo_minibatches == 1
    assert stats.first_minibatch_ratio_max_dev == 0.0
    assert stats.approx_kl == 0.0 and stats.clipfrac == 0.0
    # With more minibatches the first one still has ratio 1, later ones moved.
    stats = PPOTrainer(policy, critic, PPOConfig(ppo_epochs=2, mini_batch_size=4, policy_lr=1e-2)).update(
        make_batch(policy, critic, batch_size=16), epoch=0)
    assert stats.first_minibatch_ratio_max_dev == 0.0 and stats.approx_kl > 0.0
    assert stats.ppo_minibatches == 8


def test_hand_computed_losses_and_ratio_direction():
    torch.manual_seed(0)
    policy, critic = GaussianPolicy(), LinearCritic()
    nn.init.zeros_(critic.head.weight), nn.init.zeros_(critic.head.bias)  # new values are all 0
    batch = make_batch(policy, critic, batch_size=2)
    batch.values = torch.tensor([0.5, -0.5])
    batch.returns = torch.tensor([1.0, 1.0])
    batch.advantages = torch.tensor([2.0, 4.0])
    batch.log_probs = batch.log_probs + 1.0  # ratio = exp(-1) ~ 0.368: both samples clipped
    cfg = dict(ppo_epochs=1, mini_batch_size=2, norm_advantages=False, clip_ratio=0.2)
    stats = PPOTrainer(policy, critic, PPOConfig(clip_value_loss=True, **cfg)).update(batch, epoch=0)
    # value clip 0.2: clipped V = old + clamp(0 - old, -0.2, 0.2) = [0.3, -0.3]; sq errors
    # unclipped [1, 1], clipped [0.49, 1.69] -> max [1, 1.69] -> 0.5 * mean = 0.6725
    assert stats.value_loss == pytest.approx(0.6725)
    assert stats.clipfrac == 1.0
    assert stats.first_minibatch_ratio_max_dev == pytest.approx(1 - math.exp(-1), rel=1e-5)
    # pg = mean(max(-A*r, -A*clip(r, 0.8, 1.2))) = mean(-A*0.368) = -3*0.3679 = -1.1036
    assert stats.policy_loss == pytest.approx(-3 * math.exp(-1), rel=1e-5)
    # approx_kl = (r - 1) - log r = e^-1 - 1 + 1 = 0.3679; old_approx_kl = -log r = 1
    assert stats.approx_kl == pytest.approx(math.exp(-1), rel=1e-5)
    assert stats.old_approx_kl == pytest.approx(1.0, rel=1e-5)

    nn.init.zeros_(critic.head.weight), nn.init.zeros_(critic.head.bias)
    stats = PPOTrainer(policy, critic, PPOConfig(clip_value_loss=False, **cfg)).update(batch, epoch=0)
    assert stats.value_loss == pytest.approx(0.5)  # 0.5 * mean([1, 1])
    d = stats.as_dict()
    for key in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
                "losses/clipfrac", "losses/explained_variance", "losses/policy_grad_norm",
                "charts/policy_lr", "charts/critic_lr", "charts/advantages_mean", "perf/ppo_minibatches",
                "losses/early_stopped"):
        assert key in d
    assert d["charts/advantages_mean"] == pytest.approx(3.0)


def test_negative_advantage_objectives():
    """A < 0 and ratio 0.5 (pushed below 1 - 0.2): clipping gives no policy gradient, SPO pulls the ratio back
    up, 'zero' ignores the sample; for A > 0 all three are PPO's clipped surrogate (the same loss)."""
    cfg = dict(ppo_epochs=1, mini_batch_size=4, norm_advantages=False, clip_ratio=0.2, critic_lr=0.0)
    losses = {}
    for objective in ("clip", "spo", "zero"):
        for sign in (-1.0, 1.0):
            torch.manual_seed(0)
            policy, critic = GaussianPolicy(), LinearCritic()
            batch = make_batch(policy, critic, batch_size=4)
            batch.advantages = torch.full((4,), sign)
            batch.log_probs = batch.log_probs - math.log(0.5)   # every ratio = 0.5
            trainer = PPOTrainer(policy, critic, PPOConfig(negative_advantages=objective, **cfg))
            stats = trainer.update(batch, epoch=0)
            losses[objective, sign] = (stats.policy_loss, stats.policy_grad_norm)
    assert losses["clip", -1.0] == pytest.approx((0.8, 0.0), abs=1e-6)   # -A * clip(r) = 0.8, no gradient
    # SPO at r = 0.5, A = -1: -(A r - |A|/(2 eps) (r-1)^2) = 0.5 + 0.25/0.4 = 1.125, with a gradient
    assert losses["spo", -1.0][0] == pytest.approx(1.125, rel=1e-5) and losses["spo", -1.0][1] > 0
    assert losses["zero", -1.0] == (0.0, 0.0)
    assert losses["spo", 1.0] == pytest.approx(losses["clip", 1.0])
    assert losses["zero", 1.0] == pytest.approx(losses["clip", 1.0])
    with pytest.raises(ValueError, match="negative_advantages='drop'"):
        PPOConfig(negative_advantages="drop")


def test_critic_warmup_updates_only_the_critic():
    torch.manual_seed(0)
    policy, critic = GaussianPolicy(), LinearCritic()
    trainer = PPOTrainer(policy, critic, PPOConfig(critic_warmup_epochs=1, mini_batch_size=8, policy_lr=1e-2))
    batch = make_batch(policy, critic)
    p0, c0 = params_copy(policy), params_copy(critic)
    stats = trainer.update(batch, epoch=0)
    assert same(p0, params_copy(policy)) and not same(c0, params_copy(critic))
    assert stats.critic_warmup and "losses/policy_loss" not in stats.as_dict()
    trainer.update(batch, epoch=1)
    assert not same(p0, params_copy(policy))


def test_target_kl_early_stop():
    torch.manual_seed(0)
    policy, critic = GaussianPolicy(), LinearCritic()
    trainer = PPOTrainer(policy, critic, PPOConfig(target_kl=1e-12, mini_batch_size=8, policy_lr=1e-2))
    stats = trainer.update(make_batch(policy, critic), epoch=0)
    # 4 epochs x 4 minibatches without the stop; the 2nd minibatch already exceeds the target.
    assert stats.early_stopped and stats.ppo_minibatches == 1
    # The stop freezes the actor only: the critic still takes a step on every minibatch.
    assert stats.critic_steps == 16
    p1 = params_copy(policy)
    stats = trainer.update(make_batch(policy, critic), epoch=1)
    assert stats.ppo_minibatches == 1 and not same(p1, params_copy(policy))


def test_nan_reward_raises_before_any_step():
    torch.manual_seed(0)
    policy, critic = GaussianPolicy(), LinearCritic()
    rewards = torch.zeros(8)
    rewards[3] = math.nan
    batch = make_batch(policy, critic, batch_size=8, rewards=rewards)
    p0, c0 = params_copy(policy), params_copy(critic)
    with pytest.raises(FloatingPointError, match="RL epoch 5"):
        PPOTrainer(policy, critic, PPOConfig(mini_batch_size=4)).update(batch, epoch=5)
    assert same(p0, params_copy(policy)) and same(c0, params_copy(critic))


def test_nan_log_prob_names_the_loss():
    torch.manual_seed(0)
    policy, critic = NaNPolicy(), LinearCritic()
    batch = make_batch(GaussianPolicy(), critic, batch_size=8)
    p0 = params_copy(policy)
    with pytest.raises(FloatingPointError, match="policy_loss at RL epoch 2"):
        PPOTrainer(policy, critic, PPOConfig(mini_batch_size=4)).update(batch, epoch=2)
    assert same(p0, params_copy(policy))


def test_bandit_mean_moves_to_rewarded_action():
    torch.manual_seed(0)
    target = torch.tensor([0.5, -0.5])
    policy, critic = GaussianPolicy(std=0.3), LinearCritic()
    trainer = PPOTrainer(policy, critic, PPOConfig(mini_batch_size=16, policy_lr=0.03, critic_lr=1e-2))
    start = (policy.mu - target).norm().item()
    for epoch in range(6):
        trainer.update(make_batch(policy, critic, batch_size=64, target=tuple(target.tolist())), epoch)
        trainer.scheduler_step()
    assert (policy.mu - target).norm().item() < 0.3 * start


def test_lr_schedule_and_resume():
    policy, critic = GaussianPolicy(), LinearCritic()
    cfg = PPOConfig(lr_schedule="cosine", total_epochs=4, policy_lr=1.0, critic_lr=2.0)
    trainer = PPOTrainer(policy, critic, cfg)
    trainer.scheduler_step(), trainer.scheduler_step()
    # cosine after 2 of 4 epochs: 0.5 * (1 + cos(pi/2)) = 0.5
    assert trainer.policy_optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    assert trainer.critic_optimizer.param_groups[0]["lr"] == pytest.approx(1.0)
    resumed = PPOTrainer(policy, critic, cfg)
    resumed.load_state_dict(trainer.state_dict())
    resumed.scheduler_step()
    # cosine after 3 of 4: 0.5 * (1 + cos(3pi/4)) = 0.14645
    assert resumed.policy_optimizer.param_groups[0]["lr"] == pytest.approx(0.146447, rel=1e-4)
    linear = PPOTrainer(policy, critic, PPOConfig(lr_schedule="linear", total_epochs=4, policy_lr=1.0))
    linear.scheduler_step()
    assert linear.policy_optimizer.param_groups[0]["lr"] == pytest.approx(0.75)


# ----------------------------------------------------------------------------- DDP (gloo, 2 processes)
def _ddp_worker(rank: int, init_file: str, results):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    # Gradient averaging: grads rank+1 on each rank -> 1.5 everywhere.
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), float(rank + 1))
    all_reduce_gradients([p])
    # A full update with different local batch sizes (10 vs 30 -> 2 vs 4 minibatches) must stay
    # in lock-step and, from identical weights, end with identical weights on both ranks.
    torch.manual_seed(0)
    policy, critic = GaussianPolicy(), LinearCritic()
    torch.manual_seed(1 + rank)
    batch = make_batch(policy, critic, batch_size=10 if rank == 0 else 30)
    stats = PPOTrainer(policy, critic, PPOConfig(mini_batch_size=8, policy_lr=1e-2)).update(batch, epoch=0)
    results[rank] = (p.grad.tolist(), [x.tolist() for x in params_copy(policy) + params_copy(critic)],
                     stats.ppo_minibatches)
    dist.destroy_process_group()


def test_distributed_gradients_are_averaged(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), results), nprocs=2)
    assert results[0][0] == [1.5] * 3 and results[1][0] == [1.5] * 3
    assert results[0][1] == results[1][1]
    assert results[0][2] == results[1][2] == 4 * 4


# ----------------------------------------------------------------------------- reward scaling
def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=100)
    rms = RunningMeanStd(epsilon=0.0 + 1e-12)
    for chunk in np.split(data, [10, 55]):
        rms.update(chunk)
    assert rms.mean == pytest.approx(data.mean()) and rms.var == pytest.approx(data.var())


def test_reward_scaler_divides_by_discounted_return_std():
    scaler = RunningRewardScaler(gamma=0.5, epsilon=0.0)
    scaler.return_rms = RunningMeanStd(epsilon=1e-12)  # no prior, so the numbers below are exact
    rewards = np.array([1.0, 1.0, 2.0, 0.0])
    ends = np.array([False, True, False, True])
    # returns: episode 1: 1, 0.5*1+1 = 1.5; episode 2: 2, 0.5*2+0 = 1 -> [1, 1.5, 2, 1]
    # mean 1.375, var = (0.140625 + 0.015625 + 0.390625 + 0.140625)/4 = 0.171875
    out = scaler(rewards, ends)
    np.testing.assert_allclose(out, rewards / math.sqrt(0.171875), rtol=1e-6)
    restored = RunningRewardScaler(gamma=0.9)
    restored.load_state_dict(scaler.state_dict())
    assert restored.gamma == 0.5 and restored.return_rms.var == pytest.approx(0.171875)


def test_head_parameters_get_head_lr():
    class PolicyWithHead(GaussianPolicy):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(2, 2)

        def head_parameters(self):
            return list(self.head.parameters())

    policy, critic = PolicyWithHead(), LinearCritic()
    trainer = PPOTrainer(policy, critic, PPOConfig(policy_lr=1e-6, head_lr=1e-3))
    groups = trainer.policy_optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-6, 1e-3]
    assert [p for p in groups[1]["params"]] == list(policy.head.parameters())
    assert PPOTrainer(policy, critic, PPOConfig(policy_lr=1e-6)).policy_optimizer.param_groups[1]["lr"] == 1e-6
