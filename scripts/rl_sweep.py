"""Run one RL config for several seeds, then plot them: the unit in which RL variants are compared.

    python scripts/rl_sweep.py name=latent seeds=[0,1,2] out=data/sweeps/latent -- rl_training.num_epochs=40
    python scripts/rl_sweep.py name=chain seeds=[0,1] parallel=2 -- rl_policy=chain logging.mode=disabled

Before ``--``: the sweep's own keys. After it: hydra overrides of ``scripts/train_rl.py``, passed unchanged
to every seed, which also gets ``training.seed=<s> hydra.run.dir=<out>/seed<s>`` (and, unless the overrides
set them, ``logging.group=<name> logging.name=<name>_seed<s>``, so wandb groups the seeds).

Keys: ``name`` (group label; default: out's folder name), ``seeds`` ([0,1,2]), ``parallel`` (1: on 2 cores
one run with 2 env workers already uses both), ``out`` (data/sweeps/<name>), ``plot`` (true: at the end
``scripts/plot_runs.py`` on ``out`` writes ``<out>/curves.png`` and ``.md``), ``script`` (the entry point run
per seed; default scripts/train_rl.py).

Why: one RL run's outcome is one noisy number (README), so a variant is judged on several seeds with the
same budget. Each seed's output goes to ``<out>/seed<s>/sweep.log``; a failing seed is reported and the
others go on (exit 1 at the end). Ctrl-C sends one SIGINT to each running seed (it stops at its next safe
point and saves latest.ckpt; a second Ctrl-C forwards a second SIGINT, which stops it at once) and the sweep
exits 130. Re-running the same command resumes: seeds that finished with the same command
(``<out>/seed<s>/sweep.done``) are skipped, the others continue from their latest.ckpt. Not hydra
multirun: its basic launcher runs the jobs one after another in this process, so one failing seed or a
Ctrl-C ends the whole sweep, and there is no per-seed log.
"""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import IO, List, Optional

from equi_diffpo.common.hydra_cli import compose_config, parse_key_values, route_task_name
from plot_runs import make_report, parse_list

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_RL = REPO_ROOT / "scripts" / "train_rl.py"
DEFAULTS = {"name": "", "seeds": "[0,1,2]", "parallel": "1", "out": "", "plot": "true", "script": str(TRAIN_RL)}
SET_BY_SWEEP = ("training.seed", "hydra.run.dir")
POLL_SECONDS = 0.5
DONE_FILE, LOG_FILE = "sweep.done", "sweep.log"


@dataclass
class SweepSpec:
    name: str
    seeds: List[int]
    parallel: int
    out: pathlib.Path
    plot: bool
    script: str
    overrides: List[str]


@dataclass
class SeedRun:
    """One seed's child process and what became of it."""
    seed: int
    run_dir: pathlib.Path
    command: List[str]
    status: str = "pending"          # pending | running | done | skipped | failed | interrupted
    proc: Optional[subprocess.Popen] = None
    log: Optional[IO[str]] = None
    started: float = 0.0
    seconds: float = 0.0
    signals_sent: int = 0
    returncode: Optional[int] = field(default=None)


# ---------------------------------------------------------------- command line
def say(message: str) -> None:
    print(f"[rl_sweep] {message}", flush=True)


def parse_bool(key: str, value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise SystemExit(f"error: {key}={value!r}; expected true or false")


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def parse_spec(argv: List[str]) -> SweepSpec:
    """Sweep keys before ``--``, train_rl overrides after it: an unambiguous split, since names like
    ``name`` exist in both."""
    own, overrides = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parse_key_values(own, DEFAULTS)
    if not args["name"] and not args["out"]:
        raise SystemExit("error: give name=<label> or out=<folder>")
    taken = [o for o in overrides if override_key(o) in SET_BY_SWEEP]
    if taken:
        raise SystemExit(f"error: {' '.join(taken)}: the sweep sets {' and '.join(SET_BY_SWEEP)} itself (use seeds=, out=)")
    try:
        seeds, parallel = [int(s) for s in parse_list(args["seeds"])], int(args["parallel"])
    except ValueError:
        raise SystemExit(f"error: seeds={args['seeds']!r} parallel={args['parallel']!r}; expected integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: seeds={args['seeds']!r}; expected distinct integers like [0,1,2]")
    out = pathlib.Path(args["out"] or f"data/sweeps/{args['name']}")
    return SweepSpec(args["name"] or out.resolve().name, seeds, max(1, parallel), out,
                     parse_bool("plot", args["plot"]), args["script"], overrides)


def check_overrides(spec: SweepSpec) -> None:
    """Compose train_rl's config once here, so a typo fails in a second, not once per seed after start-up."""
    if pathlib.Path(spec.script).resolve() != TRAIN_RL:
        return
    argv = ["train_rl.py", *(o for o in spec.overrides if not override_key(o).startswith("hydra."))]
    route_task_name(argv)
    try:
        compose_config("train_maniflow_pointcloud_rl", argv[1:])
    except Exception as err:   # hydra's composition/parse errors have no common base class
        raise SystemExit(f"error: train_rl.py rejects these overrides: {err}") from None


def seed_runs(spec: SweepSpec) -> List[SeedRun]:
    """Each seed's command; ``logging.*`` first so the user's overrides win, seed and run dir last."""
    runs = []
    for seed in spec.seeds:
        run_dir = spec.out / f"seed{seed}"
        command = [sys.executable, spec.script, f"logging.group={spec.name}", f"logging.name={spec.name}_seed{seed}",
                   *spec.overrides, f"training.seed={seed}", f"hydra.run.dir={run_dir}"]
        runs.append(SeedRun(seed, run_dir, command))
    return runs


# ---------------------------------------------------------------- resume markers
def done_record(run: SeedRun) -> str:
    """What makes two invocations "the same command" (the interpreter's path does not)."""
    return json.dumps({"command": run.command[1:]})


def already_done(run: SeedRun) -> bool:
    marker = run.run_dir / DONE_FILE
    return marker.is_file() and marker.read_text().strip() == done_record(run)


# ---------------------------------------------------------------- processes
class SignalCounter:
    """Counts SIGINT/SIGTERM; the main loop forwards each one to the children. The children run in
    their own session, so a terminal's Ctrl-C reaches them once (from here), not twice, which
    InterruptGuard would take as "stop at once"."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: Optional[FrameType]) -> None:
        self.count += 1
        if self.count == 1:
            say("interrupt: asking the running seeds to save and stop (Ctrl-C again to stop them at once)")

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def child_env(parallel: int) -> dict:
    """The children's environment. Side by side, each run's torch gets one thread unless the user set
    OMP_NUM_THREADS: two runs' 2-thread PPO updates plus the other run's env workers oversubscribe the cores,
    and torch's OpenMP threads then spin-wait in the kernel (measured on 2 cores: 100% system time, one
    fpo update 7 s -> 210 s)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if parallel > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start(run: SeedRun, parallel: int) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / DONE_FILE).unlink(missing_ok=True)
    run.log = open(run.run_dir / LOG_FILE, "a")
    run.log.write(f"\n=== {datetime.now():%Y-%m-%d %H:%M:%S} rl_sweep seed {run.seed}: {shlex.join(run.command)}\n")
    run.log.flush()
    run.proc = subprocess.Popen(run.command, stdout=run.log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=child_env(parallel))
    run.started, run.status = time.time(), "running"
    say(f"seed {run.seed}: started (pid {run.proc.pid}), log {run.run_dir / LOG_FILE}")


def log_tail(run: SeedRun, n_lines: int = 8) -> str:
    lines = (run.run_dir / LOG_FILE).read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in lines[-n_lines:])


def finish(run: SeedRun, interrupted: bool) -> None:
    """Record the exit; a clean exit leaves the resume marker."""
    assert run.proc is not None and run.log is not None
    run.returncode, run.seconds = run.proc.returncode, time.time() - run.started
    run.log.close()
    if run.returncode == 0:
        run.status = "done"
        (run.run_dir / DONE_FILE).write_text(done_record(run) + "\n")
    else:
        run.status = "interrupted" if interrupted else "failed"
    say(f"seed {run.seed}: {run.status} (exit {run.returncode}) after {run.seconds / 60:.1f} min")
    if run.status == "failed":
        say(f"seed {run.seed}: last lines of {run.run_dir / LOG_FILE}:\n{log_tail(run)}")


def run_children(runs: List[SeedRun], parallel: int, signals: SignalCounter) -> None:
    """Up to ``parallel`` children at a time until all ran or an interrupt stopped the launching."""
    pending = [r for r in runs if r.status == "pending"]
    running: List[SeedRun] = []
    while running or (pending and not signals.count):
        for run in running:
            while run.signals_sent < signals.count:
                run.proc.send_signal(signal.SIGINT)
                run.signals_sent += 1
        for run in [r for r in running if r.proc.poll() is not None]:
            finish(run, interrupted=signals.count > 0)
            running.remove(run)
        while pending and len(running) < parallel and not signals.count:
            running.append(pending.pop(0))
            start(running[-1], parallel)
        time.sleep(POLL_SECONDS)


# ---------------------------------------------------------------- summary
def summary(runs: List[SeedRun]) -> str:
    return "\n".join(f"  seed {r.seed}: {'not started' if r.status == 'pending' else r.status}" + (f" (exit {r.returncode})" if r.returncode else "")
                     + (f", {r.seconds / 60:.1f} min" if r.seconds else "") for r in runs)


def plot(spec: SweepSpec) -> bool:
    """The curves of whatever the seeds logged so far; False if that failed."""
    if not any((spec.out / f"seed{s}" / "metrics.jsonl").is_file() for s in spec.seeds):
        say("no metrics.jsonl yet: nothing to plot")
        return True
    png = spec.out / "curves.png"
    try:
        print(make_report([str(spec.out)], png, [spec.name]))
    except (Exception, SystemExit) as err:
        say(f"plot failed: {err}")
        return False
    say(f"wrote {png} and {png.with_suffix('.md')}")
    return True


def exit_code(runs: List[SeedRun], interrupted: bool, plotted: bool) -> int:
    if interrupted:
        return 130
    return 1 if any(r.status == "failed" for r in runs) or not plotted else 0


def main(argv: List[str]) -> int:
    spec = parse_spec(argv)
    check_overrides(spec)
    runs = seed_runs(spec)
    for run in runs:
        if already_done(run):
            run.status = "skipped"
            say(f"seed {run.seed}: already finished with this command ({run.run_dir / DONE_FILE}); skipped")
    signals = SignalCounter()
    signals.install()
    run_children(runs, spec.parallel, signals)
    say(f"{spec.name}: {len(runs)} seeds\n{summary(runs)}")
    plotted = plot(spec) if spec.plot else True
    return exit_code(runs, signals.count > 0, plotted)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
