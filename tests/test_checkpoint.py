"""Checkpoint files: round trip through the workspace payload, clear errors for checkpoints that
don't fit, atomic writes, and the slim export that ships a policy."""
from __future__ import annotations

import glob
import os
import stat

import dill
import hydra
import pytest
import torch
from omegaconf import OmegaConf

from equi_diffpo.common.checkpoint_io import (CheckpointError, atomic_torch_save, export_policy_checkpoint,
                                              load_payload, load_policy, offset_actions_checkpoint)
from equi_diffpo.dataset import PointCloudDataset
from equi_diffpo.workspace.train_maniflow_workspace import TrainManiFlowWorkspace

torch.set_num_threads(1)


def sample_obs(dataset_path: str, n: int = 4) -> dict:
    """The first 2 obs frames of ``n`` dataset windows: point_cloud (n, 2, N, 3), agent_pos (n, 2, 9)."""
    dataset = PointCloudDataset(dataset_path, val_ratio=0.0)
    items = [dataset[i] for i in range(0, 4 * n, 4)]
    return {k: torch.stack([it["obs"][k][:2] for it in items]) for k in ("point_cloud", "agent_pos")}


def fixed_noise(policy, n: int, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, policy.horizon, policy.action_dim, generator=torch.Generator().manual_seed(seed))


def save_modified(payload: dict, path: str, **policy_changes) -> str:
    """``payload`` with ``cfg.policy.<key>`` changed but the weights kept: a checkpoint whose
    config and tensors disagree, as after editing the architecture defaults."""
    cfg = OmegaConf.create(OmegaConf.to_container(payload["cfg"]))
    for key, value in policy_changes.items():
        cfg.policy[key] = value
    return atomic_torch_save({**payload, "cfg": cfg}, path)


def test_save_load_round_trip_gives_identical_actions(tiny_bc_run, tmp_path):
    payload = load_payload(tiny_bc_run.checkpoint)
    workspace = TrainManiFlowWorkspace(payload["cfg"], output_dir=str(tmp_path))
    workspace.load_checkpoint(tiny_bc_run.checkpoint)
    saved = workspace.save_checkpoint("roundtrip")
    assert saved == os.path.join(str(tmp_path), "checkpoints", "roundtrip.ckpt")

    policy, cfg, _ = load_policy(saved)
    assert cfg.task.name == "lift_d0"
    obs = sample_obs(tiny_bc_run.dataset)
    noise = fixed_noise(policy, 4)
    loaded = policy.predict_action(obs, noise=noise)
    reference = workspace.ema_model.predict_action(obs, noise=noise)
    assert loaded["action"].shape == (4, 8, 10) and loaded["action_pred"].shape == (4, 16, 10)
    torch.testing.assert_close(loaded["action_pred"], reference["action_pred"], rtol=0, atol=0)
    # The loader really picked the EMA weights: the raw model acts differently on the same noise.
    raw = workspace.model.eval().predict_action(obs, noise=noise)["action_pred"]
    assert not torch.allclose(raw, loaded["action_pred"])


@pytest.mark.parametrize("changes", [{"down_dims": [16, 48]}, {"action_dim": 7}])
def test_changed_policy_shape_names_the_key(tiny_checkpoint, tmp_path, changes):
    payload = load_payload(tiny_checkpoint)
    path = save_modified(payload, str(tmp_path / "changed.ckpt"), **changes)
    # Independent reference: which parameters really differ in shape between the two architectures.
    weights = payload["state_dicts"]["ema_model"]
    changed_cfg = {**OmegaConf.to_container(payload["cfg"].policy), **changes}
    other = hydra.utils.instantiate(changed_cfg).state_dict()
    differing = [k for k in other if k in weights and other[k].shape != weights[k].shape]
    assert differing

    with pytest.raises(CheckpointError) as info:
        load_policy(path)
    message = str(info.value)
    assert path in message and "shape mismatch" in message
    assert any(key in message for key in differing), message


def test_expected_config_mismatch_names_policy_key(tiny_checkpoint):
    with pytest.raises(CheckpointError, match=r"policy\.action_dim: checkpoint 10 vs requested 7"):
        load_policy(tiny_checkpoint, expected_config={"point_dim": 3, "action_dim": 7})
    policy, _, _ = load_policy(tiny_checkpoint, expected_config={"point_dim": 3, "agent_pos_dim": 9, "action_dim": 10})
    assert policy.action_dim == 10


def test_missing_checkpoint_names_the_path(tmp_path):
    path = str(tmp_path / "nowhere" / "latest.ckpt")
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_policy(path)
    assert path in str(info.value)


def test_corrupt_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="could not be read") as info:
        load_policy(str(path))
    assert str(path) in str(info.value)


def test_non_workspace_file_is_rejected(tmp_path):
    path = str(tmp_path / "weights.pt")
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a workspace checkpoint"):
        load_policy(path)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_atomic_save_leaves_no_tmp_and_keeps_old_file_on_failure(tmp_path):
    path = str(tmp_path / "ckpts" / "latest.ckpt")
    atomic_torch_save({"cfg": {}, "state_dicts": {}, "pickles": {"epoch": 1}}, path)
    assert torch.load(path, pickle_module=dill, weights_only=False)["pickles"]["epoch"] == 1
    assert glob.glob(str(tmp_path / "ckpts" / "*.tmp")) == []

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_torch_save({"cfg": {}, "state_dicts": {}, "pickles": {"epoch": _Unpicklable()}}, path)
    # A failed write neither truncates the previous checkpoint nor leaves its temp file around.
    assert torch.load(path, pickle_module=dill, weights_only=False)["pickles"]["epoch"] == 1
    assert sorted(os.listdir(tmp_path / "ckpts")) == ["latest.ckpt"]


def test_atomic_save_uses_umask_permissions_like_torch_save(tmp_path):
    old_umask = os.umask(0o022)
    try:
        atomic = atomic_torch_save({"x": 1}, str(tmp_path / "atomic.ckpt"))
        torch.save({"x": 1}, str(tmp_path / "plain.ckpt"))
    finally:
        os.umask(old_umask)
    # The temp file's private 0600 mode must not leak into the final checkpoint.
    assert stat.S_IMODE(os.stat(atomic).st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain.ckpt").st_mode) == 0o644


def test_export_keeps_only_ema_model_and_loads(tiny_bc_run, tmp_path):
    dst = export_policy_checkpoint(tiny_bc_run.checkpoint, str(tmp_path / "export" / "lift_d0_tiny.ckpt"))
    slim = load_payload(dst)
    full = load_payload(tiny_bc_run.checkpoint)
    assert set(full["state_dicts"]) >= {"model", "ema_model", "optimizer"}
    assert list(slim["state_dicts"]) == ["ema_model"]
    assert slim["pickles"] == {"global_step": tiny_bc_run.global_step, "epoch": tiny_bc_run.epoch}
    assert os.path.getsize(dst) < os.path.getsize(tiny_bc_run.checkpoint)
    assert glob.glob(str(tmp_path / "export" / "*.tmp")) == []

    exported, _, _ = load_policy(dst)
    original, _, _ = load_policy(tiny_bc_run.checkpoint)
    obs = sample_obs(tiny_bc_run.dataset, n=2)
    noise = fixed_noise(original, 2)
    torch.testing.assert_close(exported.predict_action(obs, noise=noise)["action"],
                               original.predict_action(obs, noise=noise)["action"], rtol=0, atol=0)


def test_offset_checkpoint_shifts_every_action_by_exactly_the_offset(tiny_bc_run, tmp_path):
    """The deliberately weak RL start (scripts/make_weak_checkpoint.py): same network, actions + offset."""
    dst = offset_actions_checkpoint(tiny_bc_run.checkpoint, str(tmp_path / "weak.ckpt"), [0.0, -0.01, 0.02])
    weak, cfg, _ = load_policy(dst)
    original, _, _ = load_policy(tiny_bc_run.checkpoint)
    obs = sample_obs(tiny_bc_run.dataset, n=2)
    noise = fixed_noise(original, 2)
    shift = weak.predict_action(obs, noise=noise)["action_pred"] - original.predict_action(obs, noise=noise)["action_pred"]
    expected = torch.zeros(original.action_dim)
    expected[:3] = torch.tensor([0.0, -0.01, 0.02])
    torch.testing.assert_close(shift, expected.expand_as(shift), atol=1e-5, rtol=0)
    assert list(cfg.weakened.action_offset) == [0.0, -0.01, 0.02]
    with pytest.raises(ValueError, match="entries"):
        offset_actions_checkpoint(tiny_bc_run.checkpoint, str(tmp_path / "bad.ckpt"), [0.0] * 11)
