"""Expected user errors: every entry point prints one line, ``error: <key or path ...>: <fix>``, and
exits 2, with no traceback, unless ``HYDRA_FULL_ERROR=1`` asks for it.

The subprocess cases run the real commands (one per kind of error and entry point); the range rules
of the config keys, many but all through the same code path, are checked in-process through the
same reporter (:func:`equi_diffpo.common.errors.report_user_errors`) the entry points use.
"""
from __future__ import annotations

import os
import subprocess
from typing import List

import pytest
import torch
from omegaconf import OmegaConf

from conftest import PYTHON, REPO_ROOT, TINY_RL, bc_overrides, compose_cfg
from equi_diffpo.common import config_checks
from equi_diffpo.common.errors import USAGE_EXIT_CODE, report_user_errors
from equi_diffpo.rl_training.rl_workspace import RLWorkspace

torch.set_num_threads(1)


def run_quiet(args: List[str], tmp_path, **extra_env: str) -> subprocess.CompletedProcess:
    """``python <args>`` from the repo root as a user would run it: no HYDRA_FULL_ERROR."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(MUJOCO_GL="egl", WANDB_MODE="disabled", OMP_NUM_THREADS="1", TMPDIR=str(tmp_path), **extra_env)
    return subprocess.run([PYTHON, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a user error (asserts there is exactly one, exit 2, no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    explain = f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert proc.returncode == USAGE_EXIT_CODE, explain
    assert len(lines) == 1 and lines[0].startswith("error: "), explain
    assert "Traceback" not in proc.stdout + proc.stderr, explain
    return lines[0]


@pytest.fixture
def corrupt_checkpoint(tmp_path) -> str:
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(os.urandom(4096))
    return str(path)


def rl(checkpoint: str, *extra: str) -> List[str]:
    return ["scripts/train_rl.py", *TINY_RL, f"pretrained_policy_path={checkpoint}", *extra]


# ----------------------------------------------------------------------------- subprocess cases
def test_rl_n_envs_zero(tiny_checkpoint, tmp_path):
    line = error_line(run_quiet(rl(tiny_checkpoint, "rl_training.rollout_collector.n_envs=0",
                                   f"hydra.run.dir={tmp_path / 'run'}"), tmp_path))
    assert line == "error: rl_training.rollout_collector.n_envs=0 is not valid: use an integer >= 1"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_rl_mini_batch_larger_than_any_batch(tiny_checkpoint, tmp_path):
    line = error_line(run_quiet(rl(tiny_checkpoint, "rl_training.ppo_trainer.mini_batch_size=64",
                                   f"hydra.run.dir={tmp_path / 'run'}"), tmp_path))
    assert line.startswith("error: rl_training.ppo_trainer.mini_batch_size=64 is larger than any batch this run "
                           "collects (4 chunk steps at most")
    assert "use rl_training.ppo_trainer.mini_batch_size<=4" in line


def test_rl_missing_checkpoint(tmp_path):
    missing = str(tmp_path / "missing.ckpt")
    line = error_line(run_quiet(rl(missing, f"hydra.run.dir={tmp_path / 'run'}"), tmp_path))
    assert line.startswith(f"error: checkpoint '{missing}' does not exist: check the path")


def test_rl_corrupt_checkpoint(corrupt_checkpoint, tmp_path):
    line = error_line(run_quiet(rl(corrupt_checkpoint, f"hydra.run.dir={tmp_path / 'run'}"), tmp_path))
    assert line.startswith(f"error: checkpoint '{corrupt_checkpoint}' could not be read")


def test_rl_checkpoint_of_another_task(tiny_checkpoint, tmp_path):
    # stack_d0's clouds carry rgb; with its point_dim the architecture check would fire first.
    line = error_line(run_quiet(rl(tiny_checkpoint, "task_name=stack_d0", "task.point_dim=3", "task.point_cloud.use_rgb=false",
                                   f"hydra.run.dir={tmp_path / 'run'}"), tmp_path))
    assert line == (f"error: checkpoint '{tiny_checkpoint}' does not match this run: "
                    "task_name: checkpoint 'lift_d0' vs requested 'stack_d0'")


def test_rl_resume_with_another_config(tiny_checkpoint, tmp_path):
    """latest.ckpt of a run with critic.hidden=16, resumed with critic.hidden=32."""
    run_dir = tmp_path / "run"
    RLWorkspace(compose_cfg("train_maniflow_pointcloud_rl", rl(tiny_checkpoint)[1:]), output_dir=str(run_dir)).save_checkpoint()
    line = error_line(run_quiet(rl(tiny_checkpoint, "critic.hidden=32", f"hydra.run.dir={run_dir}"), tmp_path))
    assert line.startswith(f"error: checkpoint '{run_dir / 'checkpoints' / 'latest.ckpt'}' does not fit this run's 'critic'")
    assert line.endswith("start over with training.resume=false or another hydra.run.dir")


def test_rl_resume_with_only_corrupt_checkpoints(tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("latest.ckpt", "epoch_0001.ckpt"):
        (run_dir / "checkpoints" / name).write_bytes(b"not a checkpoint")
    line = error_line(run_quiet(rl(tiny_checkpoint, f"hydra.run.dir={run_dir}"), tmp_path))
    assert line.startswith(f"error: no readable checkpoint in '{run_dir / 'checkpoints'}'")


@pytest.mark.parametrize("script", ["scripts/train_rl.py", "scripts/train.py", "scripts/eval_policy.py",
                                    "scripts/generate_demos.py", "scripts/convert_to_pointcloud.py", "test_rl_rollout.py"])
def test_unknown_task_name(script, tmp_path):
    line = error_line(run_quiet([script, "task_name=foo", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert line == "error: unknown task_name='foo': use one of lift_d0, pick_place_d0, square_d0, stack_d0"
    assert not (tmp_path / "run").exists()


def test_invalid_logging_mode(tiny_checkpoint, tmp_path):
    line = error_line(run_quiet(rl(tiny_checkpoint, "logging.mode=onlin", f"hydra.run.dir={tmp_path / 'run'}"), tmp_path))
    assert line == "error: logging.mode='onlin' is not valid: use one of online, offline, disabled"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(tiny_checkpoint, tmp_path):
    line = error_line(run_quiet(["scripts/eval_policy.py", f"checkpoint={tiny_checkpoint}", "training.device=cuda",
                                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert line == "error: training.device=cuda but CUDA is not available here: use training.device=cpu"


def test_eval_without_checkpoint(tmp_path):
    line = error_line(run_quiet(["scripts/eval_policy.py", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert line == "error: checkpoint is required: pass checkpoint=<value>"


def test_eval_missing_checkpoint(tmp_path):
    missing = str(tmp_path / "missing.ckpt")
    line = error_line(run_quiet(["scripts/eval_policy.py", f"checkpoint={missing}", "logging.mode=disabled",
                                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert line.startswith(f"error: checkpoint '{missing}' does not exist")


def test_eval_checkpoint_of_another_task(tiny_checkpoint, tmp_path):
    line = error_line(run_quiet(["scripts/eval_policy.py", f"checkpoint={tiny_checkpoint}", "task_name=stack_d0",
                                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert line == (f"error: checkpoint '{tiny_checkpoint}' was trained on 'lift_d0', not task_name='stack_d0': "
                    "drop task_name or pass a stack_d0 checkpoint")


def test_eval_n_envs_zero(tiny_checkpoint, tmp_path):
    line = error_line(run_quiet(["scripts/eval_policy.py", f"checkpoint={tiny_checkpoint}", "n_envs=0",
                                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert line == "error: n_envs=0 is not valid: use an integer >= 1"


def test_bc_missing_dataset(tmp_path):
    missing = str(tmp_path / "missing.zarr")
    line = error_line(run_quiet(["scripts/train.py", *bc_overrides(missing), f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert line.startswith(f"error: dataset.zarr_path: zarr dataset not found: '{missing}'")


def test_generate_zero_demos(tmp_path):
    line = error_line(run_quiet(["scripts/generate_demos.py", "n_demos=0", f"output={tmp_path / 'd.hdf5'}",
                                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert line == "error: n_demos=0 is not valid: use an integer >= 1"


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_convert_bad_input(kind, tmp_path):
    path = tmp_path / f"{kind}.hdf5"
    if kind == "corrupt":
        path.write_bytes(os.urandom(4096))
    line = error_line(run_quiet(["scripts/convert_to_pointcloud.py", f"input={path}", f"output={tmp_path / 'out.zarr'}",
                                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert line.startswith(f"error: input: ") and str(path) in line
    assert not (tmp_path / "out.zarr").exists()


def test_rl_smoke_test_bad_value(tiny_checkpoint, tmp_path):
    line = error_line(run_quiet(["test_rl_rollout.py", *rl(tiny_checkpoint, "rl_training.rollout_collector.n_episodes_per_batch=0")[1:]],
                                tmp_path))
    assert line == "error: rl_training.rollout_collector.n_episodes_per_batch=0 is not valid: use an integer >= 1"


def test_hydra_full_error_keeps_the_traceback(tiny_checkpoint, tmp_path):
    proc = run_quiet(rl(tiny_checkpoint, "rl_training.rollout_collector.n_envs=0", f"hydra.run.dir={tmp_path / 'run'}"),
                     tmp_path, HYDRA_FULL_ERROR="1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" in proc.stderr and "ConfigError: rl_training.rollout_collector.n_envs=0 is not valid" in proc.stderr


# ----------------------------------------------------------------------------- range rules, in-process
@pytest.mark.parametrize("config_name, rules", [
    ("train_maniflow_pointcloud_rl", config_checks.RL_RULES), ("train_maniflow_pointcloud", config_checks.BC_RULES),
    ("eval_policy", config_checks.EVAL_RULES), ("generate_demos", config_checks.DEMO_RULES),
    ("convert_to_pointcloud", config_checks.CONVERT_RULES)])
def test_every_rule_names_a_key_of_its_config_and_the_defaults_pass(config_name, rules):
    """A rule whose key is absent is skipped, so a renamed key must fail here rather than go unchecked."""
    cfg = compose_cfg(config_name, ["checkpoint=x.ckpt"] if config_name == "eval_policy" else [])
    assert [rule.key for rule in rules if OmegaConf.select(cfg, rule.key, default=KeyError) is KeyError] == []
    config_checks.check_config(cfg, rules)


@pytest.mark.parametrize("override, line", [
    ("rl_training.rollout_collector.n_episodes_per_batch=0",
     "rl_training.rollout_collector.n_episodes_per_batch=0 is not valid: use an integer >= 1"),
    ("rl_training.rollout_collector.max_episode_steps=0",
     "rl_training.rollout_collector.max_episode_steps=0 is not valid: use an integer >= 1 or null"),
    ("rl_training.ppo_trainer.mini_batch_size=0", "rl_training.ppo_trainer.mini_batch_size=0 is not valid: use an integer >= 1"),
    ("rl_training.ppo_trainer.ppo_epochs=0", "rl_training.ppo_trainer.ppo_epochs=0 is not valid: use an integer >= 1"),
    ("rl_training.ppo_trainer.clip_ratio=0", "rl_training.ppo_trainer.clip_ratio=0 is not valid: use a number > 0"),
    ("rl_training.ppo_trainer.gamma=1.5", "rl_training.ppo_trainer.gamma=1.5 is not valid: use a number in [0, 1]"),
    ("rl_training.ppo_trainer.policy_lr=-1e-5", "rl_training.ppo_trainer.policy_lr=-1e-05 is not valid: use a number >= 0"),
    ("rl_training.ppo_trainer.target_kl=0", "rl_training.ppo_trainer.target_kl=0 is not valid: use a number > 0 or null"),
    ("rl_training.n_val_episodes=0", "rl_training.n_val_episodes=0 is not valid: use an integer >= 1"),
    ("rl_training.num_epochs=2.5", "rl_training.num_epochs=2.5 is not valid: use an integer >= 0"),
])
def test_rl_range_rules(tiny_checkpoint, tmp_path, capsys, override, line):
    cfg = compose_cfg("train_maniflow_pointcloud_rl", rl(tiny_checkpoint, override)[1:])
    with pytest.raises(SystemExit) as exit_info, report_user_errors():
        RLWorkspace(cfg, output_dir=str(tmp_path))
    assert exit_info.value.code == USAGE_EXIT_CODE
    assert capsys.readouterr().err == f"error: {line}\n"
