"""Logging: plain readable lines, plus one structured summary line per stage."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

_CONFIGURED = False


def get_logger(name: str) -> logging.Logger:
    """A logger writing ``time level name: message`` to stderr, configured once per process."""
    global _CONFIGURED
    if not _CONFIGURED:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        root = logging.getLogger("mtlrec")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(f"mtlrec.{name}")


def log_stage(logger: logging.Logger, stage: str, **fields: Any) -> None:
    """One machine-parsable summary line per stage: ``stage=<name> {json fields}``.

    Floats are rounded so the line stays readable; callers pass rows, bytes,
    seconds and whatever counts the stage is accountable for.
    """
    tidy = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in fields.items()}
    logger.info("stage=%s %s", stage, json.dumps(tidy, sort_keys=True, default=str))
