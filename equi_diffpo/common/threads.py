"""CPU thread budgeting between torch and env worker processes.

Measured here: with env workers busy on both cores, torch's default 2 OpenMP threads in the
main process spin-wait for a descheduled sibling and a BC step went from 0.2 s to ~8 s. While
workers step, the policy process therefore uses one thread; workers get one BLAS/OpenMP thread each.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set ``torch.set_num_threads(n)`` (restored on exit)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def single_threaded_children() -> Iterator[None]:
    """Processes started inside this block inherit one-thread BLAS/OpenMP settings."""
    saved = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
