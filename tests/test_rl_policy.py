"""Noisy Euler chain (ReinFlow-style) and latent-noise policy: exact log-probs, executed slice, deterministic
mode, gradients, PPO on a bandit."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from conftest import TINY_EXEC, TINY_POLICY_KWARGS, tiny_base_policy, tiny_obs
from equi_diffpo.model.value_head import ValueHead
from equi_diffpo.policy import ManiFlowPointcloudPolicy
from equi_diffpo.policy.latent_noise_policy import LatentNoisePolicy
from equi_diffpo.policy.noisy_chain_policy import NoisyChainPolicy

torch.set_num_threads(1)

TINY = TINY_POLICY_KWARGS
B = 5
EXEC = TINY_EXEC


@pytest.fixture
def setup():
    obs = tiny_obs(B)
    base = tiny_base_policy()
    rl = NoisyChainPolicy(base, sigma_min=0.08, sigma_max=0.14, noise_hidden=32)
    # The noise head starts at a constant sigma; give it large random output weights so sigma varies
    # over the whole range (and saturates), which the bound and log-prob tests need.
    with torch.no_grad():
        rl.noise_head.net[-1].weight.normal_(0.0, 3.0)
    return rl, obs


def hand_log_prob_and_entropy(rl: NoisyChainPolicy, obs: dict, chains: torch.Tensor):
    """Independent reference: torch.distributions.Normal over each transition, executed slice only."""
    K = chains.shape[1] - 1
    dt = 1.0 / K
    with torch.no_grad():
        cond = rl.base.obs_encoder(rl.base.normalizer.normalize({k: v[:, :2] for k, v in obs.items()}))
        log_prob = torch.zeros(chains.shape[0])
        entropy = torch.zeros(chains.shape[0])
        for k in range(K):
            x_k = chains[:, k]
            mean = x_k + rl.base.velocity_net(x_k, torch.full((B,), k * dt), torch.full((B,), dt), cond) * dt
            sigma = rl.noise_head(x_k, k * dt, cond)
            dist = Normal(mean[:, EXEC], sigma[:, EXEC])
            log_prob += dist.log_prob(chains[:, k + 1, EXEC]).sum(dim=(1, 2))
            entropy += dist.entropy().sum(dim=(1, 2))
    return log_prob, entropy


def test_chain_log_prob_matches_normal_reference(setup):
    rl, obs = setup
    sample = rl.sample_actions(obs)
    assert sample.chains.shape == (B, TINY["num_inference_steps"] + 1, TINY["horizon"], 7)
    assert sample.action.shape == (B, TINY["n_action_steps"], 7)
    ref_lp, ref_ent = hand_log_prob_and_entropy(rl, obs, sample.chains)
    result = rl.get_log_prob(obs, sample.chains)
    torch.testing.assert_close(result.log_prob, ref_lp, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(result.entropy, ref_ent, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sample.log_prob, ref_lp, atol=1e-4, rtol=1e-5)


def test_normalize_by_dims_divides_by_steps_times_dims(setup):
    rl, obs = setup
    rl_norm = NoisyChainPolicy(rl.base, noise_hidden=32, normalize_by_dims=True)
    rl_norm.noise_head.load_state_dict(rl.noise_head.state_dict())
    chains = rl.sample_actions(obs).chains
    count = TINY["num_inference_steps"] * TINY["n_action_steps"] * 7
    ref_lp, ref_ent = hand_log_prob_and_entropy(rl, obs, chains)
    result = rl_norm.get_log_prob(obs, chains)
    torch.testing.assert_close(result.log_prob, ref_lp / count, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.entropy, ref_ent / count, atol=1e-5, rtol=1e-5)


def test_sampled_log_prob_equals_recomputed_ratio_one(setup):
    rl, obs = setup
    sample = rl.sample_actions(obs)
    recomputed = rl.get_log_prob(obs, sample.chains).log_prob
    assert torch.equal(torch.exp(recomputed - sample.log_prob), torch.ones(B))


def test_log_prob_covers_only_executed_slice(setup):
    rl, obs = setup
    chains = rl.sample_actions(obs).chains
    base_lp = rl.get_log_prob(obs, chains).log_prob
    outside, inside = chains.clone(), chains.clone()
    outside[:, -1, 0] += 1.0                 # time index 0 < n_obs_steps - 1: never executed
    outside[:, -1, EXEC.stop:] += 1.0        # predicted beyond the executed steps
    inside[:, -1, EXEC.start] += 0.1
    assert torch.equal(rl.get_log_prob(obs, outside).log_prob, base_lp)
    assert not torch.allclose(rl.get_log_prob(obs, inside).log_prob, base_lp)


def test_deterministic_mode_equals_base_predict_action(setup):
    rl, obs = setup
    x0 = torch.randn(B, TINY["horizon"], 7) * 2   # wide, so clip_sample is exercised too
    sample = rl.sample_actions(obs, deterministic=True, noise=x0)
    expected = rl.base.predict_action(obs, noise=x0)
    assert torch.equal(sample.action, expected["action"])
    assert torch.equal(sample.chains[:, 0], x0)
    stochastic = rl.sample_actions(obs, deterministic=False, noise=x0)
    assert not torch.allclose(stochastic.action, expected["action"])


def test_sigma_within_bounds(setup):
    rl, obs = setup
    cond = rl.base.encode_obs(obs)
    sigma = rl.noise_head(torch.randn(B, TINY["horizon"], 7) * 10, 0.5, cond)
    assert sigma.shape == (B, TINY["horizon"], 7)
    assert sigma.min() >= 0.08 and sigma.max() <= 0.14
    assert sigma.max() - sigma.min() > 0.03      # actually varies (the head is not a constant)


def test_gradients_reach_noise_head_velocity_net_and_encoder(setup):
    rl, obs = setup
    chains = rl.sample_actions(obs).chains
    result = rl.get_log_prob(obs, chains)
    (result.log_prob.mean() + 0.01 * result.entropy.mean()).backward()
    for name, module in [("noise_head", rl.noise_head), ("velocity_net", rl.base.velocity_net),
                         ("obs_encoder", rl.base.obs_encoder)]:
        grad_norm = sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None)
        assert grad_norm > 0, name


def test_value_head_on_normalized_obs(setup):
    rl, obs = setup
    critic = ValueHead(point_dim=3, agent_pos_dim=9, n_obs_steps=2, hidden=32)
    values = critic(rl.normalize_obs(obs))
    assert values.shape == (B,)
    values.sum().backward()
    assert all(p.grad is not None for p in critic.parameters())


def test_value_head_starts_from_a_copy_of_the_policy_encoder(setup):
    rl, obs = setup
    encoder = rl.base.obs_encoder
    critic = ValueHead(hidden=32, obs_encoder=encoder)
    for (name, p), q in zip(critic.obs_encoder.named_parameters(), encoder.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name   # same values, own storage
    critic(rl.normalize_obs(obs)).sum().backward()
    assert all(p.grad is None for p in encoder.parameters())   # the policy's encoder is untouched


def test_learned_noise_prior_adds_exact_x0_term_and_starts_as_bc(setup):
    rl, obs = setup
    torch.manual_seed(1)
    noise = torch.randn(B, TINY["horizon"], 7)
    before = rl.base.predict_action(obs, noise)["action"]
    rl_prior = NoisyChainPolicy(rl.base, noise_hidden=32, learn_noise_prior=True, noise_prior_hidden=16)
    rl_prior.noise_head.load_state_dict(rl.noise_head.state_dict())
    # Identity at initialisation: same actions from the same standard-normal draw.
    torch.testing.assert_close(rl.base.predict_action(obs, noise)["action"], before)
    with torch.no_grad():   # move the prior so the x0 term is non-trivial
        rl.base.noise_prior.mean_net[-1].bias.normal_(0.0, 0.5)
        rl.base.noise_prior.log_std.uniform_(-1.0, 0.0)
    sample = rl_prior.sample_actions(obs, noise=noise)
    cond = rl.base.encode_obs(obs).detach()
    mean, std = rl.base.noise_prior(cond)
    torch.testing.assert_close(sample.chains[:, 0], (mean + std * noise).detach())
    ref_lp, ref_ent = hand_log_prob_and_entropy(rl, obs, sample.chains)
    prior = Normal(mean.detach(), std.detach())
    ref_lp = ref_lp + prior.log_prob(sample.chains[:, 0]).sum(dim=(1, 2))
    ref_ent = ref_ent + prior.entropy().sum(dim=(1, 2))
    result = rl_prior.get_log_prob(obs, sample.chains)
    torch.testing.assert_close(result.log_prob, ref_lp, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(result.entropy, ref_ent, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sample.log_prob, ref_lp, atol=1e-4, rtol=1e-5)
    result.log_prob.sum().backward()
    assert rl.base.noise_prior.mean_net[-1].weight.grad.abs().sum() > 0
    assert rl.base.get_policy_config()["noise_prior"] is True



def test_chunk_shift_prior_shares_one_mean_per_action_dim_and_rebuilds_from_config():
    """noise_prior_chunk_shift: the x0 mean is the same at every horizon step (Da outputs, not H x Da),
    std stays per entry, and a checkpoint's policy config rebuilds that architecture."""
    torch.manual_seed(0)
    base = ManiFlowPointcloudPolicy(**TINY)
    base.enable_noise_prior(hidden=16, chunk_shift=True)
    prior = base.noise_prior
    assert prior.mean_net[-1].out_features == 7
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0.0, 0.5)
    mean, std = prior(torch.randn(B, base.obs_encoder.output_dim))
    assert mean.shape == std.shape == (B, TINY["horizon"], 7)
    torch.testing.assert_close(mean, mean[:, :1].expand_as(mean))
    assert mean[:, 0].std(dim=1).min() > 0 and std[0].std() > 0
    rebuilt = ManiFlowPointcloudPolicy(**base.get_policy_config())
    rebuilt.load_state_dict(base.state_dict())
    assert rebuilt.noise_prior.mean_net[-1].out_features == 7


def test_latent_only_policy_explores_x0_through_the_frozen_flow(setup):
    """Latent policy: actions are the base flow from x0 ~ prior, log-prob is the prior term alone."""
    rl, obs = setup
    latent = LatentNoisePolicy(rl.base, noise_prior_hidden=16, noise_prior_chunk_shift=False, noise_prior_chunk_std=0.0)
    assert not hasattr(latent, "noise_head") and latent.chunk_log_std is None
    assert not any(p.requires_grad for p in rl.base.velocity_net.parameters())
    with torch.no_grad():
        rl.base.noise_prior.mean_net[-1].bias.normal_(0.0, 0.5)
        rl.base.noise_prior.log_std.uniform_(-1.0, 0.0)
    noise = torch.randn(B, TINY["horizon"], 7)
    sample = latent.sample_actions(obs, noise=noise)
    torch.testing.assert_close(sample.action, rl.base.predict_action(obs, noise)["action"])
    mean, std = rl.base.noise_prior(rl.base.encode_obs(obs))
    reference = Normal(mean.detach(), std.detach()).log_prob(sample.chains[:, 0]).sum(dim=(1, 2))
    torch.testing.assert_close(sample.log_prob, reference, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(latent.get_log_prob(obs, sample.chains).log_prob, reference, atol=1e-4, rtol=1e-5)


def test_chunk_shared_x0_exploration_has_exact_log_prob_and_leaves_evaluation_alone(setup):
    """noise_prior_chunk_std: x0 column d ~ N(mu_d, diag(std_d^2) + c_d^2 11^T); reference = a full-covariance
    MultivariateNormal per action dim; deterministic mode and predict_action leave the shared term out."""
    rl, obs = setup
    with pytest.raises(ValueError, match="learn_noise_prior"):
        NoisyChainPolicy(rl.base, noise_prior_chunk_std=0.3)
    latent = LatentNoisePolicy(rl.base, noise_prior_hidden=16, noise_prior_chunk_shift=False, noise_prior_chunk_std=0.3)
    with torch.no_grad():
        rl.base.noise_prior.mean_net[-1].bias.normal_(0.0, 0.5)
        rl.base.noise_prior.log_std.uniform_(-1.0, 0.0)
        latent.chunk_log_std.uniform_(-2.0, -0.5)
    noise = torch.randn(B, TINY["horizon"], 7)
    torch.testing.assert_close(latent.sample_actions(obs, deterministic=True, noise=noise).action,
                               rl.base.predict_action(obs, noise)["action"])
    sample = latent.sample_actions(obs, noise=noise)
    shared = sample.chains[:, 0] - latent.sample_actions(obs, deterministic=True, noise=noise).chains[:, 0]
    torch.testing.assert_close(shared, shared[:, :1].expand_as(shared))   # one draw per chunk and dim
    mean, std = (t.detach() for t in rl.base.noise_prior(rl.base.encode_obs(obs)))
    c = latent.chunk_std().detach()
    H = TINY["horizon"]
    reference = torch.zeros(B)
    for d in range(7):
        cov = torch.diag_embed(std[:, :, d].square()) + c[d] ** 2 * torch.ones(H, H)
        reference += MultivariateNormal(mean[:, :, d], covariance_matrix=cov).log_prob(sample.chains[:, 0, :, d])
    torch.testing.assert_close(sample.log_prob, reference, atol=1e-4, rtol=1e-5)
    result = latent.get_log_prob(obs, sample.chains)
    torch.testing.assert_close(result.log_prob, reference, atol=1e-4, rtol=1e-5)
    result.log_prob.sum().backward()
    assert latent.chunk_log_std.grad.abs().sum() > 0
    assert any(p is latent.chunk_log_std for p in latent.head_parameters())


@pytest.mark.parametrize("method,learn_noise_prior,chunk_shift",
                         [("chain", False, False), ("chain", True, False), ("latent", True, False), ("latent", True, True)])
def test_ppo_on_the_flow_chain_learns_a_bandit(method, learn_noise_prior, chunk_shift):
    """End to end through the real chain log-probs and the PPO trainer (joint ratio, clip 0.2):
    one-step episodes with reward = -||executed action - target||^2 in normalized units. The
    deterministic actions must move clearly towards the target; a sign or bookkeeping error in the
    log-probs, GAE or surrogate fails this."""
    from equi_diffpo.rl_training.critic import NormalizedCritic
    from equi_diffpo.rl_training.ppo_trainer import PPOBatch, PPOConfig, PPOTrainer, compute_gae

    torch.manual_seed(0)
    base = tiny_base_policy()
    if method == "chain":
        policy = NoisyChainPolicy(base, noise_hidden=32, learn_noise_prior=learn_noise_prior, noise_prior_hidden=16)
    else:
        policy = LatentNoisePolicy(base, noise_prior_hidden=16, noise_prior_chunk_shift=chunk_shift,
                                   noise_prior_chunk_std=0.0)
    critic = NormalizedCritic(ValueHead(hidden=16, pc_out=8, state_out=8), base.normalizer, n_obs_steps=2)
    trainer = PPOTrainer(policy, critic, PPOConfig(policy_lr=3e-3, head_lr=3e-3, critic_lr=1e-3,
                                                   mini_batch_size=32, ppo_epochs=4, target_kl=None))
    n = 64
    obs = {"point_cloud": torch.rand(n, 2, 20, 3), "agent_pos": torch.rand(n, 2, 9)}
    target = torch.full((7,), 0.5)

    def distance(final: torch.Tensor) -> torch.Tensor:   # (n, H, Da) -> (n,)
        return (final[:, EXEC] - target).square().sum(dim=(1, 2))

    def deterministic_distance() -> float:
        chains = policy.sample_actions(obs, deterministic=True, noise=torch.zeros(n, TINY["horizon"], 7)).chains
        return distance(chains[:, -1]).mean().item()

    before = deterministic_distance()
    ones = torch.ones(n)
    for epoch in range(30):
        sample = policy.sample_actions(obs)
        with torch.no_grad():
            values = critic(obs)
        gae = compute_gae(-distance(sample.chains[:, -1]), values, torch.zeros(n), ones, ones, 0.99, 0.95)
        trainer.update(PPOBatch(obs=obs, chains=sample.chains, log_probs=sample.log_prob, values=values,
                                advantages=gae.advantages, returns=gae.returns), epoch)
    after = deterministic_distance()
    assert after < 0.75 * before, (before, after)


@pytest.mark.parametrize("mode", ["chain", "latent_chunk"])
def test_per_row_generators_make_each_row_independent_of_its_batch(setup, mode):
    """Every draw of row i comes from generators[i]: the same seeds give the same chains, and a row's
    chain does not depend on which other rows share the batch (reproducible rollouts)."""
    rl, obs = setup
    if mode == "latent_chunk":
        rl = LatentNoisePolicy(rl.base, noise_prior_hidden=16, noise_prior_chunk_shift=False, noise_prior_chunk_std=0.3)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    full = rl.sample_actions(obs, generators=gens(range(B))).chains
    torch.testing.assert_close(rl.sample_actions(obs, generators=gens(range(B))).chains, full, rtol=0, atol=0)
    row = rl.sample_actions({k: v[2:3] for k, v in obs.items()}, generators=gens([2])).chains
    torch.testing.assert_close(row, full[2:3], rtol=1e-5, atol=1e-5)    # batch-size kernels: last bits only
    other = rl.sample_actions(obs, generators=gens(range(10, 10 + B))).chains
    assert not torch.allclose(other, full)
    with pytest.raises(ValueError, match="generators"):
        rl.sample_actions(obs, generators=gens([0]))
