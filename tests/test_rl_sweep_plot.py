"""Seed sweeps and their curves: ``scripts/plot_runs.py`` numbers on synthetic logs (alignment by
epoch, resume duplicates, crossings, mean ± s.e.), and ``scripts/rl_sweep.py`` with a fake child
(failing seed, resume, Ctrl-C forwarding, override checks) and once with the real train_rl."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

from conftest import PYTHON, REPO_ROOT, TINY_RL
from equi_diffpo.common.checkpoint_io import load_payload

SCRIPTS = REPO_ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))   # as when run as a script (rl_sweep.py imports it the same way)
import plot_runs  # noqa: E402
import rl_sweep  # noqa: E402

ROLLOUT_SECONDS, UPDATE_SECONDS = 30.0, 6.0


def workspace_rows(successes: Sequence[float], steps_per_epoch: int, val_every: int = 2) -> List[Dict[str, float]]:
    """Rows as RLWorkspace logs them: validation before RL at step 0, then one row per epoch with
    ``charts/epoch`` counted from 0 and validation every ``val_every`` epochs."""
    rows = [{"step": 0, "eval/success_rate": successes[0], "eval/mean_return": 1.0, "eval/n_episodes": 20.0}]
    for epoch in range(val_every * (len(successes) - 1)):
        steps = steps_per_epoch * (epoch + 1)
        row = {"step": steps, "charts/epoch": epoch, "charts/episodic_return": float(epoch), "perf/env_steps": steps,
               "perf/rollout_seconds": ROLLOUT_SECONDS, "perf/update_seconds": UPDATE_SECONDS}
        if (epoch + 1) % val_every == 0:
            row.update({"eval/success_rate": successes[(epoch + 1) // val_every], "eval/n_episodes": 20.0})
        rows.append(row)
    return rows


def write_rows(run_dir: Path, rows: List[Dict[str, float]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def two_groups(tmp_path) -> List[Path]:
    """Group A: 2 seeds, 4 epochs, validation at epochs 0/2/4, steps per epoch 1000 and 1010.
    Group B: seed b0 the same length; b1 still at epoch 2 and resumed twice: its start row and epoch 1
    were logged again (the later rows win)."""
    a, b = tmp_path / "A", tmp_path / "B"
    write_rows(a / "seed0", workspace_rows([0.2, 0.5, 0.8], 1000))
    write_rows(a / "seed1", workspace_rows([0.3, 0.4, 0.95], 1010))
    write_rows(b / "seed0", workspace_rows([0.25, 0.25, 0.25], 1000))
    b1 = workspace_rows([0.35, 0.6], 990)
    stale_start, stale_epoch = dict(b1[0], **{"eval/success_rate": 0.9}), dict(b1[1], **{"charts/episodic_return": 99.0})
    write_rows(b / "seed1", [stale_start, b1[0], stale_epoch, *b1[1:]])
    return [a, b]


def test_plot_runs_numbers(two_groups, tmp_path, capsys):
    out = tmp_path / "docs" / "curves.png"
    plot_runs.main([f"runs=[{two_groups[0]},{two_groups[1]}]", f"out={out}", "labels=[latent,residual]"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    table = out.with_suffix(".md").read_text()
    assert table in capsys.readouterr().out

    groups = plot_runs.load_groups([str(p) for p in two_groups], ["latent", "residual"])
    a, b = (plot_runs.summarize_group(g) for g in groups)
    # A: mean at the seeds' mean env steps of each shared validation.
    assert (a.n_seeds, a.final_epoch, a.final_steps, a.val_episodes) == (2, 4, 4020, 20)
    assert a.start_mean == pytest.approx(0.25) and a.final_mean == pytest.approx(0.875)
    assert a.final_se == pytest.approx(0.075)   # std([0.8, 0.95], ddof=1) / sqrt(2)
    assert (a.best_mean, a.best_steps) == (pytest.approx(0.875), 4020)
    assert a.wall_mean == pytest.approx(4 * (ROLLOUT_SECONDS + UPDATE_SECONDS))
    # B: compared at the last validation both seeds reached (epoch 2); resume duplicates: last row wins.
    assert (b.final_epoch, b.final_steps) == (2, 1990)
    assert b.start_mean == pytest.approx(0.30) and b.final_mean == pytest.approx(0.425)
    assert groups[1].runs[1].returns[2] == (1980.0, 1.0) and groups[1].runs[1].returns[1] == (990.0, 0.0)

    seeds = {(s.group, s.label): s for g in groups for s in [plot_runs.summarize_seed(g.label, r) for r in g.runs]}
    assert seeds["latent", "seed0"].crossings == {0.5: 2000, 0.75: 4000, 0.9: None}
    assert seeds["latent", "seed1"].crossings == {0.5: 4040, 0.75: 4040, 0.9: 4040}
    assert seeds["residual", "seed1"].crossings == {0.5: 1980, 0.75: None, 0.9: None}
    assert seeds["residual", "seed1"].wall_seconds == pytest.approx(2 * (ROLLOUT_SECONDS + UPDATE_SECONDS))

    assert "| latent | 2 | 20 | 0.250 | 0.875 ± 0.075 | 4 | 4020 | 0.875 (4020) | 2.4 min |" in table
    assert "| latent | seed0 | 4 | 0.200 | 0.800 | 0.800 | 4000 | 2000 | 4000 | — | 2.4 min |" in table
    assert "| residual | seed1 | 2 | 0.350 | 0.600 | 0.600 | 1980 | 1980 | — | — | 1.2 min |" in table


def test_plot_runs_accepts_a_run_dir_and_rejects_empty_ones(two_groups, tmp_path):
    (group,) = plot_runs.load_groups([str(two_groups[0] / "seed1")])
    assert group.label == "seed1" and len(group.runs) == 1
    assert plot_runs.summarize_group(group).final_se is None
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        plot_runs.load_groups([str(tmp_path / "empty")])


# ---------------------------------------------------------------- rl_sweep with a fake child
FAKE_CHILD = """
import json, os, signal, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:])
seed, run_dir = int(args["training.seed"]), args["hydra.run.dir"]
print("fake child:", " ".join(sys.argv[1:]), flush=True)
if str(seed) in args.get("+fail_seeds", ""):
    sys.exit(f"seed {seed}: simulated crash")
if args.get("+wait") == "true":
    interrupts = []
    signal.signal(signal.SIGINT, lambda *_: interrupts.append(1))
    print("waiting", flush=True)
    while not interrupts:
        time.sleep(0.05)
    time.sleep(1.0)   # a second SIGINT (from the terminal and from the sweep) would arrive here
    print(f"got {len(interrupts)} SIGINT; saved", flush=True)
    sys.exit(130)
os.makedirs(run_dir, exist_ok=True)
with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": 0, "eval/success_rate": 0.1}) + "\\n")
    f.write(json.dumps({"step": 100 + seed, "charts/epoch": 0, "charts/episodic_return": 1.0,
                        "eval/success_rate": 0.5 + 0.1 * seed}) + "\\n")
"""


def sweep_command(tmp_path: Path, *args: str) -> List[str]:
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_CHILD)
    return [PYTHON, str(SCRIPTS / "rl_sweep.py"), f"script={fake}", f"out={tmp_path / 'sweep'}", *args]


def run_sweep(cmd: List[str], tmp_path: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", TMPDIR=str(tmp_path), MUJOCO_GL="egl")
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def test_side_by_side_seeds_get_one_torch_thread_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert rl_sweep.child_env(2)["OMP_NUM_THREADS"] == "1" and "OMP_NUM_THREADS" not in rl_sweep.child_env(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert rl_sweep.child_env(2)["OMP_NUM_THREADS"] == "3"


def test_sweep_reports_a_failing_seed_plots_the_rest_and_resumes(tmp_path):
    cmd = sweep_command(tmp_path, "name=fake", "seeds=[0,1,2]", "parallel=2", "--", "+fail_seeds=[1]", "extra=x")
    proc = run_sweep(cmd, tmp_path)
    assert proc.returncode == 1, explain(proc)
    assert "seed 1: failed (exit 1)" in proc.stdout and "seed 1: simulated crash" in proc.stdout, explain(proc)
    assert "seed 0: done" in proc.stdout and "seed 2: done" in proc.stdout, explain(proc)
    sweep = tmp_path / "sweep"
    log = (sweep / "seed0" / "sweep.log").read_text()
    for arg in ("logging.group=fake", "logging.name=fake_seed0", "extra=x", "training.seed=0",
                f"hydra.run.dir={sweep / 'seed0'}"):
        assert arg in log, log
    assert "simulated crash" in (sweep / "seed1" / "sweep.log").read_text()
    table = (sweep / "curves.md").read_text()
    assert (sweep / "curves.png").is_file() and "| fake | 2 |" in table and "| fake | seed2 | 1 | 0.100 | 0.700 |" in table

    again = run_sweep(cmd, tmp_path)
    assert again.returncode == 1, explain(again)
    assert "seed 0: already finished" in again.stdout and "seed 2: already finished" in again.stdout, explain(again)
    assert "seed 1: failed" in again.stdout, explain(again)
    assert len((sweep / "seed0" / "metrics.jsonl").read_text().splitlines()) == 2   # not run twice


def test_sweep_ctrl_c_forwards_one_sigint_and_exits_130(tmp_path):
    cmd = sweep_command(tmp_path, "name=fake", "seeds=[0,1,2]", "parallel=2", "--", "+wait=true")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    with open(tmp_path / "stdout.txt", "w") as out:
        # Its own process group, as a shell gives a foreground job: the group's Ctrl-C hits the sweep only.
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        logs = [tmp_path / "sweep" / f"seed{s}" / "sweep.log" for s in (0, 1)]
        deadline = time.time() + 30
        while not all(p.is_file() and "waiting" in p.read_text() for p in logs) and time.time() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            proc.kill()
    stdout = (tmp_path / "stdout.txt").read_text()
    assert proc.returncode == 130, stdout
    for log in logs:
        assert "got 1 SIGINT; saved" in log.read_text(), log.read_text()
    assert "seed 0: interrupted (exit 130)" in stdout and "seed 2: not started" in stdout, stdout
    assert not (tmp_path / "sweep" / "seed2").exists()


@pytest.mark.parametrize("args, message", [
    (["name=x", "--", "training.seed=3"], "sets training.seed"),
    (["name=x", "seeds=[0,0]"], "distinct integers"),
    (["name=x", "seed=[0]"], "bad argument"),
    (["name=x", "--", "rl_training.no_such_key=1"], "train_rl.py rejects"),
])
def test_sweep_rejects_bad_arguments_before_starting(tmp_path, args, message):
    proc = run_sweep([PYTHON, str(SCRIPTS / "rl_sweep.py"), f"out={tmp_path / 'sweep'}", *args], tmp_path)
    assert proc.returncode != 0 and message in proc.stderr, explain(proc)
    assert not (tmp_path / "sweep").exists()


def test_sweep_with_real_train_rl(tiny_checkpoint, tmp_path):
    """One seed of the tiny RL run through the sweep: the real metrics reach the table."""
    overrides = [*TINY_RL, f"pretrained_policy_path={tiny_checkpoint}", "rl_training.val_every=1",
                 "rl_training.n_val_episodes=1"]
    proc = run_sweep([PYTHON, str(SCRIPTS / "rl_sweep.py"), "name=tiny", "seeds=[3]", f"out={tmp_path / 'sweep'}",
                      "--", *overrides], tmp_path, timeout=120)
    assert proc.returncode == 0, explain(proc)
    run_dir = tmp_path / "sweep" / "seed3"
    payload = load_payload(str(run_dir / "checkpoints" / "latest.ckpt"))
    assert payload["cfg"].training.seed == 3
    (group,) = plot_runs.load_groups([str(tmp_path / "sweep")])
    summary = plot_runs.summarize_group(group)
    assert (summary.n_seeds, summary.final_epoch, summary.final_steps) == (1, 1, payload["pickles"]["env_steps"])
    assert summary.wall_mean is not None and summary.wall_mean > 0
    assert (tmp_path / "sweep" / "curves.png").is_file() and "| tiny | 1 | 1 |" in proc.stdout
