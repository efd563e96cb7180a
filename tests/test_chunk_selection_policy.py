"""Chunk-selection policy: starts exactly as BC (uniform over i.i.d. proposals, argmax = the first draw), the
choice's log-prob is the hand-computed categorical one (ratio 1 with and without precomputed features), only
the selector trains, PPO learns a bandit over candidates, and a one-epoch RL run's checkpoint evaluates with
the selector in ``predict_action``."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import TINY_EXEC, TINY_RL, TINY_POLICY_KWARGS, compose_cfg, tiny_base_policy, tiny_obs
from equi_diffpo.common.checkpoint_io import load_policy
from equi_diffpo.policy import ManiFlowPointcloudPolicy
from equi_diffpo.policy.chunk_selection_policy import ChunkSelectionPolicy

torch.set_num_threads(1)

TINY = TINY_POLICY_KWARGS
B, N = 5, 6


def make_base() -> ManiFlowPointcloudPolicy:
    return tiny_base_policy().eval()


def trained_selector(base: ManiFlowPointcloudPolicy) -> ChunkSelectionPolicy:
    """A selection policy whose scorer looks trained (random output layer)."""
    rl = ChunkSelectionPolicy(base, n_candidates=N, selector_hidden=32)
    with torch.no_grad():
        rl.head.score_net[-1].weight.normal_(0.0, 1.0)
    return rl


@pytest.fixture
def obs():
    return tiny_obs(B)


def test_zero_init_is_bc_on_the_first_draw(obs):
    base = make_base()
    noise = torch.randn(B, N, TINY["horizon"], 7)
    bc_each = [base.predict_action(obs, noise[:, i])["action"] for i in range(N)]   # before the selector exists
    bc = {"action": bc_each[0]}
    rl = ChunkSelectionPolicy(base, n_candidates=N, selector_hidden=32)
    assert base.chunk_selector is rl.head and base.get_policy_config()["selector"] is True
    assert base.noise_shape == (N, TINY["horizon"], 7)
    # The candidates run as one (B * N)-row batch: CPU kernels may change the last bits (~1e-6) with the batch size.
    torch.testing.assert_close(rl.predict_action(obs, noise)["action"], bc["action"], rtol=0, atol=1e-5)
    det = rl.sample_actions(obs, deterministic=True, noise=noise)
    torch.testing.assert_close(det.action, rl.predict_action(obs, noise)["action"], rtol=0, atol=0)
    torch.testing.assert_close(det.log_prob, torch.full((B,), -torch.log(torch.tensor(float(N)))))
    # Every candidate is the BC flow of its own draw.
    for i in range(N):
        torch.testing.assert_close(base.decode_actions(det.chains[:, i])["action"], bc_each[i], rtol=0, atol=1e-5)


def test_choice_log_prob_is_the_categorical_and_matches_get_log_prob(obs):
    rl = trained_selector(make_base())
    noise = torch.randn(B, N, TINY["horizon"], 7)
    gens = [torch.Generator().manual_seed(i) for i in range(B)]
    sample = rl.sample_actions(obs, noise=noise, generators=gens)
    with torch.no_grad():
        cond = rl.encode_obs(obs)
        candidates = rl.base.candidate_chunks(cond, noise)
        log_p = torch.log_softmax(rl.head(cond, candidates), dim=1)
    # The chosen candidate sits in slot 0; its hand-computed log-prob is the sampled one.
    chosen = [int(torch.nonzero((candidates[b] == sample.chains[b, 0]).all(dim=(1, 2)))[0]) for b in range(B)]
    torch.testing.assert_close(sample.log_prob, log_p[torch.arange(B), chosen], rtol=1e-5, atol=1e-6)
    for c in (None, cond):
        result = rl.get_log_prob(obs, sample.chains, cond=c)
        torch.testing.assert_close(result.log_prob, sample.log_prob, rtol=0, atol=1e-6)
        torch.testing.assert_close(result.entropy, -(log_p.exp() * log_p).sum(1), rtol=1e-5, atol=1e-6)
    # Same multiset of candidates, the choice moved to the front.
    torch.testing.assert_close(sample.chains.sum(1), candidates.sum(1))
    # Deterministic mode = the argmax = the base's predict_action, bit for bit.
    det = rl.sample_actions(obs, deterministic=True, noise=noise)
    torch.testing.assert_close(det.action, rl.base.predict_action(obs, noise)["action"], rtol=0, atol=0)
    torch.testing.assert_close(det.chains[:, 0], candidates[torch.arange(B), log_p.argmax(1)])


def test_only_the_selector_trains_and_generators_reproduce(obs):
    rl = trained_selector(make_base())
    trainable = {id(p) for p in rl.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in rl.head_parameters()} and rl.obs_encoder_frozen
    draws = [rl.sample_actions(obs, generators=[torch.Generator().manual_seed(i) for i in range(B)]) for _ in range(2)]
    assert torch.equal(draws[0].chains, draws[1].chains) and torch.equal(draws[0].log_prob, draws[1].log_prob)
    rl.get_log_prob(obs, draws[0].chains).log_prob.sum().backward()
    assert rl.head.score_net[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="got"):
        rl.get_log_prob(obs, draws[0].chains[:, :2])
    rl.base.obs_encoder.requires_grad_(True)
    with pytest.raises(ValueError, match="finetune_obs_encoder=false"):
        rl.sample_actions(obs)


def test_policy_gradient_learns_to_pick_the_candidate_a_bandit_rewards(obs):
    """A bandit: reward = -|first executed x action| of the chosen chunk. REINFORCE on sampled choices must
    move the greedy (argmax) choice at least halfway from the first draw (what BC executes) to the best of
    the N candidates."""
    torch.manual_seed(1)
    rl = ChunkSelectionPolicy(make_base(), n_candidates=N, selector_hidden=32)
    optimizer = torch.optim.Adam(rl.head_parameters(), lr=3e-3)
    obs64 = {k: v.repeat(13, *[1] * (v.dim() - 1))[:64] for k, v in obs.items()}
    cond = rl.encode_obs(obs64)

    def reward(chunks: torch.Tensor) -> torch.Tensor:   # (..., horizon, Da) -> (...)
        return -chunks[..., TINY_EXEC.start, 0].clamp(-1, 1).abs()

    noise = torch.randn(64, N, TINY["horizon"], 7, generator=torch.Generator().manual_seed(7))
    candidates = rl.base.candidate_chunks(cond, noise).detach()
    first, best = float(reward(candidates[:, 0]).mean()), float(reward(candidates).max(1).values.mean())
    for _ in range(200):
        sample = rl.sample_actions(obs64)
        advantage = reward(sample.chains[:, 0])
        loss = -(rl.get_log_prob(obs64, sample.chains, cond=cond).log_prob * (advantage - advantage.mean())).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    greedy = float(reward(rl.sample_actions(obs64, deterministic=True, noise=noise).chains[:, 0]).mean())
    assert greedy > first + 0.5 * (best - first), (first, greedy, best)


def test_selection_rl_epoch_and_checkpoint(tiny_checkpoint, tmp_path):
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    cfg = compose_cfg("train_maniflow_pointcloud_rl", TINY_RL + [
        f"pretrained_policy_path={tiny_checkpoint}", "rl_policy=select", "rl_policy.n_candidates=4",
        "rl_policy.selector_hidden=16", "rl_training.ppo_trainer.critic_warmup_epochs=0"])
    workspace = RLWorkspace(cfg, output_dir=str(tmp_path))
    bc_weights = {k: v.clone() for k, v in workspace.model.state_dict().items()}
    metrics = workspace.run()
    assert isinstance(workspace.rl_policy, ChunkSelectionPolicy)
    assert metrics["losses/first_minibatch_ratio_max_dev"] < 1e-5
    changed = {k.split(".")[0] for k, v in workspace.model.state_dict().items()
               if k not in bc_weights or not torch.equal(v, bc_weights[k])}
    assert changed == {"chunk_selector"}

    policy, cfg, _ = load_policy(os.path.join(workspace.checkpoint_dir, "latest.ckpt"))
    assert cfg.policy.selector is True and policy.chunk_selector.n_candidates == 4
    obs2 = {"point_cloud": torch.rand(2, 2, 64, 3) + torch.tensor([0.0, 0.0, 0.8]), "agent_pos": torch.rand(2, 2, 9)}
    noise = torch.randn(2, *policy.noise_shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(policy.predict_action(obs2, noise)["action"],
                               workspace.model.predict_action(obs2, noise)["action"], rtol=0, atol=0)


def test_selector_and_residual_exclude_each_other():
    base = make_base()
    base.enable_residual()
    with pytest.raises(ValueError, match="rl_policy=residual"):
        ChunkSelectionPolicy(base)
    with pytest.raises(ValueError, match="not both"):
        ManiFlowPointcloudPolicy(**{**base.get_policy_config(), "selector": True})
