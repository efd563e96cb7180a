"""RL on the original ManiFlow DiT-X policy (ManiFlowTransformerPointcloudPolicy), both main methods.

Unit tests use the tiny DiT-X of tests/test_maniflow_ditx_policy.py (rot6d rows, the three robosuite state
keys, attention dropout 0.1, weights perturbed off the original's zero init); the workspace test starts from
the checkpoint written by the original code (tests/fixtures/maniflow_original_tiny.ckpt.xz).
"""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from conftest import PYTHON, REPO_ROOT, compose_cfg
from equi_diffpo.common.checkpoint_io import CheckpointError, load_payload, load_policy
from equi_diffpo.common.errors import ConfigError
from equi_diffpo.env.rotation import rot6d_rows_to_columns
from equi_diffpo.policy.rl_policy_factory import build_rl_policy, rl_policy_config
from equi_diffpo.rl_training.critic import build_critic
from equi_diffpo.rl_training.ppo_trainer import PPOBatch, PPOConfig, PPOTrainer, compute_gae
from test_maniflow_ditx_policy import random_obs, tiny_policy

torch.set_num_threads(1)

B = 6
METHODS = ["latent", "chain"]


def make_rl(method: str):
    """The RL view of a tiny DiT-X as RLWorkspace builds it (encoder frozen), heads made non-trivial so
    that a test which ignored them (the prior's mean, the chain's sigma) would fail."""
    base = tiny_policy()
    extra = {"learn_noise_prior": True, "noise_prior_chunk_std": 0.3, "noise_hidden": 16} if method == "chain" else {}
    rl = build_rl_policy(base, rl_policy_config(method, noise_prior_hidden=16, **extra))
    base.obs_encoder.requires_grad_(False)
    torch.manual_seed(1)
    with torch.no_grad():
        base.noise_prior.mean_net[-1].weight.normal_(0.0, 0.5)
        if method == "chain":
            rl.noise_head.net[-1].weight.normal_(0.0, 1.0)
    return rl


def generators(seed: int, n: int = B):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_sample_executes_predict_action_as_columns(method):
    rl = make_rl(method).eval()
    obs = random_obs(B)
    noise = torch.randn(B, rl.base.horizon, rl.base.action_dim, generator=torch.Generator().manual_seed(2))
    sample = rl.sample_actions(obs, deterministic=True, noise=noise)
    rows = rl.base.predict_action(obs, noise=noise)["action"]
    torch.testing.assert_close(sample.action, rows, rtol=0, atol=0)
    executed = rl.env_actions(sample.action)
    np.testing.assert_allclose(executed, rot6d_rows_to_columns(rows.numpy()), rtol=0, atol=1e-6)
    # The conversion matters for these actions (rows and columns differ), and the chain stays in the
    # policy's normalized space: its last state decodes to the rows.
    assert np.abs(executed[..., 3:9] - rows.numpy()[..., 3:9]).max() > 1e-2
    torch.testing.assert_close(rl.base.decode_actions(sample.chains[:, -1])["action"], rows)
    # The prior is used (its mean is non-zero), so predict_action is not the plain N(0, I) flow.
    assert rl.base.noise_prior_params(rl.encode_obs(obs))[0].abs().max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_stored_chains_score_their_sample_time_log_prob(method):
    rl = make_rl(method).eval()
    obs = random_obs(B)
    sample = rl.sample_actions(obs, generators=generators(10))
    assert sample.chains.shape == (B, rl.base.num_inference_steps + 1, rl.base.horizon, rl.base.action_dim)
    rl.train()   # as in PPO's update: the base's attention dropout must stay off, or the ratio is not 1
    assert not rl.base.training
    result = rl.get_log_prob(obs, sample.chains)
    torch.testing.assert_close(result.log_prob, sample.log_prob, atol=1e-4, rtol=1e-5)
    cached = rl.get_log_prob(obs, sample.chains, cond=rl.encode_obs(obs))   # the trainer's cached tokens
    torch.testing.assert_close(cached.log_prob, sample.log_prob, atol=1e-4, rtol=1e-5)
    other = rl.sample_actions(obs, generators=generators(20))
    assert (rl.get_log_prob(obs, other.chains).log_prob - sample.log_prob).abs().max() > 1e-2


def test_cond_features_pool_each_frame_of_the_tokens():
    base = tiny_policy()
    tokens = base.encode_obs(random_obs(B))   # (B, To * N, D)
    n_points, width = 32, base.obs_encoder.output_dim
    assert tokens.shape == (B, 2 * n_points, width)
    pooled = base.cond_features(tokens)
    assert pooled.shape == (B, base.cond_dim) == (B, 2 * width)
    torch.testing.assert_close(pooled[:, width:], tokens[:, n_points:].amax(dim=1))


def ppo_update(rl, critic_encoder: str = "policy"):
    """One PPO update (2 minibatches, 1 epoch) on one-step episodes with a reward the policy can improve."""
    critic = build_critic({"encoder": critic_encoder, "hidden": 16}, rl, rl.base, {}, n_obs_steps=2)
    obs = random_obs(B)
    sample = rl.sample_actions(obs, generators=generators(30))
    with torch.no_grad():
        values = critic(obs)
    ones = torch.ones(B)
    gae = compute_gae(-(sample.chains[:, -1] - 0.5).square().sum(dim=(1, 2)), values, torch.zeros(B), ones, ones,
                      0.99, 0.95)
    batch = PPOBatch(obs=obs, chains=sample.chains, log_probs=sample.log_prob, values=values,
                     advantages=gae.advantages, returns=gae.returns)
    trainer = PPOTrainer(rl, critic, PPOConfig(ppo_epochs=1, mini_batch_size=3, critic_warmup_epochs=0,
                                               policy_lr=1e-3, head_lr=1e-2, target_kl=None))
    before = {k: v.clone() for k, v in rl.state_dict().items()}
    rl.train()
    stats = trainer.update(batch, epoch=0)
    assert stats.first_minibatch_ratio_max_dev < 1e-4
    return [k for k, v in rl.state_dict().items() if not torch.equal(v, before[k])]


def test_latent_update_trains_only_the_noise_prior():
    changed = ppo_update(make_rl("latent"))
    assert changed and all(k.startswith("base.noise_prior.") or k == "chunk_log_std" for k in changed), changed
    assert any(k.startswith("base.noise_prior.mean_net") for k in changed)


def test_chain_update_trains_velocity_net_and_heads_not_the_encoder():
    changed = ppo_update(make_rl("chain"))
    assert any(k.startswith("base.model.blocks.") for k in changed)
    assert any(k.startswith("noise_head.") for k in changed)
    assert any(k.startswith("base.noise_prior.") for k in changed)
    assert not any(k.startswith(("base.obs_encoder.", "base.normalizer.")) for k in changed)


@pytest.mark.parametrize("method", ["residual", "fpo"])
def test_methods_for_the_unet_only_refuse_the_ditx_naming_the_choices(method):
    with pytest.raises(ConfigError, match=r"rl_policy=<one of \['chain', 'latent'\]>"):
        build_rl_policy(tiny_policy(), rl_policy_config(method))


def test_own_critic_refuses_the_ditx_naming_the_choices():
    rl = make_rl("latent")
    with pytest.raises(ConfigError, match=r"critic=<one of \['privileged', 'policy'\]>"):
        build_critic({"encoder": "own", "hidden": 16, "init_encoder_from_policy": True, "pc_out": 8, "state_out": 8},
                     rl, rl.base, {"point_dim": 6, "agent_pos_dim": 9}, n_obs_steps=2)


# ----------------------------------------------------------------------------- workspace, from the original's checkpoint
def rl_cfg(checkpoint: str, *extra: str):
    return compose_cfg("train_maniflow_pointcloud_rl", [
        "task=stack_d0", "task_name=stack_d0", f"pretrained_policy_path={checkpoint}", "critic.hidden=16",
        "rl_training.num_epochs=1", "rl_training.val_every=0", "rl_training.checkpoint_every=1",
        "rl_training.rollout_collector.n_episodes_per_batch=2", "rl_training.rollout_collector.n_envs=1",
        "rl_training.rollout_collector.vec_mode=inline", "rl_training.rollout_collector.render_episodes=0",
        "rl_training.rollout_collector.max_episode_steps=16", "rl_training.ppo_trainer.critic_warmup_epochs=0",
        "rl_training.ppo_trainer.ppo_epochs=1", "rl_training.ppo_trainer.mini_batch_size=2",
        "logging.mode=disabled", *extra])


def test_time_convention_is_required_and_named(original_checkpoint, tmp_path):
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    with pytest.raises(CheckpointError, match="time_convention="):
        RLWorkspace(rl_cfg(original_checkpoint), output_dir=str(tmp_path))


@pytest.fixture(scope="module")
def rl_run(original_checkpoint, tmp_path_factory):
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    workspace = RLWorkspace(rl_cfg(original_checkpoint, "time_convention=t0_noise_t1_data"),
                            output_dir=str(tmp_path_factory.mktemp("rl_ditx")))
    pretrained = {k: v.clone() for k, v in workspace.model.state_dict().items()}
    return workspace, workspace.run(), pretrained


def test_workspace_epoch_from_the_original_checkpoint(rl_run):
    workspace, metrics, pretrained = rl_run
    assert type(workspace.model).__name__ == "ManiFlowTransformerPointcloudPolicy"
    assert workspace.cfg.task.point_cloud.source == "camera" and workspace.cfg.task.point_dim == 6
    assert metrics["charts/n_episodes"] == 2 and metrics["losses/first_minibatch_ratio_max_dev"] < 1e-4
    changed = [k for k, v in workspace.model.state_dict().items()
               if k not in pretrained or not torch.equal(v, pretrained[k])]
    assert any(k.startswith("noise_prior.") for k in changed)
    assert not any(k.startswith(("model.", "obs_encoder.")) for k in changed)


def test_rl_checkpoint_rebuilds_the_ditx_with_its_prior_and_acts(rl_run, tmp_path):
    workspace, _, _ = rl_run
    path = os.path.join(workspace.checkpoint_dir, "latest.ckpt")
    policy, cfg, _ = load_policy(path)   # the time convention is recorded now
    policy.eval()                        # no attention dropout (the evaluator sets eval mode too)
    assert cfg.policy.time_convention == "t0_noise_t1_data" and policy.noise_prior is not None
    gen = torch.Generator().manual_seed(0)
    obs = {"point_cloud": torch.rand(2, 2, 1024, 6, generator=gen) + torch.tensor([0.0, 0.0, 0.8, 0, 0, 0]),
           "agent_pos": torch.rand(2, 2, 9, generator=gen)}
    noise = torch.randn(2, policy.horizon, policy.action_dim, generator=gen)
    torch.testing.assert_close(policy.predict_action(obs, noise)["action"],
                               workspace.model.predict_action(obs, noise)["action"], rtol=0, atol=0)
    assert "noise_prior.log_std" in load_payload(path)["state_dicts"]["model"]

    out = tmp_path / "eval"
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    proc = subprocess.run([PYTHON, "scripts/eval_policy.py", f"checkpoint={path}", "n_episodes=1", "n_envs=1",
                           "n_videos=0", "max_episode_steps=8", "vec_mode=inline", f"output_dir={out}",
                           f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["task_name"] == "stack_d0" and result["eval/mean_length"] == 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_rl_epoch_on_cuda_from_the_original_checkpoint(original_checkpoint, tmp_path):
    """``training.device=cuda`` moves the DiT-X, its prior and the critic like the U-Net path; the checkpoint
    loads on the CPU."""
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    workspace = RLWorkspace(rl_cfg(original_checkpoint, "time_convention=t0_noise_t1_data", "training.device=cuda"),
                            output_dir=str(tmp_path))
    assert workspace.model.device.type == "cuda" and workspace.model.noise_prior.log_std.is_cuda
    assert all(p.is_cuda for p in workspace.critic.parameters())
    metrics = workspace.run()
    assert metrics["losses/first_minibatch_ratio_max_dev"] < 1e-3
    policy, _, _ = load_policy(os.path.join(workspace.checkpoint_dir, "latest.ckpt"), "cpu")
    assert policy.noise_prior is not None and policy.device.type == "cpu"
