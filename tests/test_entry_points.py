"""Every user-facing command runs end to end as a subprocess (the venv's python, cwd = repo root,
all outputs under tmp_path): BC training, RL training, the RL smoke test in both modes,
evaluation, checkpoint export, and the errors users see for a bad checkpoint path or task name."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import List, Optional

import pytest

from conftest import MAX_EPISODE_STEPS, PYTHON, REPO_ROOT, TINY_RL, bc_overrides, compose_cfg
from equi_diffpo.common.checkpoint_io import load_payload

VALID_TASKS = ("lift_d0", "pick_place_d0", "square_d0", "stack_d0")


def run_cmd(args: List[str], tmp_path, timeout: int = 120, launcher: Optional[List[str]] = None) -> subprocess.CompletedProcess:
    """Run ``python <args>`` (or ``<launcher> <args>``) from the repo root with temp files, wandb
    and threads kept local."""
    env = dict(os.environ, MUJOCO_GL="egl", WANDB_MODE="disabled", HYDRA_FULL_ERROR="1",
               OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    return subprocess.run([*(launcher or [PYTHON]), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def rl_args(checkpoint: str) -> List[str]:
    return TINY_RL + [f"pretrained_policy_path={checkpoint}"]


def test_train_bc_two_steps(tiny_dataset, tmp_path):
    run_dir = tmp_path / "bc"
    proc = run_cmd(["scripts/train.py", *bc_overrides(tiny_dataset, max_train_steps=2), f"hydra.run.dir={run_dir}"],
                   tmp_path)
    assert proc.returncode == 0, explain(proc)
    payload = load_payload(str(run_dir / "checkpoints" / "latest.ckpt"))
    assert payload["pickles"] == {"global_step": 2, "epoch": 1, "best_success_rate": -1.0}   # no rollout evaluation ran
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def test_train_rl_one_epoch(tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "rl"
    proc = run_cmd(["scripts/train_rl.py", *rl_args(tiny_checkpoint), f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, explain(proc)
    payload = load_payload(str(run_dir / "checkpoints" / "latest.ckpt"))
    assert payload["pickles"]["epoch"] == 1 and payload["pickles"]["env_steps"] > 0
    assert payload["cfg"].pretrained_policy_path == tiny_checkpoint
    assert (run_dir / "metrics.jsonl").is_file()


def test_train_rl_ctrl_c_saves_and_exits_cleanly(tiny_checkpoint, tmp_path):
    """SIGINT mid-run: latest.ckpt written, the resume hint printed, exit 130 and no traceback.
    Output goes to files, not pipes: an unread pipe would fill up and block the run."""
    run_dir = tmp_path / "rl_interrupted"
    env = dict(os.environ, MUJOCO_GL="egl", WANDB_MODE="disabled", OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([PYTHON, "scripts/train_rl.py", *rl_args(tiny_checkpoint), "rl_training.num_epochs=100000",
                                 "rl_training.checkpoint_every=100000", f"hydra.run.dir={run_dir}"],
                                cwd=REPO_ROOT, env=env, stdout=out, stderr=err)
        metrics = run_dir / "metrics.jsonl"
        deadline = time.time() + 180
        while not (metrics.exists() and metrics.read_text().strip()) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:   # fail below with the run's output, not a bare timeout
            proc.kill()
            proc.wait()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 130, f"exit {proc.returncode}\n{stdout[-2000:]}\n{stderr[-2000:]}"
    assert "interrupted: saved" in stdout and "Traceback" not in stderr, stderr[-2000:]
    assert load_payload(str(run_dir / "checkpoints" / "latest.ckpt"))["pickles"]["epoch"] >= 1


def test_train_rl_torchrun_two_ranks(tiny_checkpoint, tmp_path):
    """torchrun on CPU (gloo): both ranks collect, rank 0 alone writes; env steps count both ranks."""
    run_dir = tmp_path / "ddp"
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    proc = run_cmd(["scripts/train_rl.py", *rl_args(tiny_checkpoint), f"hydra.run.dir={run_dir}"], tmp_path,
                   launcher=torchrun)
    assert proc.returncode == 0, explain(proc)
    single_rank_steps = 2 * MAX_EPISODE_STEPS  # 2 truncated episodes per rank
    assert load_payload(str(run_dir / "checkpoints" / "latest.ckpt"))["pickles"]["env_steps"] == 2 * single_rank_steps
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("mode", [[], ["training"]], ids=["rollout", "training"])
def test_rl_rollout_smoke_test(tiny_checkpoint, tmp_path, mode):
    proc = run_cmd(["test_rl_rollout.py", *mode, *rl_args(tiny_checkpoint)], tmp_path)
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "OK", explain(proc)
    assert any(line.startswith("episodes 2 |") for line in lines), explain(proc)
    if mode:
        assert "policy_loss" in proc.stdout and "update" in proc.stdout
    # Its scratch run folder landed in our TMPDIR, not in the repo.
    assert any(p.name.startswith("test_rl_rollout_") for p in tmp_path.iterdir())


def test_rl_rollout_missing_checkpoint_exits_1(tmp_path):
    missing = str(tmp_path / "missing.ckpt")
    proc = run_cmd(["test_rl_rollout.py", *TINY_RL, f"pretrained_policy_path={missing}"], tmp_path)
    assert proc.returncode == 1, explain(proc)
    assert missing in proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout


def test_eval_policy_writes_eval_json(tiny_checkpoint, tmp_path):
    out = tmp_path / "eval"
    # The keys of the training commands work here too (issue #15: logging.mode was "Could not override").
    proc = run_cmd(["scripts/eval_policy.py", f"checkpoint={tiny_checkpoint}", "n_episodes=2", "n_envs=1",
                    "n_videos=0", "vec_mode=inline", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}",
                    "logging.mode=disabled", "training.device=cpu", "training.seed=100000"], tmp_path)
    assert proc.returncode == 0, explain(proc)
    result = json.loads((out / "eval.json").read_text())
    assert result["eval/n_episodes"] == 2 and len(result["episodes"]) == 2
    assert 0.0 <= result["eval/success_rate"] <= 1.0
    assert result["task_name"] == "lift_d0" and result["checkpoint"] == tiny_checkpoint
    assert "lift_d0: success" in proc.stdout


@pytest.mark.parametrize("config_name, device", [
    ("train_maniflow_pointcloud", True), ("train_maniflow_pointcloud_rl", True), ("eval_policy", True),
    ("generate_demos", False), ("convert_to_pointcloud", False)])
def test_common_keys_compose_for_every_entry_point(config_name, device):
    """logging.mode and training.seed everywhere, training.device where a policy runs; the tools'
    short seed=/device= spellings follow them."""
    overrides = ["logging.mode=offline", "training.seed=7"] + (["training.device=cuda:1"] if device else [])
    cfg = compose_cfg(config_name, overrides + (["checkpoint=x.ckpt"] if config_name == "eval_policy" else []))
    assert cfg.logging.mode == "offline" and cfg.training.seed == 7
    assert cfg.get("seed", 7) == 7 and (not device or cfg.training.device == cfg.get("device", "cuda:1") == "cuda:1")


def test_export_checkpoint_script(tiny_checkpoint, tmp_path):
    dst = tmp_path / "shipped" / "lift_d0_tiny.ckpt"
    proc = run_cmd(["scripts/export_checkpoint.py", tiny_checkpoint, str(dst)], tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert list(load_payload(str(dst))["state_dicts"]) == ["ema_model"]


@pytest.mark.parametrize("script", ["scripts/train.py", "scripts/train_rl.py", "test_rl_rollout.py"])
def test_unknown_task_name_lists_valid_names(script, tmp_path):
    proc = run_cmd([script, "task_name=foo", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode != 0, explain(proc)
    assert "task_name='foo'" in proc.stderr, explain(proc)
    assert all(name in proc.stderr for name in VALID_TASKS), explain(proc)
    assert not (tmp_path / "run").exists()
