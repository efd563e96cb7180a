"""Learning curves and a results table for RL runs, several seeds per variant.

    python scripts/plot_runs.py runs=[data/sweeps/latent,data/sweeps/residual] out=docs/curves/lift_d0.png
    python scripts/plot_runs.py runs=[data/outputs/2025-06-01/12-00-00_x_lift_d0] labels=[baseline]

Why: one RL run's success rate on 20 validation episodes is a noisy number, so comparing variants
honestly needs several seeds, their spread and a shared x-axis (env steps: the cost that matters on
CPU). Each entry of ``runs`` is one group (one variant): a sweep folder of ``scripts/rl_sweep.py``
(every sub-folder holding a ``metrics.jsonl`` is one seed) or a single run folder. Labels default to
the folders' names. Writes ``out`` (PNG, two panels: validation success and training episodic return
vs env steps; a thin line per seed, a thick mean per group, a dashed line at the group's BC start)
and the tables next to it (same stem, ``.md``; also printed). Keys: runs (required), out (default
``<first run>/curves.png``), labels, title.
"""
from __future__ import annotations

import json
import math
import pathlib
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from equi_diffpo.common.hydra_cli import parse_key_values

SUCCESS_KEY = "eval/success_rate"
RETURN_KEY = "charts/episodic_return"
THRESHOLDS = (0.5, 0.75, 0.9)
DEFAULTS = {"runs": "", "out": "", "labels": "", "title": ""}

# completed RL epochs -> (env steps, value)
Series = Dict[int, Tuple[float, float]]


@dataclass
class Run:
    """One seed's curves, keyed by completed RL epochs (the index seeds share)."""
    label: str
    success: Series
    returns: Series
    wall_seconds: Optional[float]
    val_episodes: Optional[float]


@dataclass
class Group:
    label: str
    runs: List[Run]


@dataclass
class SeedSummary:
    group: str
    label: str
    last_epoch: Optional[int]
    start: Optional[float]
    final: Optional[float]
    best: Optional[float]
    final_steps: Optional[float]
    crossings: Dict[float, Optional[float]]
    wall_seconds: Optional[float]


@dataclass
class GroupSummary:
    label: str
    n_seeds: int
    start_mean: Optional[float]
    final_epoch: Optional[int]
    final_mean: Optional[float]
    final_se: Optional[float]
    final_steps: Optional[float]
    best_mean: Optional[float]
    best_steps: Optional[float]
    val_episodes: Optional[float]
    wall_mean: Optional[float]


# ---------------------------------------------------------------- reading
def parse_list(value: str) -> List[str]:
    """``[a,b]`` or ``a,b`` or ``a`` -> ``["a", "b"]``: hydra's list spelling, without hydra's
    type conversion (a folder named ``1`` stays a string)."""
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [item.strip().strip("'\"") for item in value.split(",") if item.strip()]


def natural_key(path: pathlib.Path) -> List[object]:
    """seed2 before seed10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def run_dirs(path: pathlib.Path) -> List[pathlib.Path]:
    """A run folder is its own group of one; otherwise every sub-folder with a ``metrics.jsonl``."""
    if (path / "metrics.jsonl").is_file():
        return [path]
    found = sorted((p for p in path.glob("*") if (p / "metrics.jsonl").is_file()), key=natural_key)
    if not found:
        raise SystemExit(f"error: no metrics.jsonl in {path} or its sub-folders")
    return found


def row_epoch(row: Dict[str, float]) -> int:
    """Completed RL epochs when ``row`` was logged: training rows carry ``charts/epoch`` (counted
    from 0 before the epoch ran); the validation row before RL carries none."""
    epoch = row.get("charts/epoch")
    return 0 if epoch is None else int(epoch) + 1


def rows_by_epoch(path: pathlib.Path) -> Dict[int, Dict[str, float]]:
    """One row per epoch, the last one logged: a resumed run appends to the same file and may log
    an epoch again (the validation before RL after an interrupt in epoch 1, or epochs after the
    last saved checkpoint after a crash)."""
    rows: Dict[int, Dict[str, float]] = {}
    with open(path / "metrics.jsonl") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[row_epoch(row)] = row
    return dict(sorted(rows.items()))


def series(rows: Dict[int, Dict[str, float]], key: str) -> Series:
    return {epoch: (float(row["step"]), float(row[key])) for epoch, row in rows.items() if row.get(key) is not None}


def wall_seconds(rows: Dict[int, Dict[str, float]]) -> Optional[float]:
    """Rollout plus PPO update time (validation and start-up excluded); None for logs without it."""
    parts = [row.get(k) for row in rows.values() for k in ("perf/rollout_seconds", "perf/update_seconds")]
    parts = [p for p in parts if p is not None]
    return float(sum(parts)) if parts else None


def load_run(path: pathlib.Path) -> Run:
    rows = rows_by_epoch(path)
    episodes = [row["eval/n_episodes"] for row in rows.values() if row.get("eval/n_episodes") is not None]
    return Run(path.name, series(rows, SUCCESS_KEY), series(rows, RETURN_KEY), wall_seconds(rows),
               episodes[-1] if episodes else None)


def load_groups(paths: Sequence[str], labels: Sequence[str] = ()) -> List[Group]:
    if labels and len(labels) != len(paths):
        raise SystemExit(f"error: {len(labels)} labels for {len(paths)} runs")
    dirs = [pathlib.Path(p) for p in paths]
    return [Group(labels[i] if labels else d.resolve().name, [load_run(r) for r in run_dirs(d)])
            for i, d in enumerate(dirs)]


# ---------------------------------------------------------------- numbers
def shared_curve(curves: Sequence[Series]) -> Tuple[List[int], np.ndarray, np.ndarray]:
    """Epochs every seed reached, the seeds' mean env steps there and their values ``(epochs, seeds)``.
    Seeds validate at the same epochs but their episodes end at different steps, so the env-step
    counts differ slightly: aligning by epoch and plotting at the mean step keeps every seed in
    every mean point."""
    if not curves:
        return [], np.zeros(0), np.zeros((0, 0))
    epochs = sorted(set.intersection(*(set(c) for c in curves)))
    steps = np.array([np.mean([c[e][0] for c in curves]) for e in epochs])
    values = np.array([[c[e][1] for c in curves] for e in epochs]).reshape(len(epochs), len(curves))
    return epochs, steps, values


def first_crossing(curve: Series, threshold: float) -> Optional[float]:
    """Env steps of the first validation with success >= ``threshold`` (None if never)."""
    return next((step for _, (step, value) in sorted(curve.items()) if value >= threshold), None)


def standard_error(values: np.ndarray) -> Optional[float]:
    """Over seeds (ddof=1); undefined for one seed."""
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarize_seed(group: str, run: Run) -> SeedSummary:
    curve = run.success
    last = max(curve) if curve else None
    return SeedSummary(group, run.label, last, curve[0][1] if 0 in curve else None,
                       curve[last][1] if curve else None, max(v for _, v in curve.values()) if curve else None,
                       curve[last][0] if curve else None, {t: first_crossing(curve, t) for t in THRESHOLDS},
                       run.wall_seconds)


def summarize_group(group: Group) -> GroupSummary:
    """Final = the last validation every seed reached, so groups with a still-running or failed seed
    are not compared at different epochs; best = best mean over those shared validations."""
    epochs, steps, values = shared_curve([r.success for r in group.runs])
    means = values.mean(axis=1) if len(epochs) else np.zeros(0)
    best = int(np.argmax(means)) if len(epochs) else None
    return GroupSummary(
        group.label, len(group.runs), mean_or_none([r.success[0][1] for r in group.runs if 0 in r.success]),
        epochs[-1] if epochs else None, float(means[-1]) if epochs else None,
        standard_error(values[-1]) if epochs else None, float(steps[-1]) if epochs else None,
        float(means[best]) if best is not None else None, float(steps[best]) if best is not None else None,
        mean_or_none([r.val_episodes for r in group.runs]), mean_or_none([r.wall_seconds for r in group.runs]))


# ---------------------------------------------------------------- table
def fmt(value: Optional[float], spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def fmt_minutes(seconds: Optional[float]) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def group_rows(summaries: Sequence[GroupSummary]) -> List[List[str]]:
    rows = []
    for s in summaries:
        final = fmt(s.final_mean) + ("" if s.final_se is None else f" ± {s.final_se:.3f}")
        best = f"{fmt(s.best_mean)} ({fmt(s.best_steps, '.0f')})"
        rows.append([s.label, str(s.n_seeds), fmt(s.val_episodes, ".0f"), fmt(s.start_mean), final,
                     fmt(s.final_epoch, "d"), fmt(s.final_steps, ".0f"), best, fmt_minutes(s.wall_mean)])
    return rows


def seed_rows(summaries: Sequence[SeedSummary]) -> List[List[str]]:
    return [[s.group, s.label, fmt(s.last_epoch, "d"), fmt(s.start), fmt(s.final), fmt(s.best),
             fmt(s.final_steps, ".0f"), *(fmt(s.crossings[t], ".0f") for t in THRESHOLDS), fmt_minutes(s.wall_seconds)]
            for s in summaries]


def report_markdown(groups: Sequence[Group], title: str) -> str:
    group_summaries = [summarize_group(g) for g in groups]
    seed_summaries = [summarize_seed(g.label, r) for g in groups for r in g.runs]
    lines = [f"## {title}", "", "Validation success (`eval/success_rate`, deterministic policy) per group:", ""]
    lines += markdown_table(["group", "seeds", "val episodes", "start (BC)", "final ± s.e.", "final epoch",
                             "env steps", "best mean (env steps)", "train time / seed"], group_rows(group_summaries))
    lines += ["", "Per seed:", ""]
    lines += markdown_table(["group", "run", "epochs", "start", "final", "best", "env steps",
                             *(f"≥{t:g} at env steps" for t in THRESHOLDS), "train time"], seed_rows(seed_summaries))
    lines += ["", "final: a group's last validation that every seed reached (mean over seeds ± standard error, "
                  "std with ddof=1 / sqrt(n)); per seed, its own last validation. ≥x: env steps of the first "
                  "validation with success ≥ x (— never). Train time: sum of perf/rollout_seconds + "
                  "perf/update_seconds (validation and start-up not included).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- figure
def plot_panel(ax, groups: Sequence[Group], key: str, start_lines: bool) -> None:
    """Thin line per seed, thick mean per group; with ``start_lines`` a dashed line at the mean BC start."""
    for i, group in enumerate(groups):
        color = f"C{i % 10}"
        curves = [getattr(r, key) for r in group.runs]
        for curve in curves:
            points = [curve[e] for e in sorted(curve)]
            ax.plot([p[0] for p in points], [p[1] for p in points], color=color, lw=0.8, alpha=0.35)
        epochs, steps, values = shared_curve(curves)
        if epochs:
            ax.plot(steps, values.mean(axis=1), color=color, lw=2.5, marker="o", ms=3,
                    label=f"{group.label} (n={len(group.runs)})")
        starts = [c[0][1] for c in curves if 0 in c]
        if start_lines and starts:
            ax.axhline(float(np.mean(starts)), color=color, ls="--", lw=1.2, alpha=0.8)


def plot_groups(groups: Sequence[Group], out: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    fig, (ax_success, ax_return) = plt.subplots(1, 2, figsize=(13, 4.8))
    plot_panel(ax_success, groups, "success", start_lines=True)
    plot_panel(ax_return, groups, "returns", start_lines=False)
    ax_success.set(title="validation success (eval/success_rate)", ylabel="success rate", ylim=(-0.02, 1.02))
    ax_return.set(title="training episodic return (charts/episodic_return)", ylabel="return")
    for ax in (ax_success, ax_return):
        ax.set_xlabel("env steps")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
        ax.grid(alpha=0.3)
    handles, labels = ax_success.get_legend_handles_labels()
    handles.append(Line2D([], [], color="gray", ls="--", lw=1.2))
    labels.append("BC start (first validation)")
    ax_success.legend(handles, labels, fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def make_report(paths: Sequence[str], out: str | pathlib.Path, labels: Sequence[str] = (), title: str = "") -> str:
    """Write the PNG and the ``.md`` tables for ``paths`` (one group each); return the markdown."""
    out = pathlib.Path(out)
    groups = load_groups(paths, labels)
    title = title or " vs ".join(g.label for g in groups)
    text = report_markdown(groups, title)
    plot_groups(groups, out, title)
    out.with_suffix(".md").write_text(text)
    return text


def main(argv: List[str]) -> None:
    args = parse_key_values(argv, DEFAULTS)
    paths = parse_list(args["runs"])
    if not paths:
        raise SystemExit("usage: plot_runs.py runs=[DIR,...] [out=curves.png] [labels=[A,...]] [title=...]")
    out = args["out"] or str(pathlib.Path(paths[0]) / "curves.png")
    print(make_report(paths, out, parse_list(args["labels"]), args["title"]))
    print(f"wrote {out} and {pathlib.Path(out).with_suffix('.md')}")


if __name__ == "__main__":
    main(sys.argv[1:])
