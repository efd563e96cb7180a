"""Ctrl-C that stops a training run at a safe point, so the checkpoint is always saved.

Python's default SIGINT handler raises KeyboardInterrupt at whatever line is running. Inside
robosuite's numba-compiled controller that becomes ``SystemError: ... returned a result with an
exception set``, and elsewhere a library can swallow it: measured with ``train_rl.py``, 2 of ~20
Ctrl-Cs either crashed without saving or were lost while the run went on. :class:`InterruptGuard`
therefore only records the first SIGINT; the loops call :func:`raise_if_interrupted` at safe points
(every chunk step of the episode loop, every BC batch, every epoch), where KeyboardInterrupt reaches
the workspace's save-and-exit path. A second Ctrl-C raises at once, as users expect of "force".
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any, Optional

_active: Optional["InterruptGuard"] = None


def raise_if_interrupted() -> None:
    """Safe point for long loops: raise KeyboardInterrupt if Ctrl-C was pressed inside a guard."""
    if _active is not None:
        _active.check()


class InterruptGuard:
    def __init__(self) -> None:
        self.requested = False
        self._previous_handler: Any = None
        self._previous_guard: Optional[InterruptGuard] = None

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping at the next safe point and saving (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def check(self) -> None:
        """Raise KeyboardInterrupt if SIGINT arrived since the guard was entered."""
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> "InterruptGuard":
        global _active
        if threading.current_thread() is threading.main_thread():   # signal handlers live in the main thread
            self._previous_handler = signal.signal(signal.SIGINT, self._handler)
        self._previous_guard, _active = _active, self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = self._previous_guard
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
