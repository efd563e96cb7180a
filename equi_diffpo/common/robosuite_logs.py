"""Drop robosuite 1.5's import-time warnings that never apply here.

``import robosuite`` logs four warnings (no private macro file, no ``robosuite_models``, no
``mink`` IK for the GR1 robot). They concern robots and set-ups this project does not use, and
every env worker process imports robosuite again, so a run printed them once per worker and per
restart. The filter sits on robosuite's own logger (``robosuite_logs``), which robosuite creates
at import and never clears filters on, so it must be installed before the first import: the
``equi_diffpo.env`` package does so. Every other robosuite message still gets through.
"""
from __future__ import annotations

import logging

IMPORT_NOISE = (
    "No private macro file found",
    "It is recommended to use a private macro file",
    "To setup, run: python",
    "Could not import robosuite_models",
    "Could not load the mink-based whole-body IK",
)


def _not_import_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(IMPORT_NOISE)


def drop_robosuite_import_warnings() -> None:
    """Idempotent: installs the filter once per process."""
    logger = logging.getLogger("robosuite_logs")
    if _not_import_noise not in logger.filters:
        logger.addFilter(_not_import_noise)
