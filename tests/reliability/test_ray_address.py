"""``ray.address``: null starts the job's own local Ray whatever the machine says; "auto" or
an address joins a cluster, and one that does not answer fails fast with exit 2.

A bare ``ray.init()`` follows ``RAY_ADDRESS`` and Ray's current-cluster file
(``$RAY_TMPDIR/ray/ray_current_cluster``, written by ``ray start``). Every test here gives
Ray a private ``RAY_TMPDIR`` under ``/tmp/train-*``, so the file and the head started with
``ray start --head`` on a free port are the test's own, and the head is stopped by its
process group (never ``ray stop``, which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reliability.harness import ROOT, JobRun, job_env, run_job
from reliability.training import train_command, write_examples

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LAYOUT = {
    "train": [("2026-10-01", 3000), ("2026-10-02", 3000)],
    "val": [("2026-10-03", 1500)],
    "test": [("2026-10-04", 1500)],
}
RAY = shutil.which("ray", path=str(Path(sys.executable).parent))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def dead_address() -> Iterator[str]:
    """A loopback address that refuses connections: its port is bound but never listens,
    so no other process can take it during the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray_address") / "lake"
    write_examples(root, LAYOUT, {"train": 16 * 1024, "val": 64 * 1024, "test": 64 * 1024})
    return root


@contextlib.contextmanager
def _private_ray_tmp() -> Iterator[Path]:
    """A private RAY_TMPDIR (short: Ray's socket paths must fit 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="train-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture()
def ray_tmp() -> Iterator[Path]:
    with _private_ray_tmp() as directory:
        yield directory


def _current_cluster_file(ray_tmp: Path) -> Path:
    return ray_tmp / "ray" / "ray_current_cluster"


@dataclass(frozen=True)
class Head:
    address: str
    node_id: str
    ray_tmp: Path  # its RAY_TMPDIR: the current-cluster file there names the head


def _node_id_in_group(pgid: int) -> str | None:
    """The raylet's ``--node_id`` among the processes of process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for arg in (entry / "cmdline").read_bytes().split(b"\0"):
                if arg.startswith(b"--node_id="):
                    return arg.split(b"=", 1)[1].decode()
    return None


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """``ray start --head --block`` on free ports with a private temp dir; stopped with its
    whole process group."""
    assert RAY is not None, "the ray CLI is not installed next to this Python"
    with _private_ray_tmp() as ray_tmp:
        yield from _run_head(ray_tmp)


def _run_head(ray_tmp: Path) -> Iterator[Head]:
    assert RAY is not None
    command = [
        RAY, "start", "--head", "--block", "--disable-usage-stats",
        f"--port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-port={_free_port()}",
        "--include-dashboard=false",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        f"--temp-dir={ray_tmp / 'ray'}",
    ]  # fmt: skip
    log = (ray_tmp / "head.log").open("w")
    proc = subprocess.Popen(
        command, cwd=ROOT, env=job_env(RAY_TMPDIR=str(ray_tmp)), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        node_id = None
        while node_id is None or not _current_cluster_file(ray_tmp).exists():
            assert proc.poll() is None, (ray_tmp / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head did not start within 180 s"
            time.sleep(0.5)
            node_id = _node_id_in_group(proc.pid)
        yield Head(_current_cluster_file(ray_tmp).read_text().strip(), node_id, ray_tmp)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        log.close()


def _train(
    lake_root: Path, runs: Path, ray_tmp: Path, *extra: str, timeout: float = 420, **env: str
) -> tuple[JobRun, dict[str, Any]]:
    command = train_command(lake_root, runs, "run", *extra, epochs=1, workers=1)
    run = run_job(command, timeout=timeout, env=job_env(RAY_TMPDIR=str(ray_tmp), **env))
    metrics_file = runs / "run" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return run, metrics


def test_a_stale_current_cluster_file_does_not_stop_a_local_run(
    lake_root: Path, ray_tmp: Path, tmp_path: Path, dead_address: str
) -> None:
    stale = _current_cluster_file(ray_tmp)
    stale.parent.mkdir(parents=True)
    stale.write_text(dead_address)  # a cluster stopped uncleanly leaves its file behind
    run, metrics = _train(lake_root, tmp_path / "runs", ray_tmp)
    assert run.returncode == 0, run.stderr[-4000:]
    assert metrics["ray"]["joined"] is False
    assert metrics["ray"]["address"] != stale.read_text()
    assert "Connecting to existing Ray cluster" not in run.stderr


def test_a_null_address_starts_its_own_ray_beside_a_running_head(
    lake_root: Path, head: Head, tmp_path: Path
) -> None:
    # Both of Ray's pointers name the head: the current-cluster file and RAY_ADDRESS.
    run, metrics = _train(lake_root, tmp_path / "runs", head.ray_tmp, RAY_ADDRESS=head.address)
    assert run.returncode == 0, run.stderr[-4000:]
    assert metrics["ray"]["joined"] is False
    assert head.node_id not in metrics["ray"]["node_ids"]
    assert metrics["ray"]["address"] != head.address


def test_auto_joins_the_running_head_and_names_it(
    lake_root: Path, head: Head, tmp_path: Path
) -> None:
    run, metrics = _train(lake_root, tmp_path / "runs", head.ray_tmp, "--ray-address", "auto")
    assert run.returncode == 0, run.stderr[-4000:]
    assert metrics["ray"]["joined"] is True
    assert head.node_id in metrics["ray"]["node_ids"]
    assert metrics["ray"]["resources"]["CPU"] == 2.0
    joined = [line for line in run.stderr.splitlines() if "joined Ray cluster" in line]
    assert len(joined) == 1 and "2 CPU" in joined[0], joined


@pytest.mark.parametrize("address", ["explicit", "auto"])
def test_a_cluster_that_does_not_answer_fails_fast_with_exit_2(
    lake_root: Path, ray_tmp: Path, tmp_path: Path, dead_address: str, address: str
) -> None:
    # "auto" takes RAY_ADDRESS first. (Without it Ray falls back to the current-cluster
    # file, or to the only GCS process it finds running on the machine: another user's.)
    env = {"RAY_ADDRESS": dead_address} if address == "auto" else {}
    # Without the job's own check Ray retries for many minutes: run_job fails past 120 s.
    run, metrics = _train(
        lake_root,
        tmp_path / "runs",
        ray_tmp,
        "--ray-address",
        dead_address if address == "explicit" else "auto",
        timeout=120,
        **env,
    )
    assert run.returncode == 2, run.stderr[-4000:]
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("train: ray.address"), lines[-1]
    assert dead_address.split(":")[1] in lines[-1], lines[-1]
    assert metrics == {}
