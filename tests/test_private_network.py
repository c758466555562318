"""mtlrec.private_network and when jobs.train uses it (the end-to-end check, Ray's servers
reachable only over loopback, is tests/reliability/test_training_faults.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from jobs.config import PipelineConfig
from jobs.train import _needs_outside_network
from mtlrec import private_network
from mtlrec.config import load_config

PROBE = """
import socket
from mtlrec import private_network
private_network.bring_loopback_up()
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname(), timeout=5)
print(",".join(private_network.interfaces()))
"""


def test_a_process_in_the_namespace_has_only_a_working_loopback() -> None:
    unavailable = private_network.unavailable_reason()
    if unavailable is not None:
        pytest.skip(f"private network namespaces are not available here: {unavailable}")
    unshare = shutil.which("unshare")
    assert unshare is not None
    done = subprocess.run(
        [unshare, "--user", "--map-root-user", "--net", sys.executable, "-c", PROBE],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lo"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], None),
        (["lake.root=file:///data/lake"], None),
        (["lake.root=s3://bucket/lake"], "lake.root is a s3:// location"),
        (["run.storage_path=s3://bucket/runs"], "run.storage_path is a s3:// location"),
        (
            ["run.mlflow_tracking_uri=http://user:pw@mlflow:5000"],
            "run.mlflow_tracking_uri is a http:// location",
        ),
    ],
)
def test_a_run_that_needs_the_network_stays_on_the_host_network(
    overrides: list[str], expected: str | None
) -> None:
    cfg = load_config(PipelineConfig, None, overrides)
    assert _needs_outside_network(cfg) == expected
