"""BC workspace: it learns, writes latest + per-epoch checkpoints, resumes where it stopped, and
rejects configs that don't fit the dataset with the key to change."""
from __future__ import annotations

import os
import shutil

import hydra
import pytest
import torch
from torch.utils.data import default_collate

from conftest import BC_CHECKPOINT_EVERY, BC_STEPS, MAX_EPISODE_STEPS, bc_overrides, compose_cfg, read_metrics
from equi_diffpo.common.checkpoint_io import load_payload, load_policy
from equi_diffpo.dataset import PointCloudDataset
from equi_diffpo.workspace.base_workspace import set_seed
from equi_diffpo.workspace.train_maniflow_workspace import TrainManiFlowWorkspace

torch.set_num_threads(1)


def paired_loss(policy, batch: dict, seeds=range(4)) -> float:
    """Mean BC loss over fixed seeds: every policy sees the same noise, times and batch, so two
    policies' numbers differ only through their weights."""
    losses = []
    for seed in seeds:
        torch.manual_seed(seed)
        with torch.no_grad():
            losses.append(policy.compute_loss(batch, policy)[0].item())
    return sum(losses) / len(losses)


def test_loss_decreases_over_training(tiny_bc_run):
    trained, cfg, _ = load_policy(tiny_bc_run.checkpoint)
    set_seed(cfg.training.seed)                         # the very weights the run started from
    untrained = hydra.utils.instantiate(cfg.policy)
    untrained.set_normalizer(trained.normalizer)       # the data statistics are not what is learnt
    dataset = PointCloudDataset(**cfg.dataset)
    batch = default_collate([dataset[i] for i in range(len(dataset))])
    before, after = paired_loss(untrained, batch), paired_loss(trained, batch)
    assert after < 0.9 * before, (before, after)

    rows = read_metrics(tiny_bc_run.output_dir)
    assert [r["train/epoch"] for r in rows] == list(range(tiny_bc_run.epoch))
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in rows)
    assert rows[-1]["step"] == BC_STEPS
    assert any("train/val_loss" in r for r in rows)


def test_latest_and_epoch_checkpoints_exist(tiny_bc_run):
    ckpt_dir = os.path.join(tiny_bc_run.output_dir, "checkpoints")
    epochs = range(BC_CHECKPOINT_EVERY, tiny_bc_run.epoch + 1, BC_CHECKPOINT_EVERY)
    expected = {"latest.ckpt"} | {f"epoch_{e:04d}.ckpt" for e in epochs}
    assert set(os.listdir(ckpt_dir)) == expected
    latest = load_payload(tiny_bc_run.checkpoint)
    assert latest["pickles"] == {"global_step": BC_STEPS, "epoch": tiny_bc_run.epoch, "best_success_rate": -1.0}
    assert {"model", "ema_model", "optimizer", "ema"} <= set(latest["state_dicts"])
    assert latest["cfg"].policy.action_dim == 10


def test_resume_continues_from_saved_epoch(tiny_bc_run, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(tiny_bc_run.output_dir, run_dir)
    saved_epoch = tiny_bc_run.epoch
    steps_per_epoch = BC_STEPS // saved_epoch
    # Also exercises the periodic rollout evaluation (one inline episode, no video).
    cfg = compose_cfg("train_maniflow_pointcloud", bc_overrides(
        tiny_bc_run.dataset, resume="true", num_epochs=saved_epoch + 1, max_train_steps=None, checkpoint_every=1,
        rollout_every=1) + ["eval.n_episodes=1", "eval.n_envs=1", "eval.n_videos=0"])
    workspace = TrainManiFlowWorkspace(cfg, output_dir=run_dir)
    workspace.run()

    assert workspace.epoch == saved_epoch + 1
    assert workspace.global_step == BC_STEPS + steps_per_epoch
    rows = read_metrics(run_dir)
    # One new row, for the one new epoch; a restart from 0 would log epochs 0.. again.
    assert [r["train/epoch"] for r in rows] == list(range(saved_epoch + 1))
    assert rows[-1]["step"] == BC_STEPS + steps_per_epoch
    assert rows[-1]["eval/n_episodes"] == 1 and 0 < rows[-1]["eval/mean_length"] <= MAX_EPISODE_STEPS
    new_ckpt = load_payload(os.path.join(run_dir, "checkpoints", f"epoch_{saved_epoch + 1:04d}.ckpt"))
    assert new_ckpt["pickles"]["epoch"] == saved_epoch + 1
    # The optimizer state came along too (AdamW's step count continues).
    assert new_ckpt["state_dicts"]["optimizer"]["state"][0]["step"].item() == BC_STEPS + steps_per_epoch


class ScriptedRunner:
    """Stands in for PointCloudEnvRunner: success rates from a script, one per ``run``."""
    rates: list = []
    seeds: list = []

    def __init__(self, *args, seed, **kwargs):
        ScriptedRunner.seeds.append(seed)

    def run(self, policy, tag="eval"):
        return {"eval/success_rate": ScriptedRunner.rates.pop(0)}

    def close(self):
        pass


def test_best_checkpoint_keeps_the_best_rollout_success(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("equi_diffpo.workspace.train_maniflow_workspace.PointCloudEnvRunner", ScriptedRunner)
    ScriptedRunner.rates, ScriptedRunner.seeds = [0.2, 0.6, 0.4], []
    cfg = compose_cfg("train_maniflow_pointcloud", bc_overrides(tiny_dataset, max_train_steps=None, num_epochs=3,
                                                                 rollout_every=1, checkpoint_every=0))
    TrainManiFlowWorkspace(cfg, output_dir=str(tmp_path)).run()

    assert ScriptedRunner.seeds == [200000]      # selection episodes are not eval_policy.py's 100000+
    rows = read_metrics(tmp_path)
    assert [r["eval/best_success_rate"] for r in rows] == [0.2, 0.6, 0.6]
    best = load_payload(os.path.join(tmp_path, "checkpoints", "best.ckpt"))
    assert best["pickles"]["epoch"] == 2 and best["pickles"]["best_success_rate"] == 0.6


def test_stop_at_epoch_ends_early_on_the_full_schedule(tiny_dataset, tmp_path):
    """stop_at_epoch=1 of num_epochs=4: one epoch, saved as the last one, with the LR still high (a 1-epoch run's
    cosine would have decayed it to ~0)."""
    cfg = compose_cfg("train_maniflow_pointcloud", bc_overrides(tiny_dataset, max_train_steps=None, num_epochs=4,
                                                                 stop_at_epoch=1, checkpoint_every=3, val_every=0))
    workspace = TrainManiFlowWorkspace(cfg, output_dir=str(tmp_path))
    workspace.run()
    rows = read_metrics(tmp_path)
    assert workspace.epoch == 1 and len(rows) == 1
    assert rows[0]["train/lr"] > 0.5e-3          # optimizer.lr=1e-3, a quarter into its cosine
    assert "latest.ckpt" in os.listdir(os.path.join(tmp_path, "checkpoints"))   # the last epoch is saved


def test_bf16_precision_gives_the_fp32_loss(tiny_bc_run, tiny_dataset):
    """bf16 autocast changes the arithmetic (the loss differs in the low bits), not the objective (~1%)."""
    policy, cfg, _ = load_policy(tiny_bc_run.checkpoint)
    batch = default_collate([PointCloudDataset(**cfg.dataset)[i] for i in range(32)])
    workspace = TrainManiFlowWorkspace(compose_cfg("train_maniflow_pointcloud", bc_overrides(
        tiny_dataset, precision="bf16")), output_dir="unused")
    fp32 = paired_loss(policy, batch)
    with workspace._autocast():
        bf16 = paired_loss(policy, batch)
    assert 0 < abs(bf16 - fp32) < 0.02 * fp32, (fp32, bf16)


def test_invalid_precision_names_the_key(tiny_dataset):
    cfg = compose_cfg("train_maniflow_pointcloud", bc_overrides(tiny_dataset) + ["training.precision=fp16"])
    with pytest.raises(ValueError, match=r"training\.precision='fp16' is not valid"):
        TrainManiFlowWorkspace(cfg, output_dir="unused")


def test_point_dim_mismatch_names_the_key(tiny_dataset, tmp_path):
    cfg = compose_cfg("train_maniflow_pointcloud", bc_overrides(tiny_dataset) + ["task.point_dim=6"])
    workspace = TrainManiFlowWorkspace(cfg, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"policy\.point_dim=6 .* has 3: set task\.point_dim=3"):
        workspace.run()
    assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints"))


def test_invalid_logging_mode_names_it(tiny_dataset, tmp_path):
    cfg = compose_cfg("train_maniflow_pointcloud", bc_overrides(tiny_dataset) + ["logging.mode=onlin"])
    with pytest.raises(ValueError, match=r"logging\.mode='onlin' is not valid"):   # before the policy is built
        TrainManiFlowWorkspace(cfg, output_dir=str(tmp_path))
