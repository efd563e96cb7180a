"""Residual RL policy (ResiP-style): starts exactly as BC, exact log-probs (hand-computed, ratio 1 with and
without precomputed features), only the residual trains, the factory's key checks, and a one-epoch RL run
whose checkpoint evaluation loads with the residual in ``predict_action``."""
from __future__ import annotations

import math
import os

import pytest
import torch
from torch.distributions import Normal

from conftest import TINY_EXEC, TINY_RL, compose_cfg, TINY_POLICY_KWARGS, tiny_base_policy, tiny_obs
from equi_diffpo.common.checkpoint_io import load_policy
from equi_diffpo.policy import ManiFlowPointcloudPolicy
from equi_diffpo.policy.residual_rl_policy import ResidualRLPolicy
from equi_diffpo.policy.rl_policy_factory import build_rl_policy, rl_policy_config, rl_policy_names

torch.set_num_threads(1)

TINY = TINY_POLICY_KWARGS
B = 5
EXEC = TINY_EXEC
SCALE = 0.1


def make_base() -> ManiFlowPointcloudPolicy:
    return tiny_base_policy().eval()


@pytest.fixture
def obs():
    return tiny_obs(B)


def trained_residual(base: ManiFlowPointcloudPolicy) -> ResidualRLPolicy:
    """A residual policy whose head looks trained: random mean output layer and unequal stds."""
    rl = ResidualRLPolicy(base, residual_hidden=32, residual_scale=SCALE, residual_std_init=0.4)
    with torch.no_grad():
        rl.head.mean_net[-1].weight.normal_(0.0, 0.5)
        rl.head.log_std.copy_(torch.linspace(math.log(0.2), 0.0, TINY["action_dim"]))
    return rl


def test_zero_init_is_exactly_bc(obs):
    base = make_base()
    noise = torch.randn(B, TINY["horizon"], 7)
    bc = base.predict_action(obs, noise)
    rl = ResidualRLPolicy(base, residual_hidden=32, residual_scale=SCALE)
    assert base.residual_head is rl.head and base.get_policy_config()["residual"] is True
    torch.testing.assert_close(rl.predict_action(obs, noise)["action"], bc["action"], rtol=0, atol=0)
    det = rl.sample_actions(obs, deterministic=True, noise=noise)
    torch.testing.assert_close(det.action, bc["action"], rtol=0, atol=0)
    assert det.chains.shape == (B, 2, TINY["horizon"], 7) and torch.equal(det.chains[:, 0], det.chains[:, 1])
    # Stochastic: only the executed slice moves, by scale * std * eps.
    eps = torch.randn(B, TINY["n_action_steps"], 7)
    sample = rl.sample_actions(obs, noise=noise, exploration_noise=eps)
    assert torch.equal(sample.chains[:, 0], det.chains[:, 0])
    outside = torch.ones(TINY["horizon"], dtype=torch.bool)
    outside[EXEC] = False
    assert torch.equal(sample.chains[:, 1, outside], sample.chains[:, 0, outside])
    torch.testing.assert_close(sample.chains[:, 1, EXEC] - sample.chains[:, 0, EXEC], SCALE * 0.5 * eps)


def test_log_prob_is_the_residual_gaussian(obs):
    rl = trained_residual(make_base())
    eps = torch.randn(B, TINY["n_action_steps"], 7)
    sample = rl.sample_actions(obs, exploration_noise=eps)
    std = torch.linspace(math.log(0.2), 0.0, 7).exp()
    hand = (-0.5 * eps.square() - std.log() - 0.5 * math.log(2 * math.pi)).sum(dim=(1, 2))
    torch.testing.assert_close(sample.log_prob, hand, rtol=1e-5, atol=1e-4)
    # Same density from torch.distributions, with the head's mean, at the executed residual.
    with torch.no_grad():
        cond = rl.encode_obs(obs)
        mean, _ = rl.head(cond, sample.chains[:, 0])
    residual = (sample.chains[:, 1, EXEC] - sample.chains[:, 0, EXEC]) / SCALE
    torch.testing.assert_close(residual, mean + std * eps, rtol=1e-4, atol=1e-5)
    ref = Normal(mean, std.expand_as(mean))
    torch.testing.assert_close(sample.log_prob, ref.log_prob(residual).sum(dim=(1, 2)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rl.get_log_prob(obs, sample.chains).entropy, ref.entropy().sum(dim=(1, 2)))


def test_sampled_log_prob_equals_get_log_prob(obs):
    rl = trained_residual(make_base())
    sample = rl.sample_actions(obs)
    for cond in (None, rl.encode_obs(obs)):
        result = rl.get_log_prob(obs, sample.chains, cond=cond)
        torch.testing.assert_close(result.log_prob, sample.log_prob, rtol=0, atol=1e-6)
    # Deterministic mode = the base's predict_action with the residual mean, bit for bit.
    noise = torch.randn(B, TINY["horizon"], 7)
    torch.testing.assert_close(rl.sample_actions(obs, deterministic=True, noise=noise).action,
                               rl.base.predict_action(obs, noise)["action"], rtol=0, atol=0)


def test_only_the_residual_trains(obs):
    rl = trained_residual(make_base())
    trainable = {id(p) for p in rl.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in rl.head_parameters()} and rl.obs_encoder_frozen
    sample = rl.sample_actions(obs)
    rl.get_log_prob(obs, sample.chains).log_prob.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (rl.head.log_std, rl.head.mean_net[-1].weight))
    rl.base.obs_encoder.requires_grad_(True)
    with pytest.raises(ValueError, match="finetune_obs_encoder=false"):
        rl.sample_actions(obs)


def test_generators_make_samples_reproducible(obs):
    rl = trained_residual(make_base())
    draws = [rl.sample_actions(obs, generators=[torch.Generator().manual_seed(i) for i in range(B)])
             for _ in range(2)]
    assert torch.equal(draws[0].chains, draws[1].chains) and torch.equal(draws[0].log_prob, draws[1].log_prob)


def test_factory_builds_each_yaml_method_and_names_bad_keys():
    rl = build_rl_policy(make_base(), rl_policy_config("residual", residual_hidden=32, residual_scale=0.2))
    assert isinstance(rl, ResidualRLPolicy) and rl.head.scale == 0.2 and rl.base.noise_prior is None
    assert rl_policy_names() == ["chain", "fpo", "latent", "qselect", "residual", "select"]
    for name in rl_policy_names():   # every shipped yaml builds its class with its own keys only
        assert type(build_rl_policy(make_base(), rl_policy_config(name))).__name__ in (
            "NoisyChainPolicy", "FPORLPolicy", "LatentNoisePolicy", "ResidualRLPolicy", "ChunkSelectionPolicy",
            "ChunkQSelectionPolicy")
    with pytest.raises(ValueError, match=r"unknown rl_policy key\(s\) \['sigma_min'\] for ResidualRLPolicy"):
        build_rl_policy(make_base(), rl_policy_config("residual", sigma_min=0.1))   # another method's key
    with pytest.raises(ValueError, match="valid: \\['chain', 'fpo', 'latent', 'qselect', 'residual', 'select'\\]"):
        rl_policy_config("resid")
    with pytest.raises(ValueError, match="rl_policy=residual"):   # a residual checkpoint under the latent method
        build_rl_policy(rl.base, rl_policy_config("latent"))


@pytest.fixture(scope="module")
def residual_run(tiny_checkpoint, tmp_path_factory):
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    output_dir = str(tmp_path_factory.mktemp("residual_run"))
    cfg = compose_cfg("train_maniflow_pointcloud_rl", TINY_RL + [
        f"pretrained_policy_path={tiny_checkpoint}", "rl_policy=residual", "rl_policy.residual_hidden=16"])
    workspace = RLWorkspace(cfg, output_dir=output_dir)
    bc_weights = {k: v.clone() for k, v in workspace.model.state_dict().items()}
    metrics = workspace.run()
    return workspace, metrics, bc_weights


def test_residual_rl_epoch_and_checkpoint(residual_run):
    workspace, metrics, bc_weights = residual_run
    assert isinstance(workspace.rl_policy, ResidualRLPolicy)
    assert metrics["losses/first_minibatch_ratio_max_dev"] < 1e-4
    changed = {k.split(".")[0] for k, v in workspace.model.state_dict().items()
               if k not in bc_weights or not torch.equal(v, bc_weights[k])}
    assert changed == {"residual_head"}

    policy, cfg, _ = load_policy(os.path.join(workspace.checkpoint_dir, "latest.ckpt"))
    assert cfg.policy.residual is True and policy.residual_head is not None
    obs = {"point_cloud": torch.rand(2, 2, 64, 3) + torch.tensor([0.0, 0.0, 0.8]), "agent_pos": torch.rand(2, 2, 9)}
    noise = torch.randn(2, policy.horizon, policy.action_dim, generator=torch.Generator().manual_seed(0))
    with_residual = policy.predict_action(obs, noise)["action"]
    torch.testing.assert_close(with_residual, workspace.model.predict_action(obs, noise)["action"], rtol=0, atol=0)
    policy.residual_head = None   # the same checkpoint without its residual: the BC policy
    assert not torch.equal(policy.predict_action(obs, noise)["action"], with_residual)


def test_per_chunk_residual_is_one_offset_per_dim_with_a_da_dim_log_prob(obs):
    """residual_per_chunk: every executed step gets the same residual, scored once (Da terms, not n_exec x Da)."""
    base = make_base()
    rl = ResidualRLPolicy(base, residual_hidden=32, residual_scale=SCALE, residual_per_chunk=True)
    with torch.no_grad():
        rl.head.mean_net[-1].bias.normal_(0.0, 0.5)
    sample = rl.sample_actions(obs, generators=[torch.Generator().manual_seed(i) for i in range(B)])
    offset = (sample.chains[:, 1] - sample.chains[:, 0])[:, EXEC] / SCALE          # (B, n_exec, Da)
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset))
    assert torch.equal(sample.chains[:, 1, EXEC.stop:], sample.chains[:, 0, EXEC.stop:])
    mean, std = (t.detach() for t in rl.head(base.encode_obs(obs), sample.chains[:, 0]))
    reference = Normal(mean[:, 0], std[:, 0]).log_prob(offset[:, 0]).sum(-1)
    torch.testing.assert_close(sample.log_prob, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rl.get_log_prob(obs, sample.chains).log_prob, reference, atol=1e-5, rtol=1e-5)
    assert base.get_policy_config()["residual_per_chunk"] is True
    rebuilt = ManiFlowPointcloudPolicy(**base.get_policy_config())
    assert rebuilt.residual_head.shape == (1, 7)
