"""An object-store lake: write -> commit -> read round trips against a local S3 server.

The server is moto's (a PyPI package, bound to 127.0.0.1 on a free port). Credentials
reach every client through the environment only, the way a cluster provides them, so
the round trip also proves that none has to be written into the config. Spark cannot
take part here: the hadoop-aws jars are not in pyspark's jars directory and Maven is
out of reach, so Spark's S3 leg is left to a cluster (docs/cluster.md).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from petastorm import make_batch_reader

from mtlrec.config import LakeConfig
from mtlrec.lake import Lake
from mtlrec.storage import LakeStorage, StorageError, redact

BUCKET = "mtlrec-test"
ACCESS_KEY = "AKIAMOTOEXAMPLE01"
SECRET_KEY = "moto-secret-key-not-real-0123456789"


# The server runs in a child process: some delta-rs calls (``DeltaTable.is_deltatable``)
# block while holding the GIL, which would starve a server thread in this process.
_SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("PORT", server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test closes the pipe
server.stop()
"""


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        while not line.startswith("PORT "):  # moto prints a banner first
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"moto server exited with {proc.wait()}")
        port = int(line.split()[1])
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def aws_env(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> str:
    """Credentials and endpoint in the environment only, as on a cluster node."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


@pytest.fixture()
def s3_lake(aws_env: str, request: pytest.FixtureRequest) -> Lake:
    # A fresh prefix per test: the bucket outlives tests within the module.
    root = f"s3://{BUCKET}/{request.node.name}/lake"
    return Lake.from_config(LakeConfig(root=root, row_group_bytes=4 * 1024))


def _examples(start: int, rows: int) -> pa.Table:
    ids = list(range(start, start + rows))
    return pa.table(
        {
            "example_id": pa.array(ids, pa.int64()),
            "user_id": pa.array([f"u{i % 17}" for i in ids]),
            "score": pa.array([i / 10 for i in ids], pa.float64()),
            "dt": pa.array(["2026-10-01" if i % 2 else "2026-10-02" for i in ids]),
        }
    )


def test_delta_round_trip_through_lake_and_petastorm(s3_lake: Lake) -> None:
    first = _examples(0, 3000)
    second = _examples(3000, 1000)
    r0 = s3_lake.write_arrow(first, "gold/examples", partition_by=["dt"], run_id="run-0")
    r1 = s3_lake.write_arrow(second, "gold/examples", run_id="run-1")
    again = s3_lake.write_arrow(second, "gold/examples", run_id="run-1")
    assert (r0.version, r1.version) == (0, 1)
    assert again.skipped and s3_lake.version("gold/examples") == 1
    assert r0.rows + r1.rows == 4000

    # Readers see the committed snapshot through delta-rs, with nothing but S3 URIs.
    files = s3_lake.snapshot_files("gold/examples")
    assert files and all(f.startswith(f"s3://{BUCKET}/") for f in files)
    table = DeltaTable(s3_lake.table_uri("gold/examples"), storage_options=s3_lake.storage_options)
    assert len(table.file_uris()) == len(files)

    back = s3_lake.read_arrow("gold/examples").sort_by("example_id")
    assert back.column("example_id").to_pylist() == list(range(4000))
    assert back.select(["user_id", "score", "dt"]).equals(
        pa.concat_tables([first, second]).select(["user_id", "score", "dt"])
    )
    day = s3_lake.read_arrow("gold/examples", filters=[("dt", "=", "2026-10-01")])
    assert day.num_rows == 2000 and set(day.column("dt").to_pylist()) == {"2026-10-01"}

    # Petastorm streams the snapshot's files from S3 through the storage's S3 filesystem.
    assert isinstance(s3_lake.storage.filesystem(), pafs.S3FileSystem)
    urls, filesystem = s3_lake.storage.petastorm_source(files)
    seen: list[int] = []
    with make_batch_reader(
        urls,
        filesystem=filesystem,
        reader_pool_type="thread",
        workers_count=1,
        num_epochs=1,
        shuffle_row_groups=False,
        schema_fields=["example_id", "score"],
    ) as reader:
        for batch in reader:
            seen.extend(int(v) for v in batch.example_id)
    assert sorted(seen) == list(range(4000))


def test_petastorm_shards_cover_the_s3_snapshot_exactly_once(s3_lake: Lake) -> None:
    s3_lake.write_arrow(_examples(0, 6000), "gold/examples", partition_by=["dt"])
    files = s3_lake.snapshot_files("gold/examples")
    urls, filesystem = s3_lake.storage.petastorm_source(files)
    row_groups = 0
    for uri in files:
        fs, path = s3_lake.storage.filesystem_for(uri)
        with fs.open_input_file(path) as handle:
            row_groups += pq.ParquetFile(handle).num_row_groups
    shard_count = 2
    assert row_groups >= 2 * shard_count, "the writer must give every shard work"
    per_shard = []
    for shard in range(shard_count):
        ids: list[int] = []
        with make_batch_reader(
            urls,
            filesystem=filesystem,
            reader_pool_type="dummy",
            num_epochs=1,
            cur_shard=shard,
            shard_count=shard_count,
            schema_fields=["example_id"],
        ) as reader:
            for batch in reader:
                ids.extend(int(v) for v in batch.example_id)
        per_shard.append(ids)
    assert all(per_shard), "every shard reads rows"
    assert sorted(per_shard[0] + per_shard[1]) == list(range(6000))


def test_racing_commits_on_s3_both_land(s3_lake: Lake) -> None:
    """Two writers that read the same version both commit: S3 put-if-absent, no lost write.

    Without conditional writes (or a lock) the second commit would overwrite the first's
    log entry and silently drop its files.
    """
    s3_lake.write_arrow(_examples(0, 10), "silver/events")
    stale = [s3_lake.delta_table("silver/events") for _ in range(2)]
    errors: list[BaseException] = []

    def commit(table: DeltaTable, start: int) -> None:
        try:
            from deltalake import write_deltalake

            write_deltalake(table, _examples(start, 10), mode="append")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=commit, args=(t, 100 * (i + 1))) for i, t in enumerate(stale)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert s3_lake.version("silver/events") == 2
    ids = sorted(s3_lake.read_arrow("silver/events").column("example_id").to_pylist())
    assert ids == [*range(10), *range(100, 110), *range(200, 210)]


def test_credentials_never_reach_a_repr_or_log_line(aws_env: str) -> None:
    cfg = LakeConfig(
        root=f"s3://{BUCKET}/lake",
        storage_options={
            "aws_access_key_id": "AKIACONFIGKEY0001",
            "aws_secret_access_key": "config-secret-value-1234",
            "aws_session_token": "config-session-token-5678",
        },
    )
    storage = LakeStorage.from_config(cfg)
    shown = repr(storage)
    assert "config-secret-value-1234" not in shown and "config-session-token-5678" not in shown
    assert "AKIACONFIGKEY0001" not in shown and "***" in shown
    # The LakeConfig itself (a pydantic model) and the env secrets, through redact().
    logged = storage.redact(f"{cfg!r} endpoint={aws_env} env={SECRET_KEY}")
    for secret in ("config-secret-value-1234", "config-session-token-5678", SECRET_KEY):
        assert secret not in logged
    assert aws_env in logged, "non-secret values stay readable"
    conf_text = "\n".join(f"{k} {v}" for k, v in storage.spark_conf().items())
    assert "config-secret-value-1234" not in redact(conf_text)
    assert "s3://***@host" in redact("s3://AKIA:hunter2@host/x")


def test_one_resolution_feeds_delta_rs_pyarrow_and_hadoop(aws_env: str) -> None:
    storage = LakeStorage(f"s3://{BUCKET}/lake", {"aws_region": "eu-west-1"})
    options = storage.delta_options()
    assert options["AWS_ENDPOINT_URL"] == aws_env  # from the environment
    assert options["AWS_ALLOW_HTTP"] == "true"  # implied by the http:// endpoint
    assert options["AWS_REGION"] == "eu-west-1"  # config wins over the environment
    assert "AWS_SECRET_ACCESS_KEY" not in options, "env credentials stay in the env"
    conf = storage.spark_conf()
    assert conf["spark.hadoop.fs.s3a.endpoint"] == aws_env
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"].endswith(
        "DefaultCredentialsProvider"
    )
    assert "spark.hadoop.fs.s3a.secret.key" not in conf
    key = f"{BUCKET}/lake/gold/x/part-0.parquet"
    filesystem, path = storage.filesystem_for(f"s3://{key}")
    assert isinstance(filesystem, pafs.S3FileSystem) and path == key


def test_aws_without_custom_endpoint_uses_virtual_hosting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    storage = LakeStorage("s3://bucket/lake", {"AWS_REGION": "us-west-2"})
    assert storage.delta_options() == {"AWS_REGION": "us-west-2"}
    conf = storage.spark_conf()
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "false"
    assert "spark.hadoop.fs.s3a.endpoint" not in conf


def test_local_roots_and_bad_roots(tmp_path: Path) -> None:
    local = LakeStorage(str(tmp_path))
    assert local.delta_options() == {} and local.spark_conf() == {}
    assert isinstance(local.filesystem(), pafs.LocalFileSystem)
    with pytest.raises(StorageError, match="names no bucket"):
        LakeStorage("s3:///lake")
    with pytest.raises(StorageError, match=r"AWS_ENDPOINT_URL: expected http\(s\)"):
        LakeStorage("s3://b/lake", {"AWS_ENDPOINT_URL": "localhost:9000"})
    with pytest.raises(StorageError, match=r"is on S3 but lake\.root"):
        local.filesystem_for("s3://b/lake/x.parquet")
