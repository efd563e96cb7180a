"""BC step rate of the real training step under different thread / precision settings, side by side.

Usage: ``python scripts/bench_bc_step.py [task_name=stack_d0] [variants=2:fp32,1:fp32,1:bf16] [n_steps=10]
[rounds=3] [overrides=] [output=bench.json]``

One ``TrainManiFlowWorkspace`` per variant ``<torch threads>:<precision>`` (same seed, so the same
initial weights) over the task's real zarr dataset; each round times ``n_steps`` calls of
``workspace.train_step`` per variant on batches from the workspace's own DataLoader (data loading
included), variants interleaved, so all of them see the same load on a shared machine. Reports
the median over rounds of wall ms and CPU ms (this process) per step and steps/s. ``overrides``
takes extra config overrides separated by ``;`` (e.g. ``policy.pointnet_hidden=[64,128]``).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import torch

from equi_diffpo.common.hydra_cli import compose_config, parse_key_values
from equi_diffpo.workspace.train_maniflow_workspace import TrainManiFlowWorkspace

DEFAULTS: Dict[str, str] = {"task_name": "stack_d0", "variants": "2:fp32,1:fp32,1:bf16", "n_steps": "10",
                            "rounds": "3", "overrides": "", "output": ""}


class Variant:
    """A workspace with its data loader and an endless batch iterator."""

    def __init__(self, spec: str, task_name: str, overrides: List[str], run_dir: str):
        threads, precision = spec.split(":")
        self.name, self.threads = spec, int(threads)
        cfg = compose_config("train_maniflow_pointcloud", [f"task={task_name}", f"training.precision={precision}",
                                                           f"training.torch_threads={threads}", "logging.mode=disabled",
                                                           *overrides])
        self.workspace = TrainManiFlowWorkspace(cfg, output_dir=os.path.join(run_dir, spec.replace(":", "_")))
        self.loader, _ = self.workspace.build_data()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.workspace.optimizer, lambda step: 1.0)
        self.workspace.model.train()
        self._batches = iter(())

    def next_batch(self):
        batch = next(self._batches, None)
        if batch is None:
            self._batches = iter(self.loader)
            batch = next(self._batches)
        return batch

    def time_steps(self, n_steps: int) -> tuple[float, float]:
        """(wall ms, CPU ms) per step over ``n_steps`` steps, after one warm-up step."""
        torch.set_num_threads(self.threads)
        self.workspace.train_step(self.next_batch(), self.scheduler)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n_steps):
            self.workspace.train_step(self.next_batch(), self.scheduler)
        return 1000 * (time.perf_counter() - wall) / n_steps, 1000 * (time.process_time() - cpu) / n_steps


def main(argv: List[str]) -> None:
    args = parse_key_values(argv, DEFAULTS)
    overrides = [o for o in args["overrides"].split(";") if o]
    with tempfile.TemporaryDirectory() as run_dir:
        variants = [Variant(v, args["task_name"], overrides, run_dir) for v in args["variants"].split(",")]
        times: Dict[str, List[tuple[float, float]]] = {v.name: [] for v in variants}
        for round_ in range(int(args["rounds"])):
            for v in variants:
                times[v.name].append(v.time_steps(int(args["n_steps"])))
                print(f"round {round_} {v.name}: wall {times[v.name][-1][0]:.0f} ms, cpu {times[v.name][-1][1]:.0f} ms "
                      f"per step (load {os.getloadavg()[0]:.1f})", flush=True)
    rows = {name: {"wall_ms": statistics.median(t[0] for t in ts), "cpu_ms": statistics.median(t[1] for t in ts)}
            for name, ts in times.items()}
    base = rows[variants[0].name]["wall_ms"]
    print(f"\n{args['task_name']}, batch {variants[0].workspace.cfg.dataloader.batch_size}, torch {torch.__version__}, "
          f"median of {args['rounds']} rounds x {args['n_steps']} steps")
    print("| threads:precision | wall ms/step | CPU ms/step | steps/s | speed-up (wall) |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['wall_ms']:.0f} | {r['cpu_ms']:.0f} | {1000 / r['wall_ms']:.2f} | {base / r['wall_ms']:.1f}x |")
    if args["output"]:
        with open(args["output"], "w") as f:
            json.dump({"args": args, "rows": rows, "raw": times}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
