"""FPO policy (flow-matching-loss ratio): rollouts are the base sampler's own actions, the surrogate is
the hand-computed flow-matching loss on a tau grid (scored by the trainer before its first step, so the
first ratio is 1), a gradient step on it carries the sampler towards a rewarded chunk, and a one-epoch RL
run fine-tunes the velocity net only."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import TINY_EXEC, TINY_RL, TINY_POLICY_KWARGS, compose_cfg, tiny_base_policy, tiny_obs
from equi_diffpo.common.checkpoint_io import load_policy
from equi_diffpo.policy.fpo_rl_policy import FPORLPolicy
from equi_diffpo.policy.rl_policy_factory import build_rl_policy, rl_policy_config

torch.set_num_threads(1)

TINY = TINY_POLICY_KWARGS
B = 5
EXEC = TINY_EXEC


@pytest.fixture
def obs():
    return tiny_obs(B)


def make_fpo(mc: int = 4) -> FPORLPolicy:
    return build_rl_policy(tiny_base_policy().eval(), rl_policy_config("fpo", fpo_mc_samples=mc))


def generators(seed: int = 0):
    return [torch.Generator().manual_seed(seed + i) for i in range(B)]


def test_rollout_action_is_the_base_sampler_and_draws_are_reproducible(obs):
    rl = make_fpo(mc=3)
    assert isinstance(rl, FPORLPolicy) and rl.n_mc == 3
    assert rl.base.get_policy_config()["flow_sampling"] is True     # samples with the branch FPO trains
    noise = torch.randn(B, TINY["horizon"], 7)
    sample = rl.sample_actions(obs, noise=noise)
    torch.testing.assert_close(sample.action, rl.base.predict_action(obs, noise)["action"], rtol=0, atol=0)
    assert sample.chains.shape == (B, 1 + rl.n_mc, TINY["horizon"], 7)
    assert sample.chains[:, 0].abs().max() <= 1.0          # the clamped chunk the env received
    a, b = (rl.sample_actions(obs, generators=generators()) for _ in range(2))
    assert torch.equal(a.chains, b.chains) and torch.equal(a.log_prob, b.log_prob)


def test_surrogate_is_the_flow_matching_loss_on_a_tau_grid(obs):
    rl = make_fpo()
    sample = rl.sample_actions(obs, generators=generators())
    cond = rl.encode_obs(obs)
    action, eps = sample.chains[:, 0], sample.chains[:, 1:]
    hand = torch.zeros(B)
    for i in range(rl.n_mc):
        tau = (i + 0.5) / rl.n_mc
        x_tau = (1 - tau) * eps[:, i] + tau * action
        with torch.no_grad():
            v = rl.base.velocity_net(x_tau, tau, 0.0, cond)
        hand += (v - (action - eps[:, i]))[:, EXEC].square().mean(dim=(1, 2)) / rl.n_mc
    assert rl.defers_log_prob and torch.equal(sample.log_prob, torch.zeros(B))   # scored by the trainer
    for given in (None, cond):
        result = rl.get_log_prob(obs, sample.chains, cond=given)
        torch.testing.assert_close(result.log_prob, -hand, rtol=1e-5, atol=1e-6)
        assert torch.equal(result.entropy, torch.zeros(B))


def test_raising_the_surrogate_moves_the_sampler_towards_the_action(obs):
    """Positive advantage for a target chunk: a few steps on -L bring the sampler's chunk closer to it."""
    rl = make_fpo(mc=8)
    target = torch.full((B, TINY["horizon"], 7), 0.5)
    noise = torch.randn(B, TINY["horizon"], 7, generator=torch.Generator().manual_seed(1))
    before = (rl.base.predict_action(obs, noise)["action"] - rl.base.normalizer["action"].unnormalize(target)[:, EXEC]
              ).abs().mean()
    optimizer = torch.optim.Adam(rl.parameters(), lr=3e-3)
    for step in range(100):
        eps = torch.randn(B, rl.n_mc, TINY["horizon"], 7, generator=torch.Generator().manual_seed(100 + step))
        loss = -rl.get_log_prob(obs, torch.cat([target.unsqueeze(1), eps], dim=1)).log_prob.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = (rl.base.predict_action(obs, noise)["action"] - rl.base.normalizer["action"].unnormalize(target)[:, EXEC]
             ).abs().mean()
    assert after < 0.7 * before


def test_only_the_velocity_net_trains_and_bad_starts_are_refused(obs):
    rl = make_fpo()
    rl.base.obs_encoder.requires_grad_(False)
    trainable = {id(p) for p in rl.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in rl.base.velocity_net.parameters()} and rl.obs_encoder_frozen
    assert rl.head_parameters() == []
    with pytest.raises(ValueError, match="fpo_mc_samples must be >= 1"):
        build_rl_policy(tiny_base_policy(), rl_policy_config("fpo", fpo_mc_samples=0))
    base = tiny_base_policy()
    base.enable_noise_prior()
    with pytest.raises(ValueError, match="rl_policy=fpo fine-tunes a plain flow"):
        build_rl_policy(base, rl_policy_config("fpo"))
    with pytest.raises(ValueError, match=r"chains are \(B, 1 \+ 4"):
        rl.get_log_prob(obs, torch.zeros(B, 3, TINY["horizon"], 7))


def test_fpo_rl_epoch_trains_the_velocity_net_and_checkpoint_loads(tiny_checkpoint, tmp_path):
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    cfg = compose_cfg("train_maniflow_pointcloud_rl", TINY_RL + [
        f"pretrained_policy_path={tiny_checkpoint}", "rl_policy=fpo", "rl_training.ppo_trainer.policy_lr=1e-3"])
    workspace = RLWorkspace(cfg, output_dir=str(tmp_path))
    bc_weights = {k: v.clone() for k, v in workspace.model.state_dict().items()}
    metrics = workspace.run()
    assert metrics["losses/first_minibatch_ratio_max_dev"] < 1e-4
    changed = {k.split(".")[0] for k, v in workspace.model.state_dict().items() if not torch.equal(v, bc_weights[k])}
    assert changed == {"velocity_net"}
    policy, cfg, _ = load_policy(os.path.join(workspace.checkpoint_dir, "latest.ckpt"))
    for k, v in policy.state_dict().items():
        torch.testing.assert_close(v, workspace.model.state_dict()[k], rtol=0, atol=0)
    assert cfg.policy.flow_sampling is True   # evaluation samples with the branch RL trained
    obs = {"point_cloud": torch.rand(2, 2, 64, 3) + torch.tensor([0.0, 0.0, 0.8]), "agent_pos": torch.rand(2, 2, 9)}
    noise = torch.randn(2, policy.horizon, policy.action_dim)
    torch.testing.assert_close(policy.predict_action(obs, noise)["action"],
                               workspace.model.predict_action(obs, noise)["action"], rtol=0, atol=0)
