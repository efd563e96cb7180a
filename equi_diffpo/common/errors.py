"""Expected user errors, and the one place that reports them.

A wrong key value, an unknown task or an unusable checkpoint is the user's to fix, and a traceback
buries the fix. Entry points therefore run inside :func:`report_user_errors`: a :class:`UserError`
(or omegaconf's "missing mandatory value" for a ``???`` key) becomes one line on stderr,
``error: <key or path and what is wrong>: <fix>``, and exit code 2 (the Unix code for a usage error;
1 stays "something failed"). ``HYDRA_FULL_ERROR=1``, hydra's own switch, re-raises it with its
traceback. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Type

from omegaconf.errors import MissingMandatoryValue

USAGE_EXIT_CODE = 2


class UserError(Exception):
    """An error the user fixes by changing the command line or an input file."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key and a value that would."""


def one_line(message: str) -> str:
    """``message`` on one line: detail lines joined with '; ' (with ' ' after a line ending in ':')."""
    out = ""
    for line in filter(None, (raw.strip() for raw in message.splitlines())):
        out += ("" if not out else " " if out.endswith(":") else "; ") + line
    return out


def user_error_message(err: BaseException) -> str | None:
    """The one line reported for ``err``, or None when it is not an expected user error."""
    if isinstance(err, MissingMandatoryValue):
        return f"{err.full_key} is required: pass {err.full_key}=<value>"
    if isinstance(err, UserError):
        return one_line(str(err))
    return None


@contextlib.contextmanager
def input_errors_as_config_errors(key: str, *types: Type[Exception]) -> Iterator[None]:
    """Inside the block, ``types`` raised by a reader's own input checks (each naming the file)
    are the user's input problem: re-raise them as a :class:`ConfigError` that names ``key``."""
    try:
        yield
    except types as err:
        raise ConfigError(f"{key}: {err}") from err


@contextlib.contextmanager
def report_user_errors() -> Iterator[None]:
    """Turn an expected user error raised inside the block into ``error: ...`` and exit 2."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised below unless it is a user error
        message = user_error_message(err)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(USAGE_EXIT_CODE) from None
