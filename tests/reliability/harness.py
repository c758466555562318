"""Run the project's jobs as real subprocesses, watch them, and fingerprint tables.

The reliability tests judge jobs from the outside, the way an operator sees them:
exit status, stderr, what the lake holds afterwards. This module holds the shared
mechanics: the job command line, a runner that samples the resident memory of the
job's whole process tree (Python driver plus Spark's JVM), and a content hash of a
Delta table that is independent of file layout and row order.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa

from mtlrec.lake import Lake

ROOT = Path(__file__).resolve().parents[2]
SMALL_SPARK = (
    "spark.master=local[1]",
    "spark.shuffle_partitions=2",
    "spark.driver_memory=1g",
    # C1 compiler only: a short job's JVM spends its CPU compiling (tests/conftest.py).
    'spark.conf={"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"}',
)


def job_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DISABLE_USAGE_STATS": "1"}
    env.update(extra)
    return env


def job_command(job: str, *args: str, overrides: Sequence[str] = ()) -> list[str]:
    """``python -m jobs.<job> ARGS --set o1 --set o2 ...``."""
    command = [sys.executable, "-m", f"jobs.{job}", *args]
    for override in overrides:
        command += ["--set", override]
    return command


@dataclass(frozen=True)
class JobRun:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int
    """Largest sampled sum of RSS over the job's process tree."""


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for member in [proc, *proc.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue  # exited between listing and sampling
    return total


def run_job(
    command: list[str],
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> JobRun:
    """Run to completion (killing the whole tree on timeout), sampling memory meanwhile."""
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env if env is not None else job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        watched = psutil.Process(proc.pid)
        while not done.wait(0.25):
            try:
                peak = max(peak, _tree_rss(watched))
            except psutil.Error:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{command[2:4]} ran past {timeout}s:\n{stderr[-3000:]}") from None
    finally:
        done.set()
        sampler.join()
    return JobRun(proc.returncode, stdout, stderr, peak)


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4 loopback mapped into IPv6 (``::ffff:127.0.0.1``)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the job and everything it started (its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


# ---------------------------------------------------------------------- table content
def _canonical(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and value != value:
        return "NaN"
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def table_fingerprint(lake: Lake, name: str, ignore: Sequence[str] = ()) -> str:
    """SHA-256 over the snapshot's rows, sorted; columns in ``ignore`` left out."""
    table: pa.Table = lake.read_arrow(name)
    columns = sorted(c for c in table.column_names if c not in ignore)
    rows = sorted(
        json.dumps([_canonical(row[c]) for c in columns], default=str)
        for row in table.select(columns).to_pylist()
    )
    digest = hashlib.sha256(json.dumps(columns).encode())
    for row in rows:
        digest.update(row.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[Any]
) -> None:
    """Poll ``predicate()`` until true; fail naming ``what`` if the job ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the job exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout}s")
