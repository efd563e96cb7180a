"""``training.device``: the CUDA path of BC and RL, and the error on a machine without CUDA.

The CUDA tests skip where ``torch.cuda.is_available()`` is false (CI, laptops); on a GPU box they
train on ``cuda`` and check that the checkpoints load and act identically on the CPU, the way a
policy trained on a cluster is evaluated elsewhere.
"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import BOX_HI, BOX_LO, N_POINTS, TINY_RL, bc_overrides, compose_cfg, read_metrics
from equi_diffpo.common.checkpoint_io import load_policy
from equi_diffpo.common.errors import ConfigError
from equi_diffpo.workspace.base_workspace import resolve_device

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def fixed_obs(policy, batch: int = 3) -> dict:
    """Raw obs ``(B, n_obs_steps, ...)`` of a fixed seed, in the tiny dataset's crop box."""
    gen = torch.Generator().manual_seed(0)
    n_obs = policy.n_obs_steps
    lo, hi = torch.as_tensor(BOX_LO, dtype=torch.float32), torch.as_tensor(BOX_HI, dtype=torch.float32)
    cloud = lo + (hi - lo) * torch.rand(batch, n_obs, N_POINTS, 3, generator=gen)
    return {"point_cloud": cloud, "agent_pos": 0.1 * torch.randn(batch, n_obs, 9, generator=gen)}


def assert_same_actions_on_cpu(checkpoint: str, trained_policy: torch.nn.Module) -> None:
    """The checkpoint, loaded on the CPU, gives the trained CUDA policy's actions for the same x0 noise.

    TF32 convolutions (cuDNN's default) alone move actions by ~3e-4 (measured on an H200), so the
    comparison runs the CUDA policy in full fp32."""
    cpu_policy, _, _ = load_policy(checkpoint, "cpu")
    obs = fixed_obs(cpu_policy)
    noise = torch.randn(3, cpu_policy.horizon, cpu_policy.action_dim, generator=torch.Generator().manual_seed(1))
    cpu_action = cpu_policy.eval().predict_action(obs, noise)["action"]
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        cuda_action = trained_policy.eval().predict_action(obs, noise.cuda())["action"].cpu()
    torch.testing.assert_close(cuda_action, cpu_action, atol=1e-4, rtol=1e-4)


def test_cuda_device_without_cuda_names_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="training.device=cpu"):
        resolve_device("cuda")


@needs_cuda
def test_bc_trains_on_cuda_and_checkpoint_acts_the_same_on_cpu(tiny_dataset, tmp_path):
    from equi_diffpo.workspace.train_maniflow_workspace import TrainManiFlowWorkspace

    cfg = compose_cfg("train_maniflow_pointcloud", bc_overrides(tiny_dataset, device="cuda", max_train_steps=10))
    workspace = TrainManiFlowWorkspace(cfg, output_dir=str(tmp_path))
    workspace.run()
    assert next(workspace.model.parameters()).is_cuda
    losses = [m["train/loss"] for m in read_metrics(tmp_path) if "train/loss" in m]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert_same_actions_on_cpu(os.path.join(tmp_path, "checkpoints", "latest.ckpt"), workspace.ema_model)


@needs_cuda
def test_rl_epoch_on_cuda_and_checkpoint_acts_the_same_on_cpu(tiny_checkpoint, tmp_path):
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    cfg = compose_cfg("train_maniflow_pointcloud_rl", TINY_RL + [f"pretrained_policy_path={tiny_checkpoint}",
                                                                 "training.device=cuda"])
    workspace = RLWorkspace(cfg, output_dir=str(tmp_path))
    metrics = workspace.run()
    assert workspace.device.type == "cuda" and next(workspace.critic.parameters()).is_cuda
    assert metrics["losses/first_minibatch_ratio_max_dev"] < 1e-4
    assert_same_actions_on_cpu(os.path.join(workspace.checkpoint_dir, "latest.ckpt"), workspace.model)
