"""The learned noise prior's std stays trainable: ``log_std`` lives in ``[log(std_min), 0]`` and the forward
pass clamps it there, which passes no gradient to an entry outside the box. Before the trainer projected the
parameters after each step, one step that pushed an entry above 0 froze it at std 1 for the rest of the run
(145 of 160 entries of the shipped lift_d0_ppo.ckpt)."""
from __future__ import annotations

import torch

from equi_diffpo.model.noise_prior import ConditionalNoisePrior
from equi_diffpo.rl_training.ppo_trainer import PPOConfig, PPOTrainer
from test_ppo_feature_cache import make_batch, make_policy_and_critic


def std_gradient(prior: ConditionalNoisePrior) -> torch.Tensor:
    """d(sum of the prior's std)/d(log_std) for one observation."""
    prior.zero_grad()
    prior(torch.zeros(1, prior.mean_net[0].in_features))[1].sum().backward()
    return prior.log_std.grad


def test_projection_gives_an_entry_above_the_box_its_gradient_back():
    prior = ConditionalNoisePrior(cond_dim=4, horizon=3, action_dim=2, hidden=8)
    with torch.no_grad():
        prior.log_std[0, 0] = 0.05           # where one optimizer step can leave it
    assert std_gradient(prior)[0, 0] == 0    # the clamp's dead zone
    prior.project_()
    assert prior.log_std[0, 0] == 0 and std_gradient(prior)[0, 0] != 0
    with torch.no_grad():
        prior.log_std[1, 1] = -10.0
    prior.project_()
    assert torch.isclose(prior.log_std[1, 1], torch.tensor(prior.log_std_min))


def test_ppo_update_keeps_the_prior_and_chunk_std_inside_their_box():
    policy, critic = make_policy_and_critic()
    batch = make_batch(policy, critic)
    prior = policy.base.noise_prior
    with torch.no_grad():   # a checkpoint whose entries a step pushed above the box (the shipped PPO checkpoint)
        prior.log_std.fill_(0.3)
        policy.chunk_log_std = torch.nn.Parameter(torch.full((policy.base.action_dim,), 0.3))
    PPOTrainer(policy, critic, PPOConfig(ppo_epochs=1, mini_batch_size=16, head_lr=1e-3)).update(batch, epoch=0)
    assert prior.log_std.max() <= 0 and policy.chunk_log_std.max() <= 0
    assert prior.log_std.min() >= prior.log_std_min


def test_diagnostics_report_the_prior_and_chunk_std():
    policy, _ = make_policy_and_critic()
    with torch.no_grad():
        policy.base.noise_prior.log_std.fill_(-1.0)
        policy.base.noise_prior.log_std[0, 0] = -2.0
    stats = policy.diagnostics()
    assert abs(stats["policy/noise_prior_std_min"] - torch.tensor(-2.0).exp().item()) < 1e-6
    assert 0.13 < stats["policy/noise_prior_std_mean"] < torch.tensor(-1.0).exp().item()
    assert abs(stats["policy/chunk_std_mean"] - 0.5) < 1e-6


def test_std_lr_gives_the_stds_their_own_group_and_none_keeps_them_with_the_heads():
    policy, critic = make_policy_and_critic()
    stds = {id(p) for p in policy.std_parameters()}
    assert stds == {id(policy.base.noise_prior.log_std), id(policy.chunk_log_std)}
    groups = PPOTrainer(policy, critic, PPOConfig(head_lr=3e-4, std_lr=3e-3)).policy_optimizer.param_groups
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in groups}
    assert by_lr[3e-3] == stds and not by_lr[3e-4] & stds and by_lr[3e-4]
    groups = PPOTrainer(policy, critic, PPOConfig(head_lr=3e-4)).policy_optimizer.param_groups
    assert stds <= {id(p) for g in groups if g["lr"] == 3e-4 for p in g["params"]}
