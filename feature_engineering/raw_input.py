"""List the raw events directory entry by entry, and read files by their literal paths.

**Listing** (on the driver, ``list_raw``): bronze walks ``<raw_root>/<events_dir>``
itself, so every entry ends in exactly one place (DESIGN.md 4.2): a ``RawFile`` to
read, or a ``SkippedEntry`` with a ``SkipReason``. Directly under ``events_dir`` only
``dt=YYYY-MM-DD`` directories are ingest days; inside a day only regular files
matching ``file_glob`` are read, hidden names (``.x``, ``_x``) included. A symlink
is followed only when its target lies inside ``lake.raw_root``; FIFOs, sockets and
nested directories are never opened. Local roots are listed with ``os`` (which sees
symlinks and permissions); object stores (``s3://``, ``hdfs://``) with pyarrow's
filesystem, which has neither.

**Reading** (in Spark tasks, ``plan_reads`` then ``read_pieces``): the listed paths are opened by
Python with the exact name that was listed, never handed to Spark's file sources as
path strings, which glob them again (``x*.jsonl`` would also read ``xy.jsonl``),
drop hidden names, and refuse ``:``, ``{a,b}`` or ``[1]``. Lines are split on
``\\n`` only, so line numbers match ``wc -l``; bytes stay as they are (bronze tests
UTF-8 validity itself). Memory is bounded per task whatever the input: files are
streamed in 1 MiB chunks, gzip output is inflated in 1 MiB steps, and a line longer
than ``max_line_bytes`` keeps only its first ``max_line_bytes`` bytes while the rest
streams past (its full length is kept for the quarantine detail).

Gzip is decoded by our own streaming decompressor: Hadoop's codec fails the job on a
stream cut short, which a shipper that died mid-upload leaves. Ours keeps every
complete line, decodes concatenated members, and hands over the cut tail as one
line marked ``cut``; a file named ``.gz`` that is not gzip is read as stored, each
line marked ``not_gzip``, so its bytes stay recoverable from the quarantine.
A plain file larger than ``spark.sql.files.maxPartitionBytes`` is read by several
tasks, one per byte range (``FilePiece``); a first job counts each range's newlines
(at memory speed, building no line) so every range knows its first line number and
each file's line count is known before its lines are parsed. A gzip file is read by
one task from start to end (it cannot be entered in the middle).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import pyarrow as pa
import pyarrow.fs as pafs
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from mtlrec.errors import InputError
from mtlrec.raw_contract import SkipReason

_DAY_DIR = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
_UNDASHED_DAY = re.compile(r"^dt=(\d{4})(\d{2})(\d{2})$")
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_BATCH_LINES = 8192
_BATCH_BYTES = 8 << 20
# Compressed or archived forms bronze cannot read line by line; refused by name.
UNSUPPORTED_SUFFIXES = (
    ".zip", ".bz2", ".xz", ".zst", ".zstd", ".lz4", ".7z", ".tar", ".tgz", ".rar",
    ".snappy", ".lzo", ".br", ".z",
)  # fmt: skip

# Why a line ends where it does, when the file (not the line's content) decided it.
ISSUE_CUT = "cut"  # the last line of a gzip stream that is cut short or corrupt
ISSUE_NOT_GZIP = "not_gzip"  # a line of a file named .gz that is not gzip

PIECES_SCHEMA = pa.schema(
    [
        ("piece", pa.int64()),
        ("locator", pa.binary()),
        ("source_file", pa.string()),
        ("ingest_dt", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("first_line", pa.int64()),
    ]
)
LINES_SCHEMA = pa.schema(
    [
        ("value", pa.binary()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("line_bytes", pa.int64()),
        ("read_issue", pa.string()),
        ("read_detail", pa.string()),
        ("ingest_dt", pa.string()),
    ]
)
COUNTS_SCHEMA = pa.schema([("piece", pa.int64()), ("lines", pa.int64())])


class RawInputError(InputError, FileNotFoundError):
    """Raw input that is absent or unusable; the message names the path."""


@dataclass(frozen=True)
class RawFile:
    """A file to read. ``source_file`` is its literal path (an absolute local path, or
    the URI on an object store), as bronze records it; ``locator`` opens it (the
    path's bytes: a local name need not be valid UTF-8)."""

    source_file: str
    locator: bytes
    ingest_dt: str


@dataclass(frozen=True)
class SkippedEntry:
    path: str
    ingest_dt: str | None  # None: directly under events_dir, in no ingest day
    kind: str  # file | directory | symlink | other
    reason: SkipReason
    detail: str


@dataclass(frozen=True)
class RawListing:
    days: list[str]
    files: list[RawFile]
    skipped: list[SkippedEntry]


# ---------------------------------------------------------------------- listing
@dataclass(frozen=True)
class _Entry:
    """One directory entry, classified before anything is opened."""

    name: str
    path: str  # literal, for messages and source_file
    locator: bytes
    kind: str  # file | directory | other (of the target, for a followed symlink)
    problem: tuple[SkipReason, str] | None  # why it cannot be used at all
    via_symlink: bool = False


def _display(raw: bytes) -> str:
    """A path as text: undecodable bytes of a local name become ``\\xNN``."""
    return raw.decode("utf-8", "backslashreplace")


class _LocalTree:
    """A local directory tree under ``boundary`` (the resolved raw root)."""

    def __init__(self, boundary: Path) -> None:
        self.boundary = boundary

    def entry(self, path: bytes) -> _Entry:
        name = _display(os.path.basename(path))
        shown = _display(path)
        try:
            info = os.lstat(path)
        except OSError as exc:
            return _Entry(name, shown, path, "other", (SkipReason.UNREADABLE, exc.strerror or ""))
        via_symlink = stat.S_ISLNK(info.st_mode)
        if via_symlink:
            target = os.path.realpath(path)
            if not Path(os.fsdecode(target)).is_relative_to(self.boundary):
                why = f"points to {_display(target)}, outside lake.raw_root {self.boundary}"
                return _Entry(name, shown, path, "symlink", (SkipReason.SYMLINK_OUTSIDE_ROOT, why))
            try:
                info = os.stat(path)
            except OSError as exc:
                why = f"symlink to {_display(target)}: {exc.strerror}"
                return _Entry(name, shown, path, "symlink", (SkipReason.UNREADABLE, why))
        if stat.S_ISDIR(info.st_mode):
            problem = None if os.access(path, os.R_OK | os.X_OK) else _no_permission()
            return _Entry(name, shown, path, "directory", problem, via_symlink)
        if not stat.S_ISREG(info.st_mode):
            what = "FIFO" if stat.S_ISFIFO(info.st_mode) else "device or socket"
            problem = (SkipReason.NOT_A_REGULAR_FILE, f"a {what}; never opened")
            return _Entry(name, shown, path, "other", problem, via_symlink)
        try:  # open it once here: permissions, ACLs and root all decide the same way
            with open(path, "rb"):
                pass
        except OSError as exc:
            return _Entry(
                name, shown, path, "file", (SkipReason.UNREADABLE, exc.strerror or ""), via_symlink
            )
        return _Entry(name, shown, path, "file", None, via_symlink)

    def children(self, directory: _Entry) -> list[_Entry]:
        try:
            names = sorted(os.listdir(directory.locator))
        except OSError as exc:
            raise RawInputError(f"cannot list {directory.path}: {exc.strerror}") from None
        return [self.entry(os.path.join(directory.locator, n)) for n in names]


def _no_permission() -> tuple[SkipReason, str]:
    return SkipReason.UNREADABLE, "no permission to list the directory"


class _RemoteTree:
    """An object store or HDFS directory tree, through pyarrow's filesystem."""

    def __init__(self, uri: str) -> None:
        self.filesystem, _ = pafs.FileSystem.from_uri(uri)
        self.scheme = uri.split("://", 1)[0]

    def _uri(self, path: str) -> str:
        return f"{self.scheme}://{path}"

    def _from_info(self, info: pafs.FileInfo) -> _Entry:
        uri = self._uri(info.path)
        if info.type == pafs.FileType.Directory:
            return _Entry(info.base_name, uri, uri.encode(), "directory", None)
        if info.type == pafs.FileType.File:
            return _Entry(info.base_name, uri, uri.encode(), "file", None)
        return _Entry(
            info.base_name, uri, uri.encode(), "other", (SkipReason.UNREADABLE, "not found")
        )

    def entry(self, uri: str) -> _Entry:
        return self._from_info(self.filesystem.get_file_info(uri.split("://", 1)[1]))

    def children(self, directory: _Entry) -> list[_Entry]:
        path = directory.locator.decode().split("://", 1)[1]
        infos = self.filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
        return [self._from_info(i) for i in sorted(infos, key=lambda i: i.path)]


def _tree(raw_root: str) -> tuple[_LocalTree | _RemoteTree, Callable[[str], _Entry]]:
    if "://" in raw_root and not raw_root.startswith("file://"):
        remote = _RemoteTree(raw_root)
        return remote, remote.entry
    boundary = Path(os.path.realpath(raw_root.removeprefix("file://")))
    local = _LocalTree(boundary)
    return local, lambda path: local.entry(os.fsencode(os.path.abspath(path)))


def _day_of(entry: _Entry) -> tuple[str | None, SkippedEntry | None]:
    """(the ingest day, None) for a usable day directory, else (None, why it is skipped)."""
    match = _DAY_DIR.match(entry.name)
    if entry.problem is not None:
        return None, SkippedEntry(entry.path, None, entry.kind, *entry.problem)
    if entry.kind != "directory" or not match:
        if entry.kind != "directory":
            why = "not a directory; files are read from dt=YYYY-MM-DD directories"
        elif undashed := _UNDASHED_DAY.match(entry.name):
            why = f"expected dt=YYYY-MM-DD: rename it dt={'-'.join(undashed.groups())}"
        else:
            why = "not a dt=YYYY-MM-DD directory"
        return None, SkippedEntry(entry.path, None, entry.kind, SkipReason.NOT_AN_INGEST_DAY, why)
    try:
        dt.date.fromisoformat(match.group(1))
    except ValueError as exc:
        return None, SkippedEntry(entry.path, None, entry.kind, SkipReason.INVALID_DAY, str(exc))
    return match.group(1), None


def _file_or_skip(entry: _Entry, day: str | None, file_glob: str) -> RawFile | SkippedEntry:
    def skip(reason: SkipReason, why: str) -> SkippedEntry:
        return SkippedEntry(entry.path, day, "symlink" if entry.via_symlink else entry.kind,
                            reason, why)  # fmt: skip

    if entry.problem is not None:
        return skip(*entry.problem)
    if entry.kind != "file":
        return skip(SkipReason.NOT_A_REGULAR_FILE, f"a {entry.kind}; only files directly inside "
                    "a day directory are read")  # fmt: skip
    if not fnmatch.fnmatchcase(entry.name, file_glob):
        hint = ""
        if fnmatch.fnmatchcase(entry.name.lower(), file_glob.lower()):
            hint = " (it matches ignoring case: rename it or widen the glob)"
        return skip(SkipReason.NOT_MATCHING_GLOB,
                    f"not matching features.raw_mapping.file_glob {file_glob!r}{hint}")  # fmt: skip
    if entry.name.lower().endswith(UNSUPPORTED_SUFFIXES):
        return skip(SkipReason.UNSUPPORTED_COMPRESSION, "compressed or archived in a form bronze "
                    "cannot stream; unpack it (plain or .gz) into the day directory")  # fmt: skip
    return RawFile(entry.path, entry.locator, day or "")


def list_raw(raw_root: str, events_dir: str, file_glob: str, days: list[str] | None) -> RawListing:
    """Every entry of ``<raw_root>/<events_dir>`` for the run: files to read, or skipped.

    ``days`` restricts the run to those ingest days (each must exist); entries
    directly under ``events_dir`` that are not day directories are reported on every
    run. Raises ``RawInputError`` when there is nothing to read.
    """
    tree, entry_at = _tree(raw_root)
    events_path = f"{raw_root.rstrip('/')}/{events_dir}"
    root = entry_at(events_path)
    if root.problem is not None or root.kind != "directory":
        why = root.problem[1] if root.problem else f"a {root.kind}"
        raise RawInputError(f"raw events directory not found: {events_path} ({why})")
    skipped: list[SkippedEntry] = []
    day_dirs: dict[str, _Entry] = {}
    for entry in tree.children(root):
        day, skip = _day_of(entry)
        if skip is not None:
            skipped.append(skip)
        elif day is not None:
            day_dirs[day] = entry
    if days is None:
        days = sorted(day_dirs)
        if not days:
            raise RawInputError(f"no dt=YYYY-MM-DD directories under {events_path}")
    files: list[RawFile] = []
    for day in sorted(set(days)):
        if day not in day_dirs:
            raise RawInputError(f"raw events directory not found: {events_path}/dt={day}")
        for entry in tree.children(day_dirs[day]):
            found = _file_or_skip(entry, day, file_glob)
            if isinstance(found, RawFile):
                files.append(found)
            else:
                skipped.append(found)
    if not files:
        reasons = sorted({s.reason.value for s in skipped})
        raise RawInputError(
            f"no readable files matching {file_glob!r} under {events_path} for {sorted(set(days))}"
            + (f" ({len(skipped)} entries skipped: {', '.join(reasons)})" if skipped else "")
        )
    return RawListing(sorted(set(days)), files, skipped)


def list_files(
    raw_root: str, directory: str, file_glob: str
) -> tuple[list[RawFile], list[SkippedEntry]]:
    """The files matching ``file_glob`` directly inside ``<raw_root>/<directory>`` (a
    catalog or user table), by the same rules as a day directory."""
    tree, entry_at = _tree(raw_root)
    path = f"{raw_root.rstrip('/')}/{directory}"
    folder = entry_at(path)
    if folder.problem is not None or folder.kind != "directory":
        raise RawInputError(f"directory not found: {path}")
    files: list[RawFile] = []
    skipped: list[SkippedEntry] = []
    for entry in tree.children(folder):
        found = _file_or_skip(entry, None, file_glob)
        if isinstance(found, RawFile):
            files.append(found)
        else:
            skipped.append(found)
    if not files:
        raise RawInputError(f"no files matching {file_glob!r} under {path}")
    return files, skipped


# ---------------------------------------------------------------------- reading
def _open(locator: bytes) -> BinaryIO:
    if locator.startswith(b"/"):
        return open(locator, "rb")
    uri = locator.decode()
    filesystem, path = pafs.FileSystem.from_uri(uri)
    return filesystem.open_input_file(path)  # seekable: a piece starts mid-file


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    while chunk := handle.read(_CHUNK):
        yield chunk


def _only_zeros(data: bytes, rest: Iterator[bytes]) -> bool:
    """Whether ``data`` and everything after it are zero bytes (padding gzip(1) ignores)."""
    if data.count(0) != len(data):
        return False
    return all(chunk.count(0) == len(chunk) for chunk in rest)


def _gunzip(chunks: Iterator[bytes], ending: list[str]) -> Iterator[bytes]:
    """Inflated bytes of a gzip stream, member after member, in steps of at most 1 MiB.

    A stream that is cut short or corrupt stops with the reason appended to ``ending``.
    """
    data = b""
    offset = 0  # compressed bytes before ``data``
    member: zlib._Decompress | None = None
    while True:
        if member is None:  # at a member boundary
            while len(data) < 2 and (more := next(chunks, b"")):
                data += more
            if not data:
                return
            if data[:2] != _GZIP_MAGIC:
                if not _only_zeros(data, chunks):
                    ending.append(f"not a gzip member at byte {offset}; the rest is unreadable")
                return
            member = zlib.decompressobj(zlib.MAX_WBITS | 16)
        if not data:
            data = next(chunks, b"")
            if not data:
                # Input is exhausted: whatever zlib still holds, then the member must be whole.
                while out := member.decompress(b"", _CHUNK):
                    yield out
                if not member.eof:
                    ending.append(f"gzip stream cut short after {offset} bytes")
                    return
                member = None
                continue
        try:
            out = member.decompress(data, _CHUNK)  # output capped: a bomb inflates in steps
        except zlib.error as exc:
            ending.append(f"gzip data corrupt near byte {offset}: {exc}")
            return
        if out:
            yield out
        rest = member.unused_data if member.eof else member.unconsumed_tail
        offset += len(data) - len(rest)
        data = rest
        if member.eof:
            member = None


RawLine = tuple[bytes, int, str | None, str | None]
"""(the line's bytes, cut to max_line_bytes; its full length; read issue; issue detail)."""


def _split_lines(
    pieces: Iterable[bytes], max_line_bytes: int, ending: list[str] | None = None
) -> Iterator[RawLine]:
    """``\\n``-separated lines of a byte stream; a line keeps at most ``max_line_bytes``.

    The last line needs no newline. When ``ending`` holds a reason after the stream
    (a cut gzip file), the bytes after the last newline are one more line, possibly
    empty, marked ``ISSUE_CUT``.
    """
    head = bytearray()  # the kept bytes of the line in progress
    length = 0  # its full length so far
    for piece in pieces:
        parts = piece.split(b"\n")
        for part in parts[:-1]:
            if length == 0:
                yield part[:max_line_bytes], len(part), None, None
            else:
                head += part[: max(0, max_line_bytes - len(head))]
                yield bytes(head), length + len(part), None, None
                head, length = bytearray(), 0
        last = parts[-1]
        head += last[: max(0, max_line_bytes - len(head))]
        length += len(last)
    if ending:
        yield bytes(head), length, ISSUE_CUT, ending[0]
    elif length:
        yield bytes(head), length, None, None


def read_lines(chunks: Iterable[bytes], gzipped: bool, max_line_bytes: int) -> Iterator[RawLine]:
    """The lines of one file given as chunks of its bytes (see ``_split_lines``).

    A file named ``.gz`` whose bytes do not start like gzip is read as stored, each
    line marked ``ISSUE_NOT_GZIP``.
    """
    stream = iter(chunks)
    first = next(stream, b"")
    whole = _prepend(first, stream)
    if not gzipped:
        yield from _split_lines(whole, max_line_bytes)
        return
    if first and not first.startswith(_GZIP_MAGIC):
        why = f"named .gz but not gzip (starts with {first[:4]!r}); raw_line is the line as stored"
        for value, length, _, _ in _split_lines(whole, max_line_bytes):
            yield value, length, ISSUE_NOT_GZIP, why
        return
    ending: list[str] = []
    yield from _split_lines(_gunzip(whole, ending), max_line_bytes, ending)


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _file_lines(locator: bytes, source_file: str, max_line_bytes: int) -> Iterator[RawLine]:
    with _open(locator) as handle:
        yield from read_lines(_chunks(handle), source_file.endswith(".gz"), max_line_bytes)


@dataclass(frozen=True)
class FilePiece:
    """A part of a file that one task reads, and the number of its first line.

    A piece ``[start, end)`` owns the lines that start in ``(start, end]`` (and the line
    at byte 0, for the first piece): the line after each newline inside its range. It
    reads on past ``end`` to finish its last line, and the next piece skips that line,
    so every line is read exactly once. ``end`` None: the whole file, from byte 0 (a
    gzip file cannot be entered in the middle).
    """

    file: RawFile
    start: int = 0
    end: int | None = None
    first_line: int = 1


@dataclass(frozen=True)
class ReadPlan:
    """The pieces to read, and each file's lines as counted before reading them."""

    pieces: list[FilePiece]
    lines_per_file: dict[str, int]


def _range_lines(handle: BinaryIO, start: int, end: int, max_line_bytes: int) -> Iterator[RawLine]:
    """The lines a piece ``[start, end)`` of a plain file owns (see ``FilePiece``)."""
    handle.seek(start)
    chunks = _chunks(handle)
    position = start  # where the next line starts
    if start > 0:
        # The line in progress at ``start`` belongs to the piece before: skip past its end.
        for chunk in chunks:
            newline = chunk.find(b"\n")
            if newline >= 0:
                position += newline + 1
                chunks = _prepend(chunk[newline + 1 :], chunks)
                break
            position += len(chunk)
        else:
            return
    for line in _split_lines(chunks, max_line_bytes):
        if position > end:
            return
        yield line
        position += line[1] + 1


def _piece_lines(piece: dict[str, object], max_line_bytes: int) -> Iterator[RawLine]:
    locator, source_file = cast(bytes, piece["locator"]), cast(str, piece["source_file"])
    if piece["end"] is None:
        yield from _file_lines(locator, source_file, max_line_bytes)
        return
    with _open(locator) as handle:
        yield from _range_lines(
            handle, cast(int, piece["start"]), cast(int, piece["end"]), max_line_bytes
        )


def _count_range(locator: bytes, start: int, end: int) -> int:
    """Lines a piece ``[start, end)`` of a plain file owns, by counting its newlines (no
    line is built: this runs at memory speed)."""
    newlines = 0
    last = b""
    with _open(locator) as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0 and (chunk := handle.read(min(_CHUNK, remaining))):
            newlines += chunk.count(b"\n")
            remaining -= len(chunk)
            last = chunk[-1:]
        at_end = not handle.read(1)
    first = 1 if start == 0 and last else 0  # the line at byte 0
    trailing = 1 if at_end and last == b"\n" else 0  # nothing follows the file's last newline
    return newlines + first - trailing


def _counted_pieces(
    max_line_bytes: int, batches: Iterable[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: pieces to (piece, lines): newlines counted, gzip inflated."""
    for batch in batches:
        counts: dict[str, list[object]] = {"piece": [], "lines": []}
        for piece in batch.to_pylist():
            locator = piece["locator"]
            if piece["end"] is None:
                lines = sum(1 for _ in _file_lines(locator, piece["source_file"], max_line_bytes))
            else:
                lines = _count_range(locator, piece["start"], piece["end"])
            counts["piece"].append(piece["piece"])
            counts["lines"].append(lines)
        yield pa.RecordBatch.from_pydict(counts, schema=COUNTS_SCHEMA)


def _numbered_lines(
    max_line_bytes: int, batches: Iterable[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: pieces (see ``PIECES_SCHEMA``) to numbered lines."""
    columns: dict[str, list[object]] = {name: [] for name in LINES_SCHEMA.names}
    held = 0

    def flush() -> pa.RecordBatch:
        batch = pa.RecordBatch.from_pydict(columns, schema=LINES_SCHEMA)
        for values in columns.values():
            values.clear()
        return batch

    for batch in batches:
        for piece in batch.to_pylist():
            lines = _piece_lines(piece, max_line_bytes)
            for number, (value, length, issue, detail) in enumerate(lines, piece["first_line"]):
                columns["value"].append(value)
                columns["source_file"].append(piece["source_file"])
                columns["source_line"].append(number)
                columns["line_bytes"].append(length)
                columns["read_issue"].append(issue)
                columns["read_detail"].append(detail)
                columns["ingest_dt"].append(piece["ingest_dt"])
                held += len(value)
                if len(columns["value"]) >= _BATCH_LINES or held >= _BATCH_BYTES:
                    yield flush()
                    held = 0
    if columns["value"]:
        yield flush()


def _pieces_frame(spark: SparkSession, pieces: list[FilePiece]) -> DataFrame:
    """One row per piece, spread over tasks (a task reads its pieces one after another)."""
    rows = [
        (i, bytearray(p.file.locator), p.file.source_file, p.file.ingest_dt, p.start, p.end,
         p.first_line)
        for i, p in enumerate(pieces)
    ]  # fmt: skip
    slices = max(1, min(len(pieces), spark.sparkContext.defaultParallelism * 4))
    return spark.createDataFrame(rows, from_arrow_schema(PIECES_SCHEMA)).repartition(slices)


def _file_size(locator: bytes) -> int:
    if locator.startswith(b"/"):
        return os.stat(locator).st_size
    filesystem, path = pafs.FileSystem.from_uri(locator.decode())
    return int(filesystem.get_file_info(path).size)


def plan_reads(spark: SparkSession, files: list[RawFile], max_line_bytes: int) -> ReadPlan:
    """Cut every plain file into pieces of ``spark.sql.files.maxPartitionBytes`` (so a
    large file is read by several tasks) and count each piece's lines, in one Spark job
    that builds no line: the first line number of every piece, and each file's line
    count, the left side of bronze's reconciliation. A ``.gz`` file is one piece,
    counted by inflating it.
    """
    split = int(spark._jsparkSession.sessionState().conf().filesMaxPartitionBytes())
    cut: list[FilePiece] = []
    for file in files:
        if file.source_file.endswith(".gz"):
            cut.append(FilePiece(file))
            continue
        size = _file_size(file.locator)
        cut += [FilePiece(file, start, min(start + split, size)) for start in range(0, size, split)]
        if size == 0:
            cut.append(FilePiece(file, 0, 0))
    body = functools.partial(_counted_pieces, max_line_bytes)
    counted = _pieces_frame(spark, cut).mapInArrow(body, from_arrow_schema(COUNTS_SCHEMA))
    lines = {int(r["piece"]): int(r["lines"]) for r in counted.collect()}
    pieces: list[FilePiece] = []
    lines_per_file: dict[str, int] = {}
    for index, piece in enumerate(cut):
        before = lines_per_file.get(piece.file.source_file, 0)
        pieces.append(FilePiece(piece.file, piece.start, piece.end, before + 1))
        lines_per_file[piece.file.source_file] = before + lines[index]
    return ReadPlan(pieces, lines_per_file)


def read_pieces(spark: SparkSession, pieces: list[FilePiece], max_line_bytes: int) -> DataFrame:
    """Columns: value (string holding the raw bytes, at most ``max_line_bytes`` of them),
    source_file, source_line (1-based), line_bytes (the full length), read_issue
    (``ISSUE_CUT``, ``ISSUE_NOT_GZIP`` or null), read_detail, ingest_dt.

    Nothing is cached: each action reads the files again (memory stays bounded).
    """
    body = functools.partial(_numbered_lines, max_line_bytes)
    return (
        _pieces_frame(spark, pieces)
        .mapInArrow(body, from_arrow_schema(LINES_SCHEMA))
        # A binary-to-string cast keeps the bytes as they are; bronze checks UTF-8 itself.
        .withColumn("value", F.col("value").cast("string"))
    )


def read_numbered_lines(
    spark: SparkSession, files: list[RawFile], max_line_bytes: int
) -> DataFrame:
    """``read_pieces`` of whole files, one task per file (small inputs: the catalog)."""
    return read_pieces(spark, [FilePiece(f) for f in files], max_line_bytes)
