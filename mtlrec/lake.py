"""Delta tables under one lake root, written by Spark or Arrow and committed by delta-rs.

DESIGN.md section 5. Without the Delta jars, Spark writes Parquet files in
parallel into a fresh write directory inside the table (``<table>/<write-id>/``),
then the driver commits exactly those files to the Delta log in one atomic
delta-rs transaction: add actions with size, partition values and column stats,
plus remove actions for whatever an overwrite replaces. A write that dies
before its commit leaves only unreferenced files, which no reader sees, because
every reader takes its file list from the table snapshot, never from a listing.

Where the Delta jars are on Spark's classpath, Spark writes and reads natively
with ``format("delta")``; both paths produce the same open protocol.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from mtlrec.config import LakeConfig
from mtlrec.errors import InputError
from mtlrec.log import get_logger, log_stage
from mtlrec.storage import LakeStorage

WriteMode = Literal["append", "overwrite"]
PartitionSpec = Mapping[str, str | None]
"""Values of some or all partition columns (None: the null partition); it matches every
partition that agrees on the columns it names."""
ReplacePartitions = Literal["written"] | Sequence[PartitionSpec] | None
PartitionFilter = tuple[str, Literal["=", "!=", "in", "not in"], Any]

_TABLE_NAME = re.compile(r"^(bronze|silver|gold)/[a-z][a-z0-9_]*$")
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_log = get_logger("lake")


class LakeError(InputError, RuntimeError):
    """A lake operation that cannot proceed; the message names the table."""


class SchemaMismatchError(LakeError):
    pass


@dataclass(frozen=True)
class CommitResult:
    version: int | None
    files: int
    rows: int
    bytes: int
    skipped: bool = False


def validate_table_name(name: str) -> str:
    """``layer/name``: nothing a caller passes can point outside the lake root."""
    if not _TABLE_NAME.fullmatch(name):
        raise LakeError(
            f"invalid table name {name!r}: expected '<bronze|silver|gold>/<name>' "
            "with name matching [a-z][a-z0-9_]*"
        )
    return name


def _spark_path(uri: str) -> str:
    """Hadoop names the S3 connector s3a; delta-rs and pyarrow say s3."""
    return "s3a://" + uri[len("s3://") :] if uri.startswith("s3://") else uri


class Lake:
    """Delta tables under ``root``; one instance per job, cheap to create."""

    def __init__(
        self,
        root: str,
        storage_options: Mapping[str, str] | None = None,
        row_group_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.root = root if "://" in root else str(Path(root).resolve())
        self.storage = LakeStorage(self.root, storage_options)
        self.storage_options = self.storage.delta_options()
        self.row_group_bytes = row_group_bytes

    @classmethod
    def from_config(cls, cfg: LakeConfig) -> Lake:
        return cls(cfg.root, cfg.storage_options, cfg.row_group_bytes)

    def check_writable(self) -> None:
        """Raise ``LakeError`` naming the root if it cannot be written; writes nothing.

        Jobs call this before Spark starts, so an unwritable root is one message rather
        than a Java traceback from deep inside a Parquet writer. A root that does not
        exist yet is probed at its nearest existing parent, which is where the job's
        first write will create it.
        """
        filesystem, path = self.storage.filesystem_for(self.root)
        path = path.rstrip("/")
        try:
            if not self.storage.is_s3:  # object stores have no directories to walk
                while (info := filesystem.get_file_info(path)).type == pafs.FileType.NotFound:
                    path = path.rsplit("/", 1)[0] or "/"
                if info.type != pafs.FileType.Directory:
                    raise LakeError(
                        f"lake.root {self.root} is not writable: {path} is not a directory"
                    )
            probe = f"{path.rstrip('/')}/.mtlrec-write-probe-{uuid.uuid4().hex}"
            with filesystem.open_output_stream(probe) as out:
                out.write(b"probe")
            filesystem.delete_file(probe)
        except (OSError, ValueError) as exc:
            reason = self.storage.redact(str(exc))
            raise LakeError(f"lake.root {self.root} is not writable: {reason}") from exc

    # ------------------------------------------------------------------ inspection
    def table_uri(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{validate_table_name(name)}"

    def exists(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self.table_uri(name), self.storage_options or None)

    def delta_table(self, name: str, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(
                self.table_uri(name), version=version, storage_options=self.storage_options or None
            )
        except TableNotFoundError:
            raise LakeError(f"table {name!r} does not exist under {self.root}") from None

    def version(self, name: str) -> int:
        return self.delta_table(name).version()

    def committed_run(self, name: str, run_id: str) -> bool:
        """True when a commit carrying ``run_id`` as its application transaction exists."""
        return self.exists(name) and self.delta_table(name).transaction_version(run_id) is not None

    def snapshot_files(
        self,
        name: str,
        version: int | None = None,
        filters: Sequence[PartitionFilter] | None = None,
    ) -> list[str]:
        """Absolute URIs of the snapshot's data files matching partition ``filters``.

        The path part is literal, as Hadoop and ``LakeStorage.filesystem_for`` read it:
        the log's percent-encoding is undone once, so a hive-escaped directory such as
        ``dt=%2Fabs`` stays as it is on disk.
        """
        table = self.delta_table(name, version)
        base = table.table_uri.rstrip("/")
        return [f"{base}/{unquote(a['path'])}" for a in _add_actions(table, filters)]

    def snapshot_partitions(
        self, name: str, version: int | None = None
    ) -> list[dict[str, str | None]]:
        """Distinct partition values present in the snapshot."""
        seen: dict[tuple[tuple[str, str | None], ...], dict[str, str | None]] = {}
        for action in _add_actions(self.delta_table(name, version), None):
            values = action["partition_values"]
            seen[tuple(sorted(values.items()))] = values
        return list(seen.values())

    # ------------------------------------------------------------------ reading
    def read_table(
        self,
        spark: SparkSession,
        name: str,
        version: int | None = None,
        filters: Sequence[PartitionFilter] | None = None,
    ) -> DataFrame:
        """A Spark DataFrame over the snapshot's files (or native Delta when the jars exist)."""
        table = self.delta_table(name, version)
        if _delta_jars(spark):
            reader = spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            frame = reader.load(_spark_path(self.table_uri(name)))
            return _apply_filters(frame, filters)
        arrow_schema = pa.schema(table.schema().to_arrow())
        spark_schema = from_arrow_schema(arrow_schema)
        base = table.table_uri.rstrip("/")
        # Files are grouped by write directory so Spark restores partition columns from
        # the hive-style path below each one.
        groups: dict[str, list[str]] = defaultdict(list)
        for action in _add_actions(table, filters):
            path = unquote(action["path"])
            groups[path.split("/", 1)[0]].append(_spark_path(f"{base}/{path}"))
        frames = [
            spark.read.schema(spark_schema)
            .option("basePath", _spark_path(f"{base}/{write_dir}"))
            .parquet(*files)
            for write_dir, files in sorted(groups.items())
        ]
        if not frames:
            return spark.createDataFrame([], spark_schema)
        frame = frames[0]
        for other in frames[1:]:
            frame = frame.unionByName(other)
        return frame.select(*arrow_schema.names)

    def read_arrow(
        self,
        name: str,
        version: int | None = None,
        filters: Sequence[PartitionFilter] | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """The snapshot as one Arrow table, in a plain Python process (no Spark).

        delta-rs resolves the snapshot (files and partition values); pyarrow reads the
        files. (delta-rs's own Arrow export emits string views that pyarrow 14 cannot
        import, DESIGN.md section 3.) Meant for small tables and tests: training streams
        through Petastorm instead.
        """
        table = self.delta_table(name, version)
        schema = pa.schema(table.schema().to_arrow())
        wanted = list(columns) if columns is not None else schema.names
        partition_cols = list(table.metadata().partition_columns)
        base = table.table_uri.rstrip("/")
        pieces = []
        for action in _add_actions(table, filters):
            filesystem, path = self.storage.filesystem_for(f"{base}/{unquote(action['path'])}")
            data_cols = [c for c in wanted if c not in partition_cols]
            piece = pq.read_table(path, filesystem=filesystem, columns=data_cols)
            for col in partition_cols:
                if col in wanted:
                    value = action["partition_values"].get(col)
                    piece = piece.append_column(
                        schema.field(col),
                        pa.array([value] * piece.num_rows).cast(schema.field(col).type),
                    )
            pieces.append(piece.select(wanted).cast(pa.schema([schema.field(c) for c in wanted])))
        if not pieces:
            return pa.schema([schema.field(c) for c in wanted]).empty_table()
        return pa.concat_tables(pieces)

    # ------------------------------------------------------------------ writing
    def write_table(
        self,
        df: DataFrame,
        name: str,
        mode: WriteMode = "append",
        partition_by: Sequence[str] | None = None,
        replace_partitions: ReplacePartitions = None,
        run_id: str | None = None,
    ) -> CommitResult:
        """Write ``df`` with Spark (in parallel) and commit it atomically.

        ``mode="overwrite"`` replaces the whole table when ``replace_partitions`` is None,
        the partitions present in ``df`` when it is ``"written"``, or every partition
        matching one of the listed specs otherwise (a spec may name only some partition
        columns, e.g. ``{"ingest_dt": d}`` of a table partitioned by dt and ingest_dt);
        written files must fall inside them. A ``run_id`` already committed to this table makes the
        call a no-op, so a retried job never appends twice.
        """
        started = time.monotonic()
        if run_id is not None and self.committed_run(name, run_id):
            _log.info("%s: run %s already committed, skipping", name, run_id)
            return CommitResult(self.version(name), 0, 0, 0, skipped=True)
        partition_cols = self._partition_columns(name, partition_by)
        arrow_schema = to_arrow_schema(df.schema)
        self._check_schema(name, arrow_schema)
        if _delta_jars(df.sparkSession):
            return self._write_native(df, name, mode, partition_cols, replace_partitions, run_id)

        write_dir = self.stage_spark_files(df, name, partition_cols)
        result = self._commit_write_dir(
            name, write_dir, arrow_schema, partition_cols, mode, replace_partitions, run_id
        )
        log_stage(
            _log,
            f"write {name}",
            version=result.version,
            files=result.files,
            rows=result.rows,
            bytes=result.bytes,
            seconds=time.monotonic() - started,
        )
        return result

    def stage_spark_files(self, df: DataFrame, name: str, partition_cols: Sequence[str]) -> str:
        """Spark writes ``df`` as Parquet into a new write directory; nothing is committed.

        Until ``write_table`` commits them, these files are invisible to every reader.
        """
        write_dir = _new_write_dir()
        writer = df.write.mode("error").option("parquet.block.size", str(self.row_group_bytes))
        if partition_cols:
            writer = writer.partitionBy(*partition_cols)
        writer.parquet(_spark_path(f"{self.table_uri(name)}/{write_dir}"))
        return write_dir

    @contextmanager
    def staged(
        self, df: DataFrame, name: str, partition_cols: Sequence[str] = ()
    ) -> Iterator[DataFrame]:
        """``df`` computed once into an uncommitted write directory of table ``name`` and
        read back from there; the directory is deleted when the block ends.

        For an expensive frame that feeds several writes: each then reads Parquet instead
        of computing the frame again. The copy is on the lake's storage, not in memory
        (Spark's cache, even DISK_ONLY, builds its column buffers in the heap), and, like
        any uncommitted write, no reader of the table sees it.
        """
        write_dir = self.stage_spark_files(df, name, partition_cols)
        uri = f"{self.table_uri(name)}/{write_dir}"
        try:
            yield (
                df.sparkSession.read.schema(df.schema).parquet(_spark_path(uri)).select(*df.columns)
            )
        finally:
            filesystem, path = self.storage.filesystem_for(uri)
            filesystem.delete_dir(path)

    def write_arrow(
        self,
        data: pa.Table,
        name: str,
        mode: WriteMode = "append",
        partition_by: Sequence[str] | None = None,
        replace_partitions: ReplacePartitions = None,
        run_id: str | None = None,
    ) -> CommitResult:
        """The same contract as ``write_table`` for Arrow data in a plain Python process."""
        uri = self.table_uri(name)
        if run_id is not None and self.committed_run(name, run_id):
            return CommitResult(self.version(name), 0, 0, 0, skipped=True)
        partition_cols = self._partition_columns(name, partition_by)
        self._check_schema(name, data.schema)
        write_dir = _new_write_dir()
        filesystem, base_path = self.storage.filesystem_for(f"{uri}/{write_dir}")
        rows_per_group = max(
            1024, int(self.row_group_bytes / max(1.0, data.nbytes / max(1, data.num_rows)))
        )
        pads.write_dataset(
            data,
            base_path,
            filesystem=filesystem,
            format="parquet",
            partitioning=list(partition_cols) or None,
            partitioning_flavor="hive" if partition_cols else None,
            basename_template=f"part-{uuid.uuid4().hex}-{{i}}.parquet",
            max_rows_per_group=rows_per_group,
            min_rows_per_group=min(rows_per_group, max(1, data.num_rows)),
            existing_data_behavior="error",
        )
        return self._commit_write_dir(
            name, write_dir, data.schema, partition_cols, mode, replace_partitions, run_id
        )

    # ------------------------------------------------------------------ internals
    def _partition_columns(self, name: str, requested: Sequence[str] | None) -> list[str]:
        if not self.exists(name):
            return list(requested or [])
        existing = list(self.delta_table(name).metadata().partition_columns)
        if requested is not None and list(requested) != existing:
            raise LakeError(
                f"table {name!r} is partitioned by {existing}, "
                f"the write asked for {list(requested)}"
            )
        return existing

    def _check_schema(self, name: str, schema: pa.Schema) -> None:
        if not self.exists(name):
            return
        current = pa.schema(self.delta_table(name).schema().to_arrow())
        have = {f.name: f.type for f in current}
        new = {f.name: f.type for f in schema}
        if have != new:
            missing = sorted(set(have) - set(new))
            extra = sorted(set(new) - set(have))
            changed = sorted(k for k in set(have) & set(new) if have[k] != new[k])
            raise SchemaMismatchError(
                f"schema of the write does not match table {name!r}: "
                f"missing columns {missing}, unexpected columns {extra}, "
                f"changed types {[(k, str(have[k]), str(new[k])) for k in changed]}"
            )

    def _commit_write_dir(
        self,
        name: str,
        write_dir: str,
        schema: pa.Schema,
        partition_cols: list[str],
        mode: WriteMode,
        replace_partitions: ReplacePartitions,
        run_id: str | None,
    ) -> CommitResult:
        uri = self.table_uri(name)
        adds = _add_actions_for_dir(self.storage, uri, write_dir, partition_cols)
        commit = CommitProperties(
            custom_metadata={"mtlrec.write_dir": write_dir, "mtlrec.mode": mode},
            app_transactions=[Transaction(app_id=run_id, version=1)] if run_id else None,
        )
        rows = sum(json.loads(a.stats)["numRecords"] for a in adds)
        size = sum(a.size for a in adds)
        if not self.exists(name):
            try:
                create_table_with_add_actions(
                    uri,
                    _delta_schema(schema),
                    adds,
                    mode="error",
                    partition_by=partition_cols or None,
                    storage_options=self.storage_options or None,
                    commit_properties=commit,
                )
                return CommitResult(self.version(name), len(adds), rows, size)
            except Exception:
                if not self.exists(name):
                    raise
                # Another writer created the table first: fall through and commit on top.
        table = self.delta_table(name)
        removes: list[RemoveAction] = []
        if mode == "overwrite":
            removes = _removes_for(table, partition_cols, adds, replace_partitions)
        actions: list[AddAction | RemoveAction] = [*adds, *removes]
        table.create_write_transaction(
            actions,
            mode="append",
            schema=_delta_schema(schema),
            partition_by=partition_cols or None,
            commit_properties=commit,
        )
        return CommitResult(self.version(name), len(adds), rows, size)

    def _write_native(
        self,
        df: DataFrame,
        name: str,
        mode: WriteMode,
        partition_cols: list[str],
        replace_partitions: ReplacePartitions,
        run_id: str | None,
    ) -> CommitResult:
        writer = df.write.format("delta").mode(mode)
        if partition_cols:
            writer = writer.partitionBy(*partition_cols)
        if mode == "overwrite" and replace_partitions == "written":
            writer = writer.option("partitionOverwriteMode", "dynamic")
        elif mode == "overwrite" and replace_partitions is not None:
            assert not isinstance(replace_partitions, str)
            writer = writer.option("replaceWhere", _replace_where_sql(replace_partitions))
        if run_id is not None:
            writer = writer.option("txnAppId", run_id).option("txnVersion", "1")
        writer.save(_spark_path(self.table_uri(name)))
        return CommitResult(self.version(name), 0, 0, 0)


# ---------------------------------------------------------------------- helpers
def _new_write_dir() -> str:
    return f"w{datetime.utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


def _delta_jars(spark: SparkSession) -> bool:
    from mtlrec.spark import delta_jars_available

    return delta_jars_available(spark)


def _delta_schema(schema: pa.Schema) -> Any:
    from deltalake import Schema

    return Schema.from_arrow(schema)


def _add_actions(
    table: DeltaTable, filters: Sequence[PartitionFilter] | None
) -> list[dict[str, Any]]:
    """The snapshot's add actions as dicts with ``path`` and ``partition_values``."""
    rows = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    actions = []
    for row in rows:
        values = {k[len("partition.") :]: v for k, v in row.items() if k.startswith("partition.")}
        values = {k: (None if v is None else _partition_str(v)) for k, v in values.items()}
        if filters and not all(_matches(values, f) for f in filters):
            continue
        actions.append({"path": row["path"], "size": row["size_bytes"], "partition_values": values})
    return actions


def _partition_str(value: Any) -> str:
    return value.isoformat() if isinstance(value, date | datetime) else str(value)


def _matches(values: Mapping[str, str | None], flt: PartitionFilter) -> bool:
    column, op, operand = flt
    if column not in values:
        raise LakeError(f"filter on {column!r}, which is not a partition column")
    value = values[column]
    if op == "=":
        return value == str(operand)
    if op == "!=":
        return value != str(operand)
    wanted = {str(v) for v in operand}
    return (value in wanted) if op == "in" else (value not in wanted)


def _apply_filters(frame: DataFrame, filters: Sequence[PartitionFilter] | None) -> DataFrame:
    from pyspark.sql import functions as F

    for column, op, operand in filters or []:
        col = F.col(column).cast("string")
        if op == "=":
            frame = frame.where(col == str(operand))
        elif op == "!=":
            frame = frame.where(col != str(operand))
        elif op == "in":
            frame = frame.where(col.isin([str(v) for v in operand]))
        else:
            frame = frame.where(~col.isin([str(v) for v in operand]))
    return frame


def _partition_values_from_path(relative: str, partition_cols: list[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for segment in relative.split("/")[:-1]:
        key, sep, raw = segment.partition("=")
        if sep and key in partition_cols:
            text = unquote(raw)
            values[key] = None if text == _HIVE_NULL else text
    missing = [c for c in partition_cols if c not in values]
    if missing:
        raise LakeError(f"written file {relative!r} lacks partition directories for {missing}")
    return values


def _add_actions_for_dir(
    storage: LakeStorage, uri: str, write_dir: str, partition_cols: list[str]
) -> list[AddAction]:
    filesystem, base = storage.filesystem_for(f"{uri}/{write_dir}")
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    adds = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue  # _SUCCESS markers, checksums
        relative = info.path[len(base) :].lstrip("/")
        with filesystem.open_input_file(info.path) as handle:
            stats = _file_stats(pq.ParquetFile(handle).metadata, partition_cols)
        mtime = info.mtime
        adds.append(
            AddAction(
                path=f"{write_dir}/{relative}",
                size=int(info.size or 0),
                partition_values=_partition_values_from_path(relative, partition_cols),
                modification_time=int(mtime.timestamp() * 1000) if mtime else 0,
                data_change=True,
                stats=json.dumps(stats, default=str),
            )
        )
    return adds


def _file_stats(meta: pq.FileMetaData, partition_cols: list[str]) -> dict[str, Any]:
    """Delta file statistics (numRecords, min/max, nullCount) from the Parquet footer."""
    minimum: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    schema = meta.schema.to_arrow_schema()
    for col_index, field in enumerate(schema):
        if field.name in partition_cols or not _stats_supported(field.type):
            continue
        lows, highs, null_count, complete = [], [], 0, True
        for rg in range(meta.num_row_groups):
            column = meta.row_group(rg).column(col_index)
            st = column.statistics
            if st is None or not st.has_min_max:
                # No min/max (e.g. values too long for the writer's stats): only an
                # all-null chunk still leaves the file's min/max well defined.
                known_nulls = st.null_count if st is not None else None
                complete = complete and known_nulls == column.num_values
                null_count += known_nulls or 0
                continue
            lows.append(st.min)
            highs.append(st.max)
            null_count += st.null_count or 0
        nulls[field.name] = null_count
        if complete and lows:
            minimum[field.name] = _json_stat(min(lows))
            maximum[field.name] = _json_stat(max(highs))
    return {
        "numRecords": meta.num_rows,
        "minValues": minimum,
        "maxValues": maximum,
        "nullCount": nulls,
    }


def _stats_supported(dtype: pa.DataType) -> bool:
    return (
        pa.types.is_integer(dtype)
        or pa.types.is_floating(dtype)
        or pa.types.is_string(dtype)
        or pa.types.is_date(dtype)
        or pa.types.is_timestamp(dtype)
        or pa.types.is_boolean(dtype)
    )


def _json_stat(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _removes_for(
    table: DeltaTable,
    partition_cols: list[str],
    adds: list[AddAction],
    replace_partitions: ReplacePartitions,
) -> list[RemoveAction]:
    existing = _add_actions(table, None)
    if replace_partitions is None:
        doomed = existing
    else:
        if not partition_cols:
            raise LakeError("replace_partitions needs a partitioned table")
        if replace_partitions == "written":
            targets = {tuple(a.partition_values.get(c) for c in partition_cols) for a in adds}
            doomed = [
                a
                for a in existing
                if tuple(a["partition_values"].get(c) for c in partition_cols) in targets
            ]
        else:
            assert not isinstance(replace_partitions, str)
            specs = list(replace_partitions)
            for spec in specs:
                if not spec or not set(spec) <= set(partition_cols):
                    raise LakeError(
                        f"replace_partitions entry {dict(spec)} must name some of {partition_cols}"
                    )
            stray = [a.path for a in adds if not _in_specs(a.partition_values, specs)]
            if stray:
                raise LakeError(f"written files outside replace_partitions: {stray[:3]}")
            doomed = [a for a in existing if _in_specs(a["partition_values"], specs)]
    now = int(time.time() * 1000)
    return [
        RemoveAction(
            path=unquote(a["path"]),
            data_change=True,
            deletion_timestamp=now,
            size=a["size"],
            partition_values=a["partition_values"],
        )
        for a in doomed
    ]


def _in_specs(values: Mapping[str, str | None], specs: Sequence[PartitionSpec]) -> bool:
    return any(all(values.get(c) == v for c, v in spec.items()) for spec in specs)


def _replace_where_sql(partitions: Sequence[PartitionSpec]) -> str:
    def equals(column: str, value: str | None) -> str:
        if value is None:
            return f"`{column}` IS NULL"
        return f"`{column}` = '" + value.replace("'", "''") + "'"

    clauses = [
        "(" + " AND ".join(equals(k, v) for k, v in sorted(spec.items())) + ")"
        for spec in partitions
    ]
    return " OR ".join(clauses) or "false"
