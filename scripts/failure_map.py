"""Where a policy fails: success by the object's initial position, beside where its BC demos started.

    python scripts/failure_map.py eval=data/outputs/eval_x/eval.json
    python scripts/failure_map.py eval=data/outputs/eval_x/eval.json checkpoint=data/checkpoints/lift_d0_default.ckpt

Why: a flow trained on a few demos grasps well only near the object positions it saw, and an RL method that
steers the frozen flow (``rl_policy=latent``) inherits that map: on lift_d0 the 5-demo default and its PPO
policy fail mostly where no training demo started (docs/EXPERIMENTS.md 2026-12-06i). ``eval`` is the
``eval.json`` of ``scripts/eval_policy.py`` (one entry per episode seed); each seed's start is rebuilt by
resetting the task's env with it. ``checkpoint`` (optional, a BC checkpoint) adds how many of its training
demos started in each cell: its ``cfg.dataset`` split (``val_ratio``, ``seed``, ``max_train_episodes``) picked
from the demo file ``demos`` (default: the task's ``data/demos/<task>.hdf5``), each demo's start replayed from
its first recorded sim state. Prints a markdown grid (rows: y, high to low; columns: x; cells
``successes/episodes`` and ``[demos]``) and writes it beside ``eval`` as ``failure_map.md``.
Keys: eval (required), checkpoint, demos, bins (cells per axis, default 3).
"""
from __future__ import annotations

import json
import os
import sys
from typing import List, Sequence

import numpy as np

from equi_diffpo.common.checkpoint_io import load_payload
from equi_diffpo.common.errors import ConfigError
from equi_diffpo.common.hydra_cli import parse_key_values
from equi_diffpo.dataset.robomimic_hdf5 import DemoReader
from equi_diffpo.dataset.sequence_sampler import train_val_masks
from equi_diffpo.env.robosuite_env import RobosuitePointCloudEnv

DEFAULTS = {"eval": "", "checkpoint": "", "demos": "", "bins": "3"}


def object_xy(env: RobosuitePointCloudEnv) -> np.ndarray:
    """The first object's (x, y) in the world frame: robosuite's ``object-state`` starts with its position."""
    return np.asarray(env.raw_obs["object-state"][:2], dtype=np.float64)


def episode_starts(env: RobosuitePointCloudEnv, seeds: Sequence[int]) -> np.ndarray:
    """Object (x, y) at reset for each evaluation seed, ``(n, 2)``."""
    starts = []
    for seed in seeds:
        env.reset(seed=int(seed))
        starts.append(object_xy(env))
    return np.array(starts)


def training_demo_starts(env: RobosuitePointCloudEnv, checkpoint: str, demos: str) -> np.ndarray:
    """Object (x, y) at the first state of each demo the BC checkpoint trained on, ``(n_train, 2)``."""
    dataset_cfg = load_payload(checkpoint)["cfg"].get("dataset")
    if dataset_cfg is None:
        raise ConfigError(f"checkpoint={checkpoint!r} records no BC dataset (cfg.dataset): pass the BC checkpoint "
                          "the RL run started from, or leave checkpoint out")
    reader = DemoReader(demos)
    try:
        _, train = train_val_masks(len(reader), float(dataset_cfg.val_ratio), int(dataset_cfg.seed),
                                   dataset_cfg.get("max_train_episodes"))
        starts = []
        for index in np.nonzero(train)[0]:
            env.reset_to(reader[int(index)].states[0])
            starts.append(object_xy(env))
    finally:
        reader.close()
    return np.array(starts)


def cell_index(points: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Grid cell ``(n, 2)`` (column = x, row = y) of each point; points outside ``[lo, hi]`` go to the edge cells."""
    scaled = (points - lo) / np.maximum(hi - lo, 1e-9) * bins
    return np.clip(np.floor(scaled).astype(int), 0, bins - 1)


def grid_markdown(starts: np.ndarray, success: np.ndarray, demo_starts: np.ndarray | None, bins: int) -> str:
    """The markdown table: one row per y band (high y first), one column per x band."""
    lo, hi = starts.min(axis=0), starts.max(axis=0)
    edges_x, edges_y = np.linspace(lo[0], hi[0], bins + 1), np.linspace(lo[1], hi[1], bins + 1)
    cells = cell_index(starts, lo, hi, bins)
    demo_cells = cell_index(demo_starts, lo, hi, bins) if demo_starts is not None else None
    header = ["y \\ x"] + [f"{edges_x[i] * 100:+.1f}..{edges_x[i + 1] * 100:+.1f} cm" for i in range(bins)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * (bins + 1)]
    for row in reversed(range(bins)):
        entries: List[str] = [f"{edges_y[row] * 100:+.1f}..{edges_y[row + 1] * 100:+.1f} cm"]
        for col in range(bins):
            here = (cells[:, 0] == col) & (cells[:, 1] == row)
            entry = f"{int(success[here].sum())}/{int(here.sum())}"
            if demo_cells is not None:
                entry += f" [{int(((demo_cells[:, 0] == col) & (demo_cells[:, 1] == row)).sum())}]"
            entries.append(entry)
        lines.append("| " + " | ".join(entries) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    args = parse_key_values(argv, DEFAULTS)
    if not args["eval"]:
        raise ConfigError("eval=<path to eval.json> is required (written by scripts/eval_policy.py)")
    if not os.path.isfile(args["eval"]):
        raise FileNotFoundError(f"eval={args['eval']!r} does not exist; run scripts/eval_policy.py first")
    with open(args["eval"]) as f:
        result = json.load(f)
    episodes, task_name = result["episodes"], result["task_name"]
    env = RobosuitePointCloudEnv(task_name)
    try:
        starts = episode_starts(env, [e["seed"] for e in episodes])
        demo_starts = None
        if args["checkpoint"]:
            demos = args["demos"] or f"data/demos/{task_name}.hdf5"
            demo_starts = training_demo_starts(env, args["checkpoint"], demos)
    finally:
        env.close()
    success = np.array([bool(e["success"]) for e in episodes])
    table = grid_markdown(starts, success, demo_starts, int(args["bins"]))
    title = (f"{task_name}: success {success.mean():.2f} over {len(success)} episodes by the object's initial "
             f"(x, y); cells: successes/episodes" + (" [training demos starting there]" if demo_starts is not None else ""))
    text = f"{title}\n\n{table}\n"
    print(text)
    with open(os.path.join(os.path.dirname(os.path.abspath(args["eval"])), "failure_map.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
