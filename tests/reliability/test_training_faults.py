"""Training faults: a Ray worker killed mid-run, a corrupt newest checkpoint, hang hazards.

All runs are real ``jobs.train`` subprocesses (local Ray, 2 CPU workers, gloo DDP,
Petastorm shards) on one small ``gold/examples`` lake whose layout is itself a hazard:
the train split gives the two ranks unequal row counts, and val and test hold one row
group each (fewer than workers), so one rank evaluates nothing. The uninterrupted run
must finish on it; a run whose worker is SIGKILLed after the first checkpoint must
restart the worker group from that checkpoint (``FailureConfig``) and end within
``AUC_TOLERANCE`` of it. The driver-killed ``--resume`` path is covered by
``tests/test_train_ray.py::test_stopped_run_resumes_from_its_checkpoint``.

The uninterrupted run also carries a fake credential in ``lake.storage_options``: it
must appear in no output and no file the run or its Ray session writes, and no Ray or
training process may be reachable beyond localhost (``ray.private_network``: the job runs
in a network namespace that holds only loopback).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from mtl_model.shards import list_row_groups, plan_shard
from mtlrec import private_network
from mtlrec.lake import Lake
from reliability.harness import is_loopback, kill_group, wait_for
from reliability.training import (
    ray_env,
    remove_ray_dirs,
    start_training,
    train_command,
    write_examples,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

AUC_TOLERANCE = 0.02
"""A run restarted from a checkpoint may differ from the uninterrupted one by this much
test AUC per binary task (same data order per epoch; only the interrupted epoch's
partial progress is redone)."""
EPOCHS = 3
SECRET = "fake-S3cr3t-4f1c9a7e"
BINARY_TASKS = ("click", "add_to_cart", "purchase")
TRAIN_TIMEOUT = 420


@dataclass(frozen=True)
class Finished:
    name: str
    run_dir: Path
    log: str
    ray_tmp: Path
    metrics: dict[str, object]


@pytest.fixture(scope="module", autouse=True)
def _private_ray_dirs() -> Iterator[None]:
    yield
    remove_ray_dirs()


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "lake"
    # Train days of 20000 and 18500 rows in 1024-row groups: the ranks' shards differ.
    # Val and test are one row group each: the second rank evaluates nothing.
    write_examples(
        root,
        {
            "train": [("2026-10-01", 20000), ("2026-10-02", 18500)],
            "val": [("2026-10-03", 2000)],
            "test": [("2026-10-04", 2000)],
        },
        {"train": 16 * 1024, "val": 64 * 1024 * 1024, "test": 64 * 1024 * 1024},
    )
    return root


Listening = tuple[str, int, str, tuple[str, ...]]
"""(address, port, process name, the interfaces of the process's network namespace)."""


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def _address(hex_address: str) -> tuple[str, int]:
    """A ``/proc/net/tcp[6]`` local address: the IP as little-endian 32-bit words, the port."""
    ip_hex, port_hex = hex_address.split(":")
    packed = b"".join(
        int(ip_hex[i : i + 8], 16).to_bytes(4, "little") for i in range(0, len(ip_hex), 8)
    )
    return str(ipaddress.ip_address(packed)), int(port_hex, 16)


def _listening(pid: int) -> set[Listening]:
    """What the process tree listens on, read from each process's own network namespace
    (``/proc/<pid>/net``), so sockets inside a private namespace are seen too."""
    found = set()
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            inodes = _socket_inodes(proc.pid)
            interfaces = tuple(private_network.interfaces(proc.pid))
            for table in ("tcp", "tcp6"):
                with open(f"/proc/{proc.pid}/net/{table}") as handle:
                    for line in handle.readlines()[1:]:
                        fields = line.split()
                        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                            found.add((*_address(fields[1]), proc.name(), interfaces))
        except (OSError, psutil.Error):
            continue  # the process ended meanwhile
    return found


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint_*/train_state.pt"))


def _registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints Ray's controller has registered (a restart resumes from these).

    A checkpoint directory is on disk before the controller has collected every rank's
    report; a worker killed in between restarts the group from the previous one.
    """
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return len(snapshot.get("checkpoint_results", []))


def _finish(
    proc: subprocess.Popen[Any], log: Path, name: str, run_dir: Path, ray_tmp: Path
) -> Finished:
    try:
        proc.wait(timeout=TRAIN_TIMEOUT)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-5000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return Finished(name, run_dir, text, ray_tmp, metrics)


@pytest.fixture(scope="module")
def clean_run(
    examples: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Finished, set[Listening]]:
    """The uninterrupted run; returns it and the sockets its process tree listened on."""
    runs = tmp_path_factory.mktemp("clean") / "runs"
    runs.mkdir()
    env = ray_env()
    command = train_command(
        examples,
        runs,
        "clean",
        "--set",
        f"lake.storage_options={{AWS_SECRET_ACCESS_KEY: {SECRET}}}",
        epochs=EPOCHS,
    )
    log = runs.parent / "clean.log"
    proc = start_training(command, env, log)
    try:
        wait_for(lambda: bool(_checkpoints(runs / "clean")), TRAIN_TIMEOUT, "a checkpoint", proc)
        sockets = _listening(proc.pid)
    except BaseException:
        kill_group(proc)
        raise
    return _finish(proc, log, "clean", runs / "clean", Path(env["RAY_TMPDIR"])), sockets


def _train_worker_pids(pid: int) -> list[int]:
    root = psutil.Process(pid)
    found = []
    for proc in root.children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return sorted(found)


@pytest.fixture(scope="module")
def recovered_run(examples: Path, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """A run one of whose two train workers is SIGKILLed right after the first checkpoint."""
    runs = tmp_path_factory.mktemp("recovered") / "runs"
    runs.mkdir()
    env = ray_env()
    log = runs.parent / "recovered.log"
    proc = start_training(train_command(examples, runs, "recovered", epochs=EPOCHS), env, log)
    try:
        wait_for(
            lambda: _registered_checkpoints(runs / "recovered") > 0,
            TRAIN_TIMEOUT,
            "a registered checkpoint",
            proc,
        )
        workers = _train_worker_pids(proc.pid)
        assert len(workers) == 2, f"expected 2 RayTrainWorker processes, found {workers}"
        os.kill(workers[-1], signal.SIGKILL)
        registered_at_kill = _registered_checkpoints(runs / "recovered")
    except BaseException:
        kill_group(proc)
        raise
    finished = _finish(proc, log, "recovered", runs / "recovered", Path(env["RAY_TMPDIR"]))
    assert registered_at_kill < EPOCHS, "the kill came after the last epoch's checkpoint"
    return finished


@pytest.mark.timeout(TRAIN_TIMEOUT + 60)
def test_unequal_shards_and_single_row_group_splits_complete(
    examples: Path, clean_run: tuple[Finished, set[Listening]]
) -> None:
    lake = Lake(str(examples))
    train = lake.snapshot_files("gold/examples", filters=[("split", "=", "train")])
    groups = list_row_groups(train)
    assert plan_shard(groups, 0, 2).expected_rows != plan_shard(groups, 1, 2).expected_rows
    for split in ("val", "test"):
        files = lake.snapshot_files("gold/examples", filters=[("split", "=", split)])
        assert len(list_row_groups(files)) == 1, "fewer row groups than workers"
    run, _ = clean_run
    history = run.metrics["history"]
    assert isinstance(history, list) and [int(r["epoch"]) for r in history] == [0, 1, 2]
    final = run.metrics["final"]
    assert isinstance(final, dict)
    for task in BINARY_TASKS:
        assert 0.6 < final[f"test/{task}/auc"] <= 1.0, final


@pytest.mark.timeout(2 * TRAIN_TIMEOUT + 60)
def test_killed_worker_resumes_from_checkpoint_and_matches_the_clean_run(
    clean_run: tuple[Finished, set[Listening]], recovered_run: Finished
) -> None:
    clean, _ = clean_run
    history = recovered_run.metrics["history"]
    assert isinstance(history, list) and [int(r["epoch"]) for r in history] == [0, 1, 2]
    # Epoch 0 finished before the kill; a restart from scratch would log it twice.
    assert recovered_run.log.count("epoch 0: ") == 1, recovered_run.log[-5000:]
    assert "RayTrainWorker" in recovered_run.log and "died" in recovered_run.log.lower()
    got, want = recovered_run.metrics["final"], clean.metrics["final"]
    assert isinstance(got, dict) and isinstance(want, dict)
    for task in BINARY_TASKS:
        key = f"test/{task}/auc"
        assert abs(got[key] - want[key]) <= AUC_TOLERANCE, (task, got[key], want[key])


@pytest.mark.timeout(TRAIN_TIMEOUT + 60)
def test_corrupt_newest_checkpoint_resume_falls_back_with_a_warning(
    examples: Path, recovered_run: Finished
) -> None:
    run_dir = recovered_run.run_dir
    states = sorted(_checkpoints(run_dir), key=lambda p: p.parent.stat().st_mtime)
    assert len(states) >= 2
    older, newest = states[-2:]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a write cut short
    (run_dir / "metrics.json").unlink()

    env = ray_env()
    log = run_dir.parent / "resume.log"
    proc = start_training(
        train_command(
            examples,
            run_dir.parent,
            "recovered",
            "--resume",
            "recovered",
            epochs=EPOCHS,
        ),
        env,
        log,
    )
    resumed = _finish(proc, log, "recovered", run_dir, Path(env["RAY_TMPDIR"]))
    assert f"checkpoint {newest.parent} is unreadable" in resumed.log
    assert "falling back" in resumed.log
    assert f"resuming recovered from {older.parent}" in resumed.log
    before, after = recovered_run.metrics["final"], resumed.metrics["final"]
    assert isinstance(before, dict) and isinstance(after, dict)
    for task in BINARY_TASKS:
        key = f"test/{task}/auc"
        assert after[key] == pytest.approx(before[key], abs=1e-6), key


@pytest.mark.timeout(TRAIN_TIMEOUT + 60)
def test_no_credential_in_any_output_or_file_of_the_run(
    clean_run: tuple[Finished, set[Listening]],
) -> None:
    run, _ = clean_run
    assert SECRET not in run.log
    leaks = [
        str(path)
        for base in (run.run_dir, run.ray_tmp)
        for path in base.rglob("*")
        if path.is_file() and not path.is_symlink() and SECRET.encode() in path.read_bytes()
    ]
    assert not leaks, f"the credential was written to {leaks}"


DASHBOARD_PORT = 8265
# ray[default] (installed for `ray job submit`) runs a DashboardAgent on every node even with
# include_dashboard=False: Ray keeps it for runtime envs, metrics and events
# (ray-project/ray#17770, #19420). It serves no UI, and the next test checks that it, like
# every training process, listens on loopback only. The dashboard itself (a `python`
# process on 8265 when enabled) must not start.
NODE_AGENT = "ray::DashboardAgent"


@pytest.mark.timeout(TRAIN_TIMEOUT + 60)
def test_training_starts_no_dashboard(
    clean_run: tuple[Finished, set[Listening]],
) -> None:
    _, sockets = clean_run
    assert sockets, "the probe saw no listening socket at all"
    assert not [
        s for s in sockets
        if s[1] == DASHBOARD_PORT or ("dashboard" in s[2].lower() and s[2] != NODE_AGENT)
    ]  # fmt: skip


@pytest.mark.timeout(TRAIN_TIMEOUT + 60)
def test_no_training_process_is_reachable_beyond_localhost(
    clean_run: tuple[Finished, set[Listening]],
) -> None:
    _, sockets = clean_run
    assert sockets, "the probe saw no listening socket at all"
    unavailable = private_network.unavailable_reason()
    if unavailable is not None:
        pytest.skip(f"ray.private_network cannot apply on this machine: {unavailable}")
    # Ray 2.55.1 binds its core servers to all interfaces; in the job's private network
    # namespace the only interface is loopback.
    exposed = sorted(s for s in sockets if not is_loopback(s[0]) and s[3] != ("lo",))
    assert not exposed, f"listening beyond localhost: {exposed}"
    assert {s[3] for s in sockets} == {("lo",)}, "every training process is in the namespace"
