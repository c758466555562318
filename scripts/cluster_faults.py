"""Faults on the local cluster that the normal suite leaves out (issue 16, point 3).

    scripts/cluster.sh up --set ray.num_workers=2 --set ray.cpus_per_worker=1
    .venv/bin/python scripts/cluster_faults.py --work /tmp/mtlrec-faults
    scripts/cluster.sh down

On the cluster that ``scripts/cluster.sh up`` started (``MTLREC_CLUSTER_DIR``, else
``.cluster/``), with a small generated log under ``--work``:

1. A feature job's driver is SIGKILLed between its executors' write and the delta-rs
   commit (``tests/cluster_crash_driver.py``): the table must stay at its version.
2. Training, submitted with ``ray job submit``, runs ``EPOCHS`` epochs once undisturbed;
   then again, and right after its first checkpoint the Ray worker node (``ray-node-1``,
   one of the two train workers) is SIGKILLed with everything it started, and
   ``scripts/cluster.sh restart ray-node-1`` brings a node back, as a cluster manager
   would. The run must restart its worker group from that checkpoint
   (``run.max_failures``), not from scratch, and end within ``AUC_TOLERANCE`` of the
   undisturbed run per binary task (the reliability suite's bound for a killed worker).

(The third fault, an executor JVM killed mid-task, is in ``tests/test_local_cluster.py``.)
Prints what it saw; exits 1 when an expectation fails, 2 when the cluster is not up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the repository's packages

from jobs.generate_logs import main as generate_logs  # noqa: E402
from mtlrec.lake import Lake  # noqa: E402
from mtlrec.tables import BRONZE_EVENTS  # noqa: E402

EPOCHS = 3
AUC_TOLERANCE = 0.02  # tests/reliability/test_training_faults.py
BINARY_TASKS = ("click", "add_to_cart", "purchase")
# The cluster run's sizes, shared with tests/test_local_cluster.py: each Spark worker offers
# one 1-core executor of this size; Ray gets a node per train worker, one CPU each.
SMALL = [
    "spark.executor_memory=512m",
    "spark.executor_cores=1",
    "spark.driver_memory=1g",
    "spark.shuffle_partitions=2",
    "features.gold.shuffle_partitions=2",
    "features.gold.text.enabled=false",  # minutes of model loading, covered elsewhere
    "lake.row_group_bytes=16384",
    "ray.num_workers=2",
    "ray.cpus_per_worker=1",
    "model.embedding_dim=4",
    "model.bottom_hidden=[16]",
    "model.expert_hidden=[16]",
    "model.num_experts=2",
    "model.tower_hidden=[8]",
    "train.batch_size=256",
    "train.eval_batch_size=1024",
    "train.schedule.warmup_steps=2",
]
GENERATOR = [
    "generator.num_users=80",
    "generator.num_items=60",
    "generator.num_days=4",
    "generator.processes=1",
    "generator.seed=5",
]


def _cluster_state(folder: Path) -> dict[str, str]:
    state = folder / "cluster.env"
    if not state.is_file():
        print(
            f"cluster_faults: no cluster up in {folder}; run scripts/cluster.sh up", file=sys.stderr
        )
        raise SystemExit(2)
    pairs = (line.split("=", 1) for line in state.read_text().splitlines() if "=" in line)
    return {k: v.strip('"') for k, v in pairs}


def _check(ok: bool, what: str) -> None:
    print(f"  {'ok' if ok else 'FAILED'}: {what}", flush=True)
    if not ok:
        raise SystemExit(1)


def driver_killed_before_commit(master: str, lake: Lake, overrides: list[str]) -> None:
    print(f"1. driver killed between write and commit of {BRONZE_EVENTS}", flush=True)
    before = (lake.version(BRONZE_EVENTS), lake.read_arrow(BRONZE_EVENTS).num_rows)
    crashed = subprocess.run(
        [
            "scripts/submit.sh",
            "--master",
            master,
            "tests/cluster_crash_driver.py",
            BRONZE_EVENTS,
            "--stage",
            "bronze",
            *overrides,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    line = next((x for x in crashed.stdout.splitlines() if x.startswith("crash: ")), "")
    print(f"  exit {crashed.returncode}; {line}")
    _check(crashed.returncode != 0 and bool(line), "the driver died after the write")
    write_dir = line.split("files written to ", 1)[1].split(";", 1)[0]
    staged = list((Path(lake.table_uri(BRONZE_EVENTS)) / write_dir).rglob("*.parquet"))
    after = (lake.version(BRONZE_EVENTS), lake.read_arrow(BRONZE_EVENTS).num_rows)
    print(f"  staged files never committed: {len(staged)}; (version, rows) {before} -> {after}")
    _check(bool(staged) and after == before, "the table stays at its previous version")


def _train(name: str, overrides: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["scripts/cluster.sh", "train", *overrides, "--set", f"run.name={name}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _log_of(run: subprocess.Popen[str], name: str) -> str:
    log, _ = run.communicate()
    if run.returncode != 0:
        print(log[-3000:])
    _check(run.returncode == 0, f"{name} finished (exit {run.returncode})")
    return log


def _registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints the controller has registered (a checkpoint directory exists on disk
    before every rank has reported it)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(snapshot.get("checkpoint_results", []))


def _final(runs: Path, name: str) -> dict[str, float | None]:
    metrics = json.loads((runs / name / "metrics.json").read_text())
    epochs = [int(record["epoch"]) for record in metrics["history"]]
    _check(epochs == list(range(EPOCHS)), f"{name}: epochs {epochs}")
    final: dict[str, float | None] = metrics["final"]
    return final


def ray_node_killed_mid_run(folder: Path, runs: Path, overrides: list[str]) -> None:
    print(f"2. Ray worker node killed after the first checkpoint of a {EPOCHS}-epoch run")
    for name in ("faults-clean", "faults-killed"):  # an earlier run's checkpoints would count
        shutil.rmtree(runs / name, ignore_errors=True)
    _log_of(_train("faults-clean", overrides), "the undisturbed run")
    want = _final(runs, "faults-clean")

    killed = _train("faults-killed", overrides)
    while _registered_checkpoints(runs / "faults-killed") == 0 and killed.poll() is None:
        time.sleep(0.2)
    node_pid = int((folder / "pids/ray-node-1.pid").read_text())
    os.killpg(node_pid, signal.SIGKILL)
    registered = _registered_checkpoints(runs / "faults-killed")
    print(f"  killed ray-node-1 (process group {node_pid}) with {registered} checkpoint(s)")
    while Path(f"/proc/{node_pid}").exists():  # `restart` refuses while the pid lives
        time.sleep(0.1)
    restarted = subprocess.run(
        ["scripts/cluster.sh", "restart", "ray-node-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    print(f"  {restarted.stdout.strip() or restarted.stderr.strip()}")
    log = _log_of(killed, "the interrupted run")
    for line in [x for x in log.splitlines() if "RETRY" in x or "died" in x.lower()][:4]:
        print(f"  | {line[:160]}")
    _check(registered < EPOCHS, "the kill came before the last epoch's checkpoint")
    # `ray job submit` may show a worker's line twice; a rerun epoch logs a different one.
    epoch_0 = {x for x in log.splitlines() if "mtlrec.train: epoch 0: " in x}
    _check(len(epoch_0) == 1, "epoch 0 ran once: resumed from its checkpoint")
    got = _final(runs, "faults-killed")
    for task in BINARY_TASKS:
        key = f"test/{task}/auc"
        mine, theirs = got[key], want[key]
        if mine is None or theirs is None:  # a test day without a positive
            _check(mine is theirs, f"{key} undefined in both runs")
            continue
        diff = abs(mine - theirs)
        _check(diff <= AUC_TOLERANCE, f"{key} {mine:.4f} vs {theirs:.4f} (|diff| {diff:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()
    folder = Path(os.environ.get("MTLREC_CLUSTER_DIR", ROOT / ".cluster")).resolve()
    master = _cluster_state(folder)["SPARK_MASTER_URL"]
    work = args.work.resolve()
    sets = [
        f"lake.root={work}/lake",
        f"lake.raw_root={work}/raw",
        f"generator.truth_root={work}/truth",
        f"run.storage_path={work}/runs",
        *SMALL,
        f"train.epochs={EPOCHS}",
        *args.set,
    ]
    overrides = [a for s in sets for a in ("--set", s)]
    lake = Lake(f"{work}/lake")
    if not (work / "lake/gold/examples").is_dir():
        print(f"generating a small log and building its features on {master}", flush=True)
        generate = [*sets, *GENERATOR]
        if generate_logs(["--overwrite", *[a for s in generate for a in ("--set", s)]]) != 0:
            raise SystemExit(1)
        subprocess.run(
            [
                "scripts/submit.sh",
                "--master",
                master,
                "jobs/build_features.py",
                "--stage",
                "all",
                *overrides,
            ],
            cwd=ROOT,
            check=True,
        )
    driver_killed_before_commit(master, lake, overrides)
    ray_node_killed_mid_run(folder, work / "runs", overrides)
    print("all faults recovered as expected")


if __name__ == "__main__":
    main()
