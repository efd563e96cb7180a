"""torchrun support: rank/world from the environment, process group, rank-0-only side effects.

``torchrun --nproc_per_node=N scripts/train_rl.py ...``: every rank collects with its own envs
(seeded by rank), the PPO trainer averages gradients across ranks, rank 0 logs and checkpoints.
gloo on CPU, nccl on CUDA; multi-node uses torchrun's rendezvous unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights (and buffers)."""
    if dist.is_initialized():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
