"""What scripts/cluster.sh needs from Python: sizes from the config, free ports, readiness.

    python scripts/local_cluster.py sizes [--config FILE] [--set k=v ...]
    python scripts/local_cluster.py ports-free NAME=PORT ...
    python scripts/local_cluster.py wait-spark UI_URL WORKERS TIMEOUT_S
    python scripts/local_cluster.py wait-ray ADDRESS NODES TIMEOUT_S   (inside the Ray namespace)
    python scripts/local_cluster.py spark-workers UI_URL
    python scripts/local_cluster.py ray-start [ray start options]   (a node, without Ray Client)

Exit status 2 with one line on stderr for a bad config or a taken port; 1 when a cluster
does not come up in time.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import socket
import sys
import time
import urllib.request
from typing import Any

from jobs.config import job_config
from mtlrec.config import add_config_arguments


def sizes(argv: list[str]) -> None:
    """Shell assignments: each Spark worker offers one executor of the config's size, and
    each Ray node the CPUs of one train worker, so the workers spread over the nodes."""
    parser = argparse.ArgumentParser(prog="local_cluster.py sizes")
    add_config_arguments(parser)
    cfg = job_config(parser.parse_args(argv), "cluster")
    print(f"SPARK_WORKER_CORES={cfg.spark.executor_cores}")
    print(f"SPARK_WORKER_MEMORY={cfg.spark.executor_memory}")
    print(f"RAY_NODES={cfg.ray.num_workers}")
    print(f"RAY_NODE_CPUS={math.ceil(cfg.ray.cpus_per_worker)}")


def ports_free(pairs: list[str]) -> None:
    taken = []
    for pair in pairs:
        name, port = pair.rsplit("=", 1)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", int(port)))
            except OSError:
                taken.append(f"{port} ({name})")
    if taken:
        print(
            f"cluster: port(s) taken on 127.0.0.1: {', '.join(taken)}; stop what holds "
            "them or choose others with the environment variables named",
            file=sys.stderr,
        )
        raise SystemExit(2)


def _master_state(ui_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{ui_url}/json/", timeout=10) as response:
        state: dict[str, Any] = json.load(response)
    return state


def wait_spark(ui_url: str, workers: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    alive = 0
    while time.monotonic() < deadline:
        try:
            alive = sum(w["state"] == "ALIVE" for w in _master_state(ui_url)["workers"])
        except OSError:
            alive = 0
        if alive >= workers:
            return
        time.sleep(1)
    print(
        f"cluster: Spark master has {alive} of {workers} workers after {timeout_s:.0f} s",
        file=sys.stderr,
    )
    raise SystemExit(1)


def spark_workers(ui_url: str) -> None:
    """One line per worker: id, host:port, cores, memory, state."""
    for worker in _master_state(ui_url)["workers"]:
        print(
            f"  {worker['id']} {worker['host']}:{worker['port']} cores={worker['cores']} "
            f"memory={worker['memory']}MiB {worker['state']}"
        )


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def wait_ray(address: str, nodes: int, timeout_s: float) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    # ray.init waits for the GCS without end; a head that died at start-up (its log says
    # why) must fail the bring-up instead.
    host, port = address.rsplit(":", 1)
    while not _answers(host, int(port)):
        if time.monotonic() > deadline:
            print(
                f"cluster: Ray's head does not answer on {address} after {timeout_s:.0f} s; "
                "see logs/ray-head.log",
                file=sys.stderr,
            )
            raise SystemExit(1)
        time.sleep(1)
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        alive: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            alive = [n for n in ray.nodes() if n["Alive"]]
            if len(alive) >= nodes:
                for node in alive:
                    cpus = node["Resources"].get("CPU", 0)
                    print(f"  node {node['NodeID']} {node['NodeManagerAddress']} CPU={cpus:g}")
                return
            time.sleep(1)
    finally:
        ray.shutdown()
    print(
        f"cluster: Ray has {len(alive)} of {nodes} nodes after {timeout_s:.0f} s", file=sys.stderr
    )
    raise SystemExit(1)


def ray_start(argv: list[str]) -> None:
    """``ray start ARGS`` without the Ray Client server (``ray://``, which nothing here uses).

    ``ray start`` launches that server whenever grpc is importable (tensorboard brings it),
    in parallel with the raylet; the server gives up when the raylet has not registered
    within 30 s, and under ``--block`` its exit takes the whole node down. With the
    dashboard's dozen processes starting at the same time, a loaded machine misses those
    30 s. Ray decides from ``get_ray_client_dependency_error`` (pinned 2.55.1), so the
    node is started as if the Ray Client's dependency were missing.
    """
    from ray.scripts import scripts

    scripts.get_ray_client_dependency_error = lambda: ImportError("Ray Client not used")
    scripts.cli(args=["start", *argv], prog_name="ray")


def main() -> None:
    command, *rest = sys.argv[1:] or ["--help"]
    if command == "sizes":
        sizes(rest)
    elif command == "ports-free":
        ports_free(rest)
    elif command == "wait-spark":
        wait_spark(rest[0], int(rest[1]), float(rest[2]))
    elif command == "spark-workers":
        spark_workers(rest[0])
    elif command == "ray-start":
        ray_start(rest)
    elif command == "wait-ray":
        wait_ray(rest[0], int(rest[1]), float(rest[2]))
    else:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
