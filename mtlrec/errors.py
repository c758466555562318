"""One exit-code contract for every job (DESIGN.md section 7), written down once.

    0  success
    2  bad input or configuration: one line naming it, nothing written   (``InputError``)
    1  a check after writing failed                                       (``CheckError``)

Library code raises a subclass of one of the two classes below; a job's ``main`` runs its
body through ``run_job``, the one place where an exception becomes an exit status and a
single line on stderr. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class JobError(Exception):
    """A failure the user can act on; the message is the one line they read."""

    exit_code: int = 1


class InputError(JobError):
    """Bad input or configuration, found before anything was written."""

    exit_code = 2


class CheckError(JobError):
    """A check on what a job wrote failed (the written data stays for inspection)."""

    exit_code = 1


def run_job(job: str, body: Callable[[], int | None]) -> int:
    """Run a job's body; a ``JobError`` becomes ``<job>: <message>`` on stderr and its
    exit status. ``body`` returns None or 0 on success (or its own status)."""
    try:
        status = body()
    except JobError as exc:
        print(f"{job}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0 if status is None else status


class ResourceError(JobError):
    """A stage ran out of memory with the given settings; the message names the stage and
    the settings to raise. Exit 1: earlier stages (and this stage's finished commits) stay
    written, and a retry with the same run id resumes after them."""

    exit_code = 1
