"""The pipeline on a real cluster (issue 16): scripts/cluster.sh brings up a Spark
standalone master with two workers and a two-node Ray cluster on loopback (non-default
ports), the unchanged jobs run on it, and their tables equal a ``local[2]`` run's.

One fault on the way: an executor JVM of one Spark worker is killed while it runs a task
of the feature job; Spark retries its tasks and the tables are still identical. The other
faults (a Ray node killed mid-epoch, a driver killed between write and commit) are
``scripts/cluster_faults.py``, which a user reruns (docs/cluster.md).

Cost, kept to one of each: one cluster bring-up for the module, one feature build on the
cluster of the run's shared generated log (``tests/shared_lake.py``), whose shared
``local[2]`` build is the reference, one training job (``ray job submit``), one scoring run
on each side (at the same time).
"""

from __future__ import annotations

import hashlib
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
from shared_lake import shared_build

from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # scripts/ is not an installed package
from scripts import cluster_faults  # noqa: E402  (the cluster run's sizes, one list)

PY = str(ROOT / ".venv/bin/python")
SMALL = [
    *cluster_faults.SMALL,
    "train.epochs=1",
    "score.top_k=5",
    "score.candidates.per_user=12",
    "score.candidates.items_per_category=4",
    "score.candidates.recent_items=4",
    "score.active_days=3",
    "score.batch_size=64",
]
TABLES = [
    "bronze/events",
    "bronze/quarantine",
    "silver/events",
    "silver/items",
    "silver/users",
    "silver/bot_events",
    "gold/user_features",
    "gold/item_features",
    "gold/vocabulary",
    "gold/examples",
    "gold/feature_spec",
]
# Columns that name a run, not its data.
RUN_COLUMNS = {"build_id", "created_at", "scored_at"}
# Columns holding JSON documents, compared as values (their floats rounded, see below).
JSON_COLUMNS = {"spec_json"}
# Spark adds an aggregate's partial sums in the order they arrive, which differs between
# runs when they come from several executors: gold/feature_spec's dense means and standard
# deviations then differ in the 16th digit. Floats are compared to 12 significant digits.
FLOAT_DIGITS = 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True)
class Cluster:
    folder: Path
    env: dict[str, str]
    master: str
    ui_port: int
    worker_ui_ports: tuple[int, int]

    def script(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["scripts/cluster.sh", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pid(self, name: str) -> int:
        return int((self.folder / "pids" / f"{name}.pid").read_text())


def _our_processes(folder: Path) -> list[str]:
    """Processes whose command line names the cluster's folder (its JVMs and Ray nodes)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(folder) in cmdline:
            found.append(f"{proc.name} {cmdline[:120]}")
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # A short path: Ray's socket paths under its temp dir must stay below 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="mtlrec-cl-", dir="/tmp"))
    ui, worker_ui = _free_port(), _free_port()
    while worker_ui + 1 == ui:
        worker_ui = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MTLREC_", "RAY_"))}
    env.update(
        MTLREC_CLUSTER_DIR=str(folder),
        MTLREC_SPARK_PORT=str(_free_port()),
        MTLREC_SPARK_UI_PORT=str(ui),
        MTLREC_SPARK_WORKER_UI_PORT=str(worker_ui),
        MTLREC_RAY_PORT=str(_free_port()),
        MTLREC_RAY_DASHBOARD_PORT=str(_free_port()),
    )
    handle = Cluster(
        folder,
        env,
        f"spark://127.0.0.1:{env['MTLREC_SPARK_PORT']}",
        ui,
        (worker_ui, worker_ui + 1),
    )
    sizes = [a for s in SMALL if s.startswith(("spark.", "ray.")) for a in ("--set", s)]
    try:
        started = handle.script("up", *sizes)
        assert started.returncode == 0, started.stdout + started.stderr
        assert handle.master in started.stdout
        yield handle
    finally:
        stopped = handle.script("down")
        left = _our_processes(folder)
        shutil.rmtree(folder, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr
        assert not left, f"processes left running after down: {left}"


def test_up_refuses_when_it_is_already_up_or_a_port_is_taken(cluster: Cluster) -> None:
    again = cluster.script("up")
    assert again.returncode == 2 and "already up" in again.stderr
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        other = Path(tempfile.mkdtemp(prefix="mtlrec-cl-", dir="/tmp"))
        env = {**cluster.env, "MTLREC_CLUSTER_DIR": str(other), "MTLREC_SPARK_PORT": str(port)}
        taken = subprocess.run(
            ["scripts/cluster.sh", "up"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(other, ignore_errors=True)
    assert taken.returncode == 2
    assert f"{port} (MTLREC_SPARK_PORT)" in taken.stderr
    assert not _our_processes(other)
    # A Ray port among those Ray hands its workers would kill the head at start-up.
    other = Path(tempfile.mkdtemp(prefix="mtlrec-cl-", dir="/tmp"))
    env = {**cluster.env, "MTLREC_CLUSTER_DIR": str(other), "MTLREC_RAY_PORT": "16379"}
    clash = subprocess.run(
        ["scripts/cluster.sh", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    shutil.rmtree(other, ignore_errors=True)
    assert clash.returncode == 2
    assert "MTLREC_RAY_PORT=16379 lies in 10002-19999" in clash.stderr


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{FLOAT_DIGITS}g}")
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _table_digest(lake: Lake, name: str) -> tuple[int, str]:
    """Rows and a sha256 over the table's rows, sorted, without the run-naming columns."""
    table = lake.read_arrow(name)
    keep = [c for c in table.column_names if c not in RUN_COLUMNS]
    rows = []
    for row in table.select(keep).to_pylist():
        for column in JSON_COLUMNS & set(row):
            row[column] = json.loads(row[column])
        rows.append(json.dumps(_canonical(row), sort_keys=True, default=str))
    rows.sort()
    return len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(p) for p in (task / "children").read_text().split()]
    return kids


def _executor_of(worker_pid: int) -> int | None:
    for child in _children(worker_pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"CoarseGrainedExecutorBackend" in cmdline:
            return child
    return None


def _kill_executor_mid_task(worker_pid: int, timeout_s: float = 300) -> int:
    """SIGKILL the worker's executor JVM while its log shows a task started, not finished.

    The executor runs in its work directory (``<work-dir>/<app>/<executor id>``), where
    the worker writes its stderr: ``Running task`` / ``Finished task`` lines at INFO.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        executor = _executor_of(worker_pid)
        if executor is not None:
            try:
                log = (Path(f"/proc/{executor}/cwd") / "stderr").read_text()
            except OSError:  # the executor is still starting
                log = ""
            if log.count("Running task ") > log.count("Finished task "):
                os.kill(executor, signal.SIGKILL)
                return executor
        time.sleep(0.05)
    raise AssertionError(f"worker {worker_pid}'s executor ran no task within {timeout_s:.0f} s")


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(process: subprocess.Popen[str], timeout: float = 900) -> str:
    """The process's output once it exited 0 (killed, never left behind, on a failure)."""
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output[-3000:]
    return output


@dataclass(frozen=True)
class Built:
    root: Path
    cluster_lake: Lake
    local_lake: Lake
    overrides: list[str]
    killed_executor: int
    events: list[dict[str, Any]]


@pytest.fixture(scope="module")
def built(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """The feature job on the cluster (one executor JVM killed mid-task); the reference is
    the same log's shared ``local[2]`` build, copied to be written by local scoring."""
    root = Path(tempfile.mkdtemp(prefix="mtlrec-clrun-", dir="/tmp"))
    shared = shared_build(tmp_path_factory)
    shared.copy_to(root, ("lake",))
    (root / "lake").rename(root / "lake-local")
    base = [
        f"lake.raw_root={shared.raw}",  # read only; bronze rows name their raw file
        f"run.storage_path={root}/runs",
        *SMALL,
    ]
    event_dir = root / "events"
    event_dir.mkdir()
    overrides = [a for s in base for a in ("--set", s)]
    job = ["jobs/build_features.py", "--stage", "all"]
    on_cluster = _start(
        [
            "scripts/submit.sh",
            "--master",
            cluster.master,
            "--conf",
            "spark.eventLog.enabled=true",
            "--conf",
            f"spark.eventLog.dir=file:{event_dir}",
            # One plain JSON-lines file (Spark 4 rolls and zstd-compresses by default).
            "--conf",
            "spark.eventLog.rolling.enabled=false",
            "--conf",
            "spark.eventLog.compress=false",
            *job,
            *overrides,
            "--set",
            f"lake.root={root}/lake-cluster",
        ],
        cluster.env,
    )
    assert on_cluster.stdout is not None
    output, killed = [], 0
    try:
        for line in on_cluster.stdout:
            output.append(line)
            # Bronze is written, silver starts: kill worker 1's executor in its next task.
            if not killed and "stage=write bronze/events" in line:
                killed = _kill_executor_mid_task(cluster.pid("spark-worker-1"))
        output.append(_finish(on_cluster))
    finally:  # a failed assertion or a suite timeout leaves no driver behind
        if on_cluster.poll() is None:
            on_cluster.kill()
            on_cluster.wait()
    assert killed, "".join(output[-60:])
    (log,) = event_dir.iterdir()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    yield Built(
        root, Lake(f"{root}/lake-cluster"), Lake(f"{root}/lake-local"), overrides, killed, events
    )
    shutil.rmtree(root, ignore_errors=True)


def test_feature_tables_on_the_cluster_equal_local_ones(built: Built) -> None:
    for name in TABLES:
        digest = _table_digest(built.cluster_lake, name)
        assert digest == _table_digest(built.local_lake, name), name
        print(f"{name}: {digest[0]} rows, sha256 {digest[1][:12]} on both")
    rows, _ = _table_digest(built.cluster_lake, "gold/examples")
    assert rows > 0


def test_executors_on_both_workers_ran_tasks_and_one_was_replaced(
    built: Built, cluster: Cluster
) -> None:
    """From the event log: each executor's log URL names its worker (the worker's web UI
    port); tasks ended on executors of both workers; the killed one was removed."""
    worker_of = {}
    for event in built.events:
        if event["Event"] == "SparkListenerExecutorAdded":
            info = event["Executor Info"]
            ui_port = int(info["Log Urls"]["stderr"].split(":")[2].split("/")[0])
            worker_of[event["Executor ID"]] = cluster.worker_ui_ports.index(ui_port) + 1
    tasks_by_worker: dict[int, int] = {}
    lost = 0
    for event in built.events:
        if event["Event"] == "SparkListenerTaskEnd":
            worker = worker_of[event["Task Info"]["Executor ID"]]
            tasks_by_worker[worker] = tasks_by_worker.get(worker, 0) + 1
            lost += event["Task End Reason"]["Reason"] == "ExecutorLostFailure"
    print(f"executors -> worker: {worker_of}; tasks per worker: {tasks_by_worker}; lost: {lost}")
    assert set(tasks_by_worker) == {1, 2}, tasks_by_worker
    removed = [e for e in built.events if e["Event"] == "SparkListenerExecutorRemoved"]
    assert removed, "the killed executor shows as removed"
    assert len(worker_of) >= 3, "worker 1 got a replacement executor"


@pytest.fixture(scope="module")
def model(built: Built, cluster: Cluster) -> Path:
    """jobs.train submitted with `ray job submit` (scripts/cluster.sh train)."""
    trained = cluster.script(
        "train",
        *built.overrides,
        "--set",
        f"lake.root={built.cluster_lake.root}",
        "--set",
        "run.name=on-cluster",
        timeout=900,
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "Job 'raysubmit_" in trained.stdout + trained.stderr
    path = built.root / "runs/on-cluster/model.pt"
    assert path.is_file()
    return path


def test_training_submitted_as_a_ray_job_puts_one_worker_on_each_node(
    model: Path, cluster: Cluster
) -> None:
    nodes = cluster.script(
        "run",
        PY,
        "-c",
        "import json, ray; ray.init(address='auto', logging_level='ERROR');"
        "from ray._private.state import actors;"
        "print(json.dumps(sorted(a['Address']['NodeID'] for a in actors().values()"
        " if a['ActorClassName'] == 'RayTrainWorker')))",
    )
    assert nodes.returncode == 0, nodes.stderr[-2000:]
    node_ids = json.loads(nodes.stdout.strip().splitlines()[-1])
    print(f"RayTrainWorker node ids: {node_ids}")
    assert len(node_ids) == 2 and len(set(node_ids)) == 2, node_ids
    # The checkpoints went to run.storage_path, which every node reads.
    assert list((model.parent).glob("checkpoint_*"))


def test_scoring_on_the_cluster_equals_local_scoring(
    built: Built, cluster: Cluster, model: Path
) -> None:
    day = GoldSnapshot.resolve(built.local_lake).spec.test_days[-1]
    job = ["jobs/score_users.py", "--model", str(model), "--date", day, *built.overrides]
    runs = [
        _start(
            [
                "scripts/submit.sh",
                *(["--master", cluster.master] if lake is built.cluster_lake else []),
                *job,
                "--set",
                f"lake.root={lake.root}",
                *([] if lake is built.cluster_lake else ["--set", "spark.master=local[2]"]),
            ],
            cluster.env,
        )
        for lake in (built.cluster_lake, built.local_lake)
    ]
    try:
        for run in runs:
            _finish(run)
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    on_cluster = _table_digest(built.cluster_lake, "gold/recommendations")
    assert on_cluster == _table_digest(built.local_lake, "gold/recommendations")
    assert on_cluster[0] > 0


def test_an_executor_out_of_memory_ends_the_job_with_one_line_naming_the_setting(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A 300 MiB line cannot fit a 512 MiB executor: the executor exits (code 52), the
    job then fails on the shuffle output it lost, whose message names no memory; the last
    line still names the stage and spark.executor_memory, exit 1. One stage attempt
    (Spark's default is four, each ending the same way) keeps the test short."""
    day = tmp_path / "raw" / "events" / "dt=2026-10-01"
    day.mkdir(parents=True)
    event = {"event_id": "e1", "ts": "2026-10-01T10:00:00Z", "user_id": "u1", "item_id": "i1"}
    with (day / "part-00000.jsonl").open("w") as out:
        out.write(json.dumps({**event, "event_type": "impression", "note": "a" * (300 << 20)}))
        out.write("\n" + json.dumps({**event, "event_id": "e2", "event_type": "click"}) + "\n")
    settings = [
        f"lake.raw_root={tmp_path / 'raw'}",
        f"lake.root={tmp_path / 'lake'}",
        *[s for s in SMALL if s.startswith("spark.")],
        "features.bronze.max_line_bytes=1000000000",
        'spark.conf={"spark.stage.maxConsecutiveAttempts": "1"}',
    ]
    job = ["jobs/build_features.py", "--stage", "bronze"]
    # What the user's terminal shows: spark-submit's JVM relays the Python driver's stdout
    # and stderr onto its own stdout, beside the JVM's log on stderr.
    run = subprocess.run(
        ["scripts/submit.sh", "--master", cluster.master, *job]
        + [a for s in settings for a in ("--set", s)],
        cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=900,
    )  # fmt: skip
    said = "\n".join(x for x in run.stdout.splitlines() if not x.lstrip().startswith("at "))
    assert run.returncode == 1, said[-5000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("build_features: bronze ran out of memory ("), said[-5000:]
    assert "exited with code 52" in last and "raise spark.executor_memory" in last
    assert "spark.executor_memory=512m" in last
