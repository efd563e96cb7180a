"""InterruptGuard: the first Ctrl-C is recorded and raised at the next safe point (not inside
whatever library code is running), a second one raises at once, and the old handler comes back."""
from __future__ import annotations

import os
import signal

import pytest

from equi_diffpo.common.interrupt import InterruptGuard, raise_if_interrupted


def test_first_sigint_waits_for_a_safe_point_second_raises_at_once():
    previous = signal.getsignal(signal.SIGINT)
    with InterruptGuard() as guard:
        raise_if_interrupted()   # nothing pending
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.requested
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous
    raise_if_interrupted()       # no guard active: a no-op
