"""``n_envs`` chunked envs stepped in parallel worker processes.

Why processes: robosuite's step holds the GIL, so threads give 0.6-1.4x on 2 cores while
processes give ~2x (measured on 2 cores, docs/BENCHMARKS.md). Each worker runs whole action chunks, so one pipe round trip
carries ``n_action_steps`` env steps. A worker that dies (segfault, OOM kill) is restarted and
its env is reported as crashed (``None``) so the caller drops that episode and resets it;
``mode='inline'`` steps in this process (debugging, n_envs=1, tests).
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from equi_diffpo.common.threads import single_threaded_children
from equi_diffpo.env.chunked_env import ChunkedEnv, ChunkResult


class EnvWorkerError(RuntimeError):
    """An exception raised inside a worker's env (not a crash): re-raised with its traceback."""


def _worker(conn, env_kwargs: Dict[str, Any]) -> None:
    # A terminal Ctrl-C reaches the whole process group: the parent stops at a safe point and closes
    # the workers (equi_diffpo/common/interrupt.py), so a worker must not die mid-episode first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    env = None
    try:
        env = ChunkedEnv(**env_kwargs)
        conn.send(("ready", None))
        while True:
            cmd, args = conn.recv()
            if cmd == "close":
                break
            try:
                conn.send(("ok", getattr(env, cmd)(*args)))
            except Exception:  # report env errors to the parent instead of dying silently
                conn.send(("error", traceback.format_exc()))
    except EOFError:   # the parent is gone
        pass
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        if env is not None:
            env.close()
        conn.close()


class VectorEnv:
    """``call(method, env_ids, args_per_env)`` fans a ChunkedEnv method out to several envs."""

    def __init__(self, env_kwargs: Dict[str, Any], n_envs: int, mode: str = "process", seed: int = 0):
        if mode not in ("process", "inline"):
            raise ValueError(f"vector env mode {mode!r} is not valid; use 'process' or 'inline'")
        self.n_envs, self.mode = n_envs, mode
        self._kwargs = [dict(env_kwargs, seed=seed + 1000 * i) for i in range(n_envs)]
        self.n_restarts = 0
        self._inline_results: Dict[int, Any] = {}
        if mode == "inline":
            self._envs = [ChunkedEnv(**kw) for kw in self._kwargs]
        else:
            self._ctx = mp.get_context("spawn")  # fork would share MuJoCo/GL and torch state
            self._procs: List[Optional[mp.Process]] = [None] * n_envs
            self._conns: List[Any] = [None] * n_envs
            for i in range(n_envs):
                self._start(i)
            for i in range(n_envs):
                self._expect_ready(i)

    def _start(self, i: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker, args=(child, self._kwargs[i]), daemon=True)
        with single_threaded_children():
            proc.start()
        child.close()
        self._procs[i], self._conns[i] = proc, parent

    def _expect_ready(self, i: int) -> None:
        status, payload = self._conns[i].recv()
        if status != "ready":
            raise EnvWorkerError(f"env worker {i} failed to start:\n{payload}")

    def _restart(self, i: int) -> None:
        self.n_restarts += 1
        if self._procs[i] is not None and self._procs[i].is_alive():
            self._procs[i].kill()
        self._start(i)
        self._expect_ready(i)

    @property
    def policy_threads(self) -> int:
        """Torch threads for the policy process while workers step (see common/threads.py)."""
        return 1 if self.mode == "process" else torch.get_num_threads()

    def call(self, method: str, env_ids: Sequence[int], args: Sequence[tuple]) -> List[Optional[ChunkResult]]:
        """Run ``ChunkedEnv.<method>(*args[j])`` on env ``env_ids[j]``; ``None`` marks a crashed worker."""
        return self.receive(env_ids, self.send(method, env_ids, args))

    def send(self, method: str, env_ids: Sequence[int], args: Sequence[tuple]) -> List[bool]:
        """Start ``method`` on each env without waiting (workers run while the caller does other work, e.g.
        policy inference for another group of envs); :meth:`receive` collects. Inline mode runs it now."""
        if self.mode == "inline":
            self._inline_results.update({i: getattr(self._envs[i], method)(*a) for i, a in zip(env_ids, args)})
            return [True] * len(env_ids)
        sent = []
        for i, a in zip(env_ids, args):
            try:
                self._conns[i].send((method, a))
                sent.append(True)
            except (BrokenPipeError, OSError):
                sent.append(False)
        return sent

    def receive(self, env_ids: Sequence[int], sent: Sequence[bool]) -> List[Optional[ChunkResult]]:
        """The replies of a :meth:`send` to ``env_ids`` (same order); ``None`` for a worker that died (it is
        restarted). A worker's exception is raised after every reply is read, so none is left stale."""
        if self.mode == "inline":
            return [self._inline_results.pop(i) for i in env_ids]
        results: List[Optional[ChunkResult]] = []
        errors: List[str] = []
        for i, ok in zip(env_ids, sent):
            try:
                if not ok:
                    raise EOFError
                status, payload = self._conns[i].recv()
            except (EOFError, ConnectionResetError, OSError):
                self._restart(i)
                results.append(None)
                continue
            if status == "error":
                errors.append(f"env {i} raised:\n{payload}")
            results.append(payload)
        if errors:
            raise EnvWorkerError("\n".join(errors))
        return results

    def reset(self, env_ids: Sequence[int], seeds: Sequence[Optional[int]], render: Sequence[bool]) -> List[Optional[ChunkResult]]:
        return self.call("reset", env_ids, list(zip(seeds, render)))

    def step_chunk(self, env_ids: Sequence[int], actions: np.ndarray, render: Sequence[bool]) -> List[Optional[ChunkResult]]:
        return self.call("step_chunk", env_ids, [(actions[j], render[j]) for j in range(len(env_ids))])

    def close(self) -> None:
        if self.mode == "inline":
            for env in self._envs:
                env.close()
            return
        for conn, proc in zip(self._conns, self._procs):
            try:
                conn.send(("close", ()))
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> "VectorEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
