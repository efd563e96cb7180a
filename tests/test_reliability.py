"""What a long RL run relies on: ranks that stay identical under torchrun, a SIGKILL that costs at
most the epoch it hit, and a damaged latest.ckpt that costs at most the epochs since the newest
readable epoch_XXXX.ckpt. The end-to-end runs go through ``tests/rl_driver.py`` (train_rl.py with
hooks that mark the rollout/update phases and dump every rank's weights)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from typing import Dict, List, Optional

import pytest
import torch
from omegaconf import OmegaConf

from conftest import PYTHON, REPO_ROOT, TINY_RL, read_metrics
from equi_diffpo.common.checkpoint_io import CheckpointError, load_payload
from equi_diffpo.workspace.base_workspace import BaseWorkspace, CheckpointFallbackWarning

torch.set_num_threads(1)
DRIVER = str(REPO_ROOT / "tests" / "rl_driver.py")


def driver_env(tmp_path, **hooks: str) -> Dict[str, str]:
    return dict(os.environ, MUJOCO_GL="egl", WANDB_MODE="disabled", OMP_NUM_THREADS="1", TMPDIR=str(tmp_path), **hooks)


def rl_args(checkpoint: str, run_dir, *extra: str) -> List[str]:
    return [*TINY_RL, f"pretrained_policy_path={checkpoint}", f"hydra.run.dir={run_dir}", *extra]


# ----------------------------------------------------------------------------- torchrun
def test_torchrun_ranks_hold_identical_weights_after_an_epoch(tiny_checkpoint, tmp_path):
    """Gradients are all-reduced before clipping and every rank steps the same optimizer state, so
    after a PPO epoch on different rollouts (seeded by rank) the ranks' weights must agree bit for bit."""
    run_dir, dump = tmp_path / "ddp", tmp_path / "dump"
    dump.mkdir()
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541"]
    proc = subprocess.run([*torchrun, DRIVER, *rl_args(tiny_checkpoint, run_dir)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600, env=driver_env(tmp_path, RL_DRIVER_DUMP=str(dump)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(dump / f"rank{r}.pt") for r in (0, 1))
    for module in ("rl_policy", "critic"):
        assert rank0[module].keys() == rank1[module].keys()
        for name, tensor in rank0[module].items():
            assert torch.equal(tensor, rank1[module][name]), f"{module}.{name} differs between ranks"
    # The epoch really updated the policy (not two copies of the broadcast start) and rank 0 saved what it holds.
    assert read_metrics(run_dir)[-1]["perf/ppo_minibatches"] > 0
    saved = load_payload(str(run_dir / "checkpoints" / "latest.ckpt"))["state_dicts"]["rl_policy"]
    assert all(torch.equal(saved[name], tensor) for name, tensor in rank0["rl_policy"].items())


# ----------------------------------------------------------------------------- SIGKILL
def read_phases(path) -> List[List[str]]:
    """``[phase, start|end, epoch, time]`` rows written by the driver."""
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def phase_durations(rows: List[List[str]], phase: str) -> List[float]:
    """Durations of the finished ``phase`` runs of epochs >= 1 (epoch 0 compiles and warms up)."""
    durations, started = [], None
    for name, what, epoch, stamp in rows:
        if name == phase and what == "start":
            started = float(stamp)
        elif name == phase and what == "end" and started is not None and int(epoch) >= 1:
            durations.append(float(stamp) - started)
    return durations


def kill_inside(proc: subprocess.Popen, phases_path, phase: str, rng: random.Random, timeout: float = 600) -> Optional[int]:
    """SIGKILL ``proc`` at a random time inside ``phase`` of an epoch >= 2 (epochs 0 and 1 are saved
    and timed). Returns that epoch, or None when the phase ended before the kill landed. The delay
    is drawn below the shortest earlier duration of the phase."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        rows = read_phases(phases_path)
        if rows and rows[-1][:2] == [phase, "start"] and int(rows[-1][2]) >= 2:
            time.sleep(rng.uniform(0.05, 0.6) * min(phase_durations(rows, phase)))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            landed = read_phases(phases_path)[-1]
            return int(landed[2]) if landed[:2] == [phase, "start"] else None
        time.sleep(0.02)
    raise AssertionError(f"run never reached the {phase} of epoch 2 (exit {proc.poll()})")


@pytest.mark.parametrize("phase", ["rollout", "update"])
def test_sigkill_mid_epoch_loses_at_most_that_epoch(tiny_checkpoint, tmp_path, phase):
    run_dir, phases = tmp_path / "run", tmp_path / "phases.txt"
    rng = random.Random()
    env = driver_env(tmp_path, RL_DRIVER_PHASES=str(phases))
    # ppo_epochs=20: an update long enough (~0.5 s here) to be hit at a random time inside it.
    args = rl_args(tiny_checkpoint, run_dir, "rl_training.ppo_trainer.ppo_epochs=20")
    killed_in = None
    for _ in range(4):   # a kill drawn too late lands after the phase: run (resume) again and retry
        with open(tmp_path / "killed.log", "a") as log:
            proc = subprocess.Popen([PYTHON, DRIVER, *args, "rl_training.num_epochs=1000"], cwd=REPO_ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
            killed_in = kill_inside(proc, phases, phase, rng)
        if killed_in is not None:
            break
    assert killed_in is not None, f"no kill landed inside the {phase} in 4 tries"
    saved = load_payload(str(run_dir / "checkpoints" / "latest.ckpt"))["pickles"]
    assert saved["epoch"] == killed_in, "latest.ckpt must hold every epoch before the one the kill hit"

    proc = subprocess.run([PYTHON, DRIVER, *args, f"rl_training.num_epochs={killed_in + 1}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'latest.ckpt'} at epoch {killed_in}" in proc.stdout
    final = load_payload(str(run_dir / "checkpoints" / "latest.ckpt"))["pickles"]
    assert final["epoch"] == killed_in + 1 and final["env_steps"] > saved["env_steps"]
    # No epoch is missing from the log: the killed one was logged by the run that redid it. (A kill between
    # an epoch's log line and its checkpoint, a few ms, would log that epoch twice rather than lose it.)
    assert sorted({row["charts/epoch"] for row in read_metrics(run_dir)}) == list(range(killed_in + 1))


# ----------------------------------------------------------------------------- damaged checkpoints
class TinyWorkspace(BaseWorkspace):
    """The checkpoint machinery alone: one module, the base counters."""

    def __init__(self, output_dir: str):
        super().__init__(OmegaConf.create({"training": {"resume": True}}), output_dir)
        self.model = torch.nn.Linear(3, 2)


def saved_run(tmp_path, epochs: int) -> Dict[int, Dict[str, torch.Tensor]]:
    """A run dir with epoch_0001..epoch_<epochs> and latest = the last; returns each epoch's weights."""
    workspace, weights = TinyWorkspace(str(tmp_path)), {}
    for epoch in range(1, epochs + 1):
        torch.nn.init.normal_(workspace.model.weight)
        workspace.epoch = epoch
        workspace.save_checkpoint()
        workspace.save_checkpoint(f"epoch_{epoch:04d}")
        weights[epoch] = {k: v.clone() for k, v in workspace.model.state_dict().items()}
    return weights


def damage(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])   # what a partial copy or a disk error leaves


@pytest.mark.parametrize("damaged, expected", [(["latest"], 3), (["latest", "epoch_0003"], 2)])
def test_damaged_latest_falls_back_to_newest_good_epoch_checkpoint(tmp_path, damaged, expected):
    weights = saved_run(tmp_path, epochs=3)
    for name in damaged:
        damage(tmp_path / "checkpoints" / f"{name}.ckpt")
    resumed = TinyWorkspace(str(tmp_path))
    with pytest.warns(CheckpointFallbackWarning, match=r"latest\.ckpt' could not be read") as record:
        path = resumed.resume()
    assert path == str(tmp_path / "checkpoints" / f"epoch_{expected:04d}.ckpt")
    assert f"resuming from {path} instead" in str(record[0].message)
    assert resumed.epoch == expected
    assert all(torch.equal(v, weights[expected][k]) for k, v in resumed.model.state_dict().items())


def test_intact_latest_is_used_without_warning(tmp_path, recwarn):
    saved_run(tmp_path, epochs=2)
    os.remove(tmp_path / "checkpoints" / "epoch_0002.ckpt")   # latest is newer than every epoch file
    resumed = TinyWorkspace(str(tmp_path))
    assert resumed.resume() == str(tmp_path / "checkpoints" / "latest.ckpt") and resumed.epoch == 2
    assert not [w for w in recwarn if issubclass(w.category, CheckpointFallbackWarning)]


def test_no_readable_checkpoint_is_an_error_and_an_empty_run_dir_a_fresh_start(tmp_path):
    assert TinyWorkspace(str(tmp_path / "fresh")).resume() is None
    saved_run(tmp_path, epochs=1)
    for path in (tmp_path / "checkpoints").iterdir():
        damage(path)
    with pytest.raises(CheckpointError, match="no readable checkpoint in .*training.resume=false"):
        TinyWorkspace(str(tmp_path)).resume()


def test_rl_run_with_damaged_latest_resumes_from_epoch_file(tiny_checkpoint, tmp_path):
    """The same through the RL workspace: its files, counters and weights."""
    from conftest import compose_cfg
    from equi_diffpo.rl_training.rl_workspace import RLWorkspace

    cfg = compose_cfg("train_maniflow_pointcloud_rl", [*TINY_RL, f"pretrained_policy_path={tiny_checkpoint}"])
    first = RLWorkspace(cfg, output_dir=str(tmp_path))
    first.epoch, first.env_steps = 1, 32
    first.save_checkpoint("epoch_0001")
    shutil.copy(tmp_path / "checkpoints" / "epoch_0001.ckpt", tmp_path / "checkpoints" / "latest.ckpt")
    damage(tmp_path / "checkpoints" / "latest.ckpt")
    resumed = RLWorkspace(cfg, output_dir=str(tmp_path))
    with pytest.warns(CheckpointFallbackWarning):
        assert resumed.resume() == str(tmp_path / "checkpoints" / "epoch_0001.ckpt")
    assert (resumed.epoch, resumed.env_steps) == (1, 32)
    for name, tensor in first.rl_policy.state_dict().items():
        assert torch.equal(tensor, resumed.rl_policy.state_dict()[name]), name
