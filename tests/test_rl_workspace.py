"""RL workspace: from the tiny BC checkpoint to an RL checkpoint that evaluation loads like a BC
one, resume of epoch/env-step counters and weights, and errors that name the offending key."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from conftest import TINY_RL, compose_cfg, read_metrics
from equi_diffpo.common.checkpoint_io import CheckpointError, load_payload, load_policy
from equi_diffpo.rl_training.rl_workspace import RLWorkspace

torch.set_num_threads(1)


def rl_cfg(checkpoint: str, *extra: str):
    return compose_cfg("train_maniflow_pointcloud_rl", TINY_RL + [f"pretrained_policy_path={checkpoint}", *extra])


@pytest.fixture(scope="module")
def rl_run(tiny_checkpoint, tmp_path_factory):
    """One RL epoch (2 episodes, inline envs) plus validation at start and end."""
    output_dir = str(tmp_path_factory.mktemp("rl_run"))
    workspace = RLWorkspace(rl_cfg(tiny_checkpoint, "rl_training.val_every=1", "rl_training.n_val_episodes=1"),
                            output_dir=output_dir)
    bc_weights = {k: v.clone() for k, v in workspace.model.state_dict().items()}
    metrics = workspace.run()
    return workspace, metrics, bc_weights


def test_one_epoch_writes_checkpoints_and_metrics(rl_run):
    workspace, metrics, bc_weights = rl_run
    ckpt_dir = workspace.checkpoint_dir
    assert sorted(os.listdir(ckpt_dir)) == ["epoch_0001.ckpt", "latest.ckpt"]
    assert workspace.epoch == 1 and workspace.env_steps > 0
    assert metrics["charts/n_episodes"] == 2
    assert metrics["perf/env_steps"] == workspace.env_steps
    for key in ("losses/policy_loss", "losses/value_loss", "losses/approx_kl", "eval/success_rate"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    # PPO's first minibatch reproduces the rollout's log-probs (ratio 1).
    assert metrics["losses/first_minibatch_ratio_max_dev"] < 1e-4
    rows = read_metrics(workspace.output_dir)
    assert [r.get("eval/success_rate") is not None for r in rows] == [True, True]   # before RL, after epoch 1
    assert rows[-1]["step"] == workspace.env_steps
    # The policy update really changed the fine-tuned policy: by default (latent-noise policy) its noise
    # prior, while the pretrained velocity net stays frozen.
    changed = [k for k, v in workspace.model.state_dict().items() if not torch.equal(v, bc_weights[k])]
    assert any(k.startswith("noise_prior.") for k in changed)
    assert not any(k.startswith("velocity_net.") for k in changed)


def test_rl_checkpoint_loads_like_bc(rl_run):
    workspace, _, _ = rl_run
    path = os.path.join(workspace.checkpoint_dir, "latest.ckpt")
    payload = load_payload(path)
    assert {"model", "rl_policy", "critic", "trainer"} <= set(payload["state_dicts"])
    assert payload["pickles"]["env_steps"] == workspace.env_steps

    policy, cfg, _ = load_policy(path, expected_config={"point_dim": 3, "agent_pos_dim": 9, "action_dim": 10})
    assert cfg.task.name == "lift_d0"
    obs = {"point_cloud": torch.rand(2, 2, 64, 3) + torch.tensor([0.0, 0.0, 0.8]), "agent_pos": torch.rand(2, 2, 9)}
    noise = torch.randn(2, policy.horizon, policy.action_dim, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(policy.predict_action(obs, noise=noise)["action"],
                               workspace.model.predict_action(obs, noise=noise)["action"], rtol=0, atol=0)


def test_resume_restores_epoch_env_steps_and_weights(rl_run, tiny_checkpoint, tmp_path):
    first, _, _ = rl_run
    run_dir = str(tmp_path / "run")
    shutil.copytree(first.output_dir, run_dir)
    resumed = RLWorkspace(rl_cfg(tiny_checkpoint, "rl_training.num_epochs=2"), output_dir=run_dir)
    assert resumed.epoch == 0 and resumed.env_steps == 0
    resumed.load_checkpoint()
    assert (resumed.epoch, resumed.env_steps) == (first.epoch, first.env_steps)
    for (name, a), b in zip(first.rl_policy.state_dict().items(), resumed.rl_policy.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(first.critic.state_dict().items(), resumed.critic.state_dict().values()):
        assert torch.equal(a, b), name

    resumed.run()    # resume=true by default: one more epoch, not two
    assert resumed.epoch == 2 and resumed.env_steps > first.env_steps
    assert os.path.isfile(os.path.join(resumed.checkpoint_dir, "epoch_0002.ckpt"))
    assert load_payload(os.path.join(resumed.checkpoint_dir, "latest.ckpt"))["pickles"]["epoch"] == 2
    assert [r.get("charts/epoch") for r in read_metrics(run_dir)] == [None, 0, 1]


def test_missing_pretrained_checkpoint_names_the_path(tmp_path):
    missing = str(tmp_path / "no_such.ckpt")
    with pytest.raises(CheckpointError) as info:
        RLWorkspace(rl_cfg(missing), output_dir=str(tmp_path / "run"))
    assert missing in str(info.value)


def test_checkpoint_of_another_task_names_task_name(tiny_checkpoint, tmp_path):
    # What `task_name=stack_d0` on the command line becomes (see hydra_cli.route_task_name).
    # stack_d0's clouds carry rgb; with its point_dim the architecture check would fire first.
    cfg = rl_cfg(tiny_checkpoint, "task=stack_d0", "task.point_dim=3", "task.point_cloud.use_rgb=false")
    assert cfg.task_name == "stack_d0"
    with pytest.raises(CheckpointError, match=r"task_name: checkpoint 'lift_d0' vs requested 'stack_d0'"):
        RLWorkspace(cfg, output_dir=str(tmp_path))


def test_unknown_ppo_key_names_it(tiny_checkpoint, tmp_path):
    cfg = rl_cfg(tiny_checkpoint, "+rl_training.ppo_trainer.clip_ration=0.1")
    with pytest.raises(ValueError, match=r"unknown rl_training\.ppo_trainer key\(s\) \['clip_ration'\]"):
        RLWorkspace(cfg, output_dir=str(tmp_path))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedule_decays_over_the_runs_epochs(tiny_checkpoint, tmp_path, schedule):
    """rl_training.ppo_trainer.lr_schedule=linear|cosine (config/train_maniflow_pointcloud_rl.yaml) decays over
    rl_training.num_epochs: the workspace must hand that horizon to PPOConfig before it checks the schedule."""
    workspace = RLWorkspace(rl_cfg(tiny_checkpoint, f"rl_training.ppo_trainer.lr_schedule={schedule}",
                                   "rl_training.num_epochs=7"), output_dir=str(tmp_path))
    assert workspace.ppo_cfg.total_epochs == 7
