"""Frozen encoders run once per PPO batch: the cached features give exactly the log-probs and values
of a fresh encoding, the update with the cache matches the one without, trainable encoders are never
cached (they keep learning), and a checkpoint of another critic set-up fails with a clear error."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from conftest import TINY_POLICY_KWARGS, tiny_base_policy
from equi_diffpo.common.checkpoint_io import CheckpointError
from equi_diffpo.policy import RLPolicyBase
from equi_diffpo.policy.latent_noise_policy import LatentNoisePolicy
from equi_diffpo.policy.noisy_chain_policy import NoisyChainPolicy
from equi_diffpo.rl_training.critic import PolicyFeatureCritic, build_critic
from equi_diffpo.rl_training.ppo_trainer import PPOBatch, PPOConfig, PPOTrainer, compute_gae

torch.set_num_threads(1)

TINY = TINY_POLICY_KWARGS
TASK = dict(point_dim=3, agent_pos_dim=9)
N = 40  # batch rows: with mini_batch_size 16, 3 minibatches and 3 encoding chunks


def make_policy_and_critic(critic_encoder: str = "policy", chain_noise: bool = False,
                           finetune_obs_encoder: bool = False) -> tuple[RLPolicyBase, torch.nn.Module]:
    """Built like RLWorkspace does it."""
    torch.manual_seed(0)
    base = tiny_base_policy()
    if chain_noise:
        policy = NoisyChainPolicy(base, noise_hidden=16, learn_noise_prior=True, noise_prior_hidden=16)
    else:
        policy = LatentNoisePolicy(base, noise_prior_hidden=16, noise_prior_chunk_shift=False)
    with torch.no_grad():   # the prior's mean starts at 0 whatever cond is; make cond matter from the start
        base.noise_prior.mean_net[-1].weight.normal_(0.0, 0.1)
    base.obs_encoder.requires_grad_(finetune_obs_encoder)
    own = {"init_encoder_from_policy": True} if critic_encoder == "own" else {}
    critic = build_critic({"encoder": critic_encoder, "hidden": 16, **own}, policy, base, TASK, n_obs_steps=2)
    return policy, critic


def make_batch(policy: RLPolicyBase, critic: torch.nn.Module) -> PPOBatch:
    """One-step episodes with a reward the policy can improve on (so the update really moves it)."""
    obs = {"point_cloud": torch.rand(N, 2, 20, 3), "agent_pos": torch.rand(N, 2, 9)}
    sample = policy.sample_actions(obs)
    with torch.no_grad():
        values = critic(obs)
    ones = torch.ones(N)
    rewards = -(sample.chains[:, -1] - 0.5).square().sum(dim=(1, 2))
    gae = compute_gae(rewards, values, torch.zeros(N), ones, ones, 0.99, 0.95)
    return PPOBatch(obs=obs, chains=sample.chains, log_probs=sample.log_prob, values=values,
                    advantages=gae.advantages, returns=gae.returns)


def count_calls(module: torch.nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("chain_noise", [False, True])
def test_cached_features_give_exactly_the_same_log_probs_and_values(chain_noise):
    policy, critic = make_policy_and_critic(chain_noise=chain_noise)
    batch = make_batch(policy, critic)
    with torch.no_grad():
        fresh = policy.get_log_prob(batch.obs, batch.chains)
        # obs_dict=None: with cond given the policy must not encode (nor read) the obs again.
        cond = policy.encode_obs(batch.obs)
        cached = policy.get_log_prob(None, batch.chains, cond=cond)
        assert torch.equal(fresh.log_prob, cached.log_prob) and torch.equal(fresh.entropy, cached.entropy)
        assert torch.equal(critic(batch.obs), critic(None, features=cond))
        # ... and cond really is what they read: other features, other numbers.
        assert not torch.allclose(policy.get_log_prob(None, batch.chains, cond=cond + 1.0).log_prob, fresh.log_prob)
        assert not torch.allclose(critic(None, features=cond + 1.0), critic(batch.obs))


def test_update_encodes_once_per_batch_and_matches_the_uncached_update():
    cfg = dict(ppo_epochs=3, mini_batch_size=16, policy_lr=1e-3, head_lr=1e-3, critic_lr=1e-3, target_kl=None)
    policy, critic = make_policy_and_critic()
    assert policy.obs_encoder_frozen and critic.obs_encoder_frozen
    batch = make_batch(policy, critic)
    results = {}
    for cache in (True, False):
        p, c = copy.deepcopy((policy, critic))   # one deepcopy: the critic keeps reading the copied policy
        calls = count_calls(p.base.obs_encoder)
        torch.manual_seed(1)  # same minibatch order in both runs
        stats = PPOTrainer(p, c, PPOConfig(cache_features=cache, **cfg)).update(batch, epoch=0)
        results[cache] = (stats, p, c)
        # cached: 3 chunks of 16 rows shared by actor and critic; else 3 PPO epochs x 3 minibatches x 2 modules.
        assert len(calls) == (math.ceil(N / 16) if cache else 3 * 3 * 2)
    (cached, p1, c1), (uncached, p0, c0) = results[True], results[False]
    assert cached.ppo_minibatches == uncached.ppo_minibatches == 9
    for key in ("value_loss", "policy_loss", "approx_kl", "entropy"):
        assert getattr(cached, key) == pytest.approx(getattr(uncached, key), rel=1e-5, abs=1e-7), key
    # Encoding other groups of rows may change float rounding, not the update.
    for module_cached, module_fresh in ((p1, p0), (c1, c0)):
        for (name, a), b in zip(module_cached.named_parameters(), module_fresh.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(p1.base.noise_prior.mean_net[-1].weight, policy.base.noise_prior.mean_net[-1].weight)


def test_update_reuses_the_features_the_rollout_acted_on():
    """A batch that carries the collector's ``cond`` (RLSample.cond) is not encoded again, and the ratio of the
    unchanged policy on it is exactly 1 (the same features scored the sample)."""
    policy, critic = make_policy_and_critic()
    batch = make_batch(policy, critic)
    with torch.no_grad():
        batch = dataclasses.replace(batch, cond=policy.sample_actions(batch.obs).cond)
        assert torch.equal(policy.get_log_prob(None, batch.chains, cond=batch.cond).log_prob, batch.log_probs)
    calls = count_calls(policy.base.obs_encoder)
    trainer = PPOTrainer(policy, critic, PPOConfig(ppo_epochs=2, mini_batch_size=16, head_lr=1e-3))
    trainer.update(batch, epoch=0)
    assert calls == []


def test_policy_feature_critic_owns_only_its_mlp():
    policy, critic = make_policy_and_critic()
    assert isinstance(critic, PolicyFeatureCritic)
    assert all(k.startswith("mlp.") for k in critic.state_dict())
    assert not {id(p) for p in critic.parameters()} & {id(p) for p in policy.parameters()}


@pytest.mark.parametrize("critic_encoder", ["own", "policy"])
def test_trainable_encoders_are_not_cached_and_keep_learning(critic_encoder):
    policy, critic = make_policy_and_critic(critic_encoder, chain_noise=True, finetune_obs_encoder=True)
    assert not policy.obs_encoder_frozen
    batch = make_batch(policy, critic)
    trainer = PPOTrainer(policy, critic, PPOConfig(ppo_epochs=1, mini_batch_size=16, policy_lr=1e-2, critic_lr=1e-2))
    encoded = trainer.encode_frozen(batch)
    assert encoded.cond is None and encoded.critic_features is None
    encoders = [policy.base.obs_encoder] + ([critic.value_head.obs_encoder] if critic_encoder == "own" else [])
    before = [copy.deepcopy(m.state_dict()) for m in encoders]
    trainer.update(batch, epoch=0)
    for state, module in zip(before, encoders):
        assert any(not torch.equal(v, module.state_dict()[k]) for k, v in state.items())


def test_own_critic_encoder_learns_although_copied_from_a_frozen_policy_encoder():
    # A plain deepcopy of the frozen policy encoder inherits requires_grad=False (the bug this guards).
    policy, critic = make_policy_and_critic("own")
    assert not any(p.requires_grad for p in policy.base.obs_encoder.parameters())
    assert all(p.requires_grad for p in critic.value_head.obs_encoder.parameters())


def test_minibatch_index_carries_cached_features():
    policy, critic = make_policy_and_critic()
    batch = PPOTrainer(policy, critic, PPOConfig(mini_batch_size=16)).encode_frozen(make_batch(policy, critic))
    assert batch.critic_features is batch.cond
    idx = torch.tensor([3, 0, 7])
    mb = batch.index(idx)
    assert torch.equal(mb.cond, batch.cond[idx]) and torch.equal(mb.critic_features, batch.critic_features[idx])
    with pytest.raises(ValueError, match="cond has leading dim"):
        PPOBatch(obs=batch.obs, chains=batch.chains, log_probs=batch.log_probs, values=batch.values,
                 advantages=batch.advantages, returns=batch.returns, cond=batch.cond[:5])


def test_a_key_of_another_critic_kind_is_named():
    with pytest.raises(ValueError, match=r"\['pc_out'\].*critic=<kind>"):
        build_critic({"encoder": "policy", "hidden": 16, "pc_out": 8}, None, None, TASK, n_obs_steps=2)


def test_resuming_with_another_critic_encoder_names_the_key():
    policy, critic = make_policy_and_critic("policy")
    saved_critic, saved_trainer = critic.state_dict(), PPOTrainer(policy, critic, PPOConfig()).state_dict()
    policy, critic = make_policy_and_critic("own")
    with pytest.raises(CheckpointError, match="critic.encoder='own'"):
        critic.load_state_dict(saved_critic)
    with pytest.raises(ValueError, match="critic.encoder"):
        PPOTrainer(policy, critic, PPOConfig()).load_state_dict(saved_trainer)
