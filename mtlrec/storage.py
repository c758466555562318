"""Where every filesystem for the lake root comes from: local paths and S3 (or S3-compatible).

One lake root (``lake.root``) is read and written by three clients that each
configure object storage differently: delta-rs (storage options), pyarrow and
Petastorm (a ``pyarrow.fs.FileSystem``) and Spark (Hadoop ``fs.s3a.*`` settings).
``LakeStorage`` resolves the root and ``lake.storage_options`` once and hands
each client the same endpoint, region, addressing style and credentials.

Credentials: by default none are copied anywhere. Each client runs the standard
AWS chain itself (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN`` in the environment, web identity, instance profile), so
short-lived credentials keep refreshing. Static keys in ``lake.storage_options``
are honoured but discouraged; they never appear in a repr or log line (see
``redact``).

Endpoint and region are taken from the config, else from the environment
(``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_DEFAULT_REGION``), because pyarrow and Hadoop do not read those variables.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from fsspec.implementations.arrow import ArrowFSWrapper
from pyarrow.filesystem import DaskFileSystem

from mtlrec.config import LakeConfig
from mtlrec.errors import InputError

S3_SCHEMES = ("s3", "s3a")
MASK = "***"

# Option names as delta-rs documents them; lower-case spellings are accepted too.
ENDPOINT = "AWS_ENDPOINT_URL"
REGION = "AWS_REGION"
ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
SESSION_TOKEN = "AWS_SESSION_TOKEN"
ALLOW_HTTP = "AWS_ALLOW_HTTP"
VIRTUAL_HOSTED = "AWS_VIRTUAL_HOSTED_STYLE_REQUEST"
_ALIASES = {"AWS_ENDPOINT": ENDPOINT, "AWS_DEFAULT_REGION": REGION}
_ENV_ENDPOINTS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_ENV_REGIONS = ("AWS_REGION", "AWS_DEFAULT_REGION")

# A name that holds a credential: secret keys, tokens, passwords, access/account keys.
_SECRET_NAME = re.compile(
    r"secret|token|passw(?:or)?d|access[_.-]?key|account[_.-]?key|private[_.-]?key|sas[_.-]?key",
    re.IGNORECASE,
)
# ``name=value``, ``name: value``, ``"name": "value"``, ``--conf spark.hadoop.fs.s3a.secret.key=v``
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<name>[A-Za-z0-9_.\-]*(?:"
    + _SECRET_NAME.pattern
    + r")[A-Za-z0-9_.\-]*)(?P<sep>['\"]?\s*[:=]\s*['\"]?)(?P<value>[^\s'\",;}\]]+)",
    re.IGNORECASE,
)
# Java properties / spark-defaults lines: ``spark.hadoop.fs.s3a.secret.key   value``
_PROPERTY_LINE = re.compile(
    r"^(?P<name>[ \t]*[A-Za-z0-9_\-]+\.[A-Za-z0-9_.\-]+)(?P<sep>[ \t]+)(?P<value>\S+)", re.MULTILINE
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
_MIN_SECRET_LEN = 6

# A lake root is a directory of its own: never the filesystem root, never a shared
# top-level directory itself, and never inside a tree the operating system owns.
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run",
                 "/sbin", "/sys", "/usr")  # fmt: skip
_SHARED_DIRS = ("/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var")


def refuse_system_root(root: str) -> None:
    """Raise ``StorageError`` for a local lake root that is ``/``, a shared top-level
    directory itself (``/tmp``, ``/home``, ...) or inside a system tree (``/etc/...``,
    ``/usr/...``). ``/data/lake``, ``/tmp/x/lake`` or ``/lake`` are fine.

    A lake writes ``<root>/bronze``, ``<root>/silver``, ... and removes what it replaces
    there; ``lake.root=/`` would do that at the top of the filesystem.
    """
    if "://" in root and not root.startswith("file://"):
        return
    path = os.path.realpath(root.removeprefix("file://") or "/")
    system = any(path == t or path.startswith(t + "/") for t in _SYSTEM_TREES)
    if path == "/" or path in _SHARED_DIRS or system:
        raise StorageError(
            f"lake.root {root!r} resolves to {path}: a filesystem root or system directory; "
            "give the lake a directory of its own (e.g. ./lake or /data/lake)"
        )


class StorageError(InputError, ValueError):
    """A lake root or storage option that cannot be used; the message names it."""


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials masked, for logging configs, options and errors.

    Masks the value of every secret-named key (``AWS_SECRET_ACCESS_KEY=...``,
    ``'aws_session_token': '...'``, ``fs.s3a.secret.key ...``), the password of
    ``scheme://user:password@`` URLs, and anywhere else the values of ``secrets``
    or of secret-named environment variables occur verbatim.
    """
    known = {s for s in secrets if len(s) >= _MIN_SECRET_LEN}
    known.update(
        v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN
    )
    # Longest first, so a secret that contains another is masked whole.
    for value in sorted(known, key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
    text = _PROPERTY_LINE.sub(
        lambda m: f"{m['name']}{m['sep']}{MASK}" if is_secret_name(m["name"]) else m[0], text
    )
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)


def _canonical(options: Mapping[str, str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in options.items():
        upper = key.strip().upper()
        result[_ALIASES.get(upper, upper)] = str(value)
    return result


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _first_env(names: Iterable[str]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


class PetastormFileSystem(DaskFileSystem):
    """pyarrow's legacy filesystem API over a ``pyarrow.fs`` filesystem, for Petastorm.

    Petastorm 0.13.1 opens datasets with legacy ``ParquetDataset`` keywords, which
    pyarrow 14 accepts only together with a legacy filesystem; fsspec's
    ``ArrowFSWrapper`` supplies the calls this class does not define.
    """

    def __init__(self, filesystem: pafs.FileSystem) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the legacy API's deprecation
            super().__init__(ArrowFSWrapper(filesystem))

    def isdir(self, path: str) -> bool:
        return bool(self.fs.isdir(path))

    def isfile(self, path: str) -> bool:
        return bool(self.fs.isfile(path))

    def walk(self, path: str) -> Iterator[tuple[str, list[str], list[str]]]:
        return iter(self.fs.walk(path))


class LakeStorage:
    """The lake root's storage, resolved once; cheap to create, one per ``Lake``."""

    def __init__(self, root: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.scheme = urlsplit(root).scheme.lower() if "://" in root else "file"
        refuse_system_root(root)
        self._options = _canonical(storage_options or {})
        if self.is_s3:
            if not urlsplit(root).netloc:
                raise StorageError(f"lake.root {root!r} names no bucket (expected s3://bucket/...)")
            endpoint = self._options.get(ENDPOINT) or _first_env(_ENV_ENDPOINTS)
            region = self._options.get(REGION) or _first_env(_ENV_REGIONS)
            if endpoint:
                parsed = urlsplit(endpoint)
                if parsed.scheme not in {"http", "https"} or not parsed.netloc:
                    raise StorageError(
                        f"lake.storage_options.{ENDPOINT}: expected http(s)://host[:port], "
                        f"got {endpoint!r}"
                    )
                self._options[ENDPOINT] = endpoint
                if parsed.scheme == "http":
                    # delta-rs refuses plain HTTP unless told; an http:// endpoint says so.
                    self._options.setdefault(ALLOW_HTTP, "true")
            if region:
                self._options[REGION] = region
            if endpoint and not self.path_style:
                # pyarrow 14 (pinned for Petastorm) addresses a custom endpoint by path only.
                raise StorageError(
                    f"lake.storage_options.{VIRTUAL_HOSTED}=true with a custom endpoint: "
                    "pyarrow 14 supports only path-style requests to custom endpoints"
                )

    @classmethod
    def from_config(cls, cfg: LakeConfig) -> LakeStorage:
        return cls(cfg.root, cfg.storage_options)

    @property
    def is_s3(self) -> bool:
        return self.scheme in S3_SCHEMES

    @property
    def endpoint(self) -> str | None:
        return self._options.get(ENDPOINT)

    @property
    def region(self) -> str | None:
        return self._options.get(REGION)

    @property
    def path_style(self) -> bool:
        """Custom endpoints (MinIO, Ceph, moto) address buckets by path; AWS by host."""
        if VIRTUAL_HOSTED in self._options:
            return not _truthy(self._options[VIRTUAL_HOSTED])
        return self.endpoint is not None

    def _secrets(self) -> list[str]:
        return [v for k, v in self._options.items() if is_secret_name(k)]

    def __repr__(self) -> str:
        shown = {k: (MASK if is_secret_name(k) else v) for k, v in sorted(self._options.items())}
        return f"LakeStorage(root={self.root!r}, scheme={self.scheme!r}, options={shown!r})"

    def redact(self, text: str) -> str:
        """``redact`` that also knows this config's own secret values."""
        return redact(text, self._secrets())

    # ------------------------------------------------------------------ delta-rs
    def delta_options(self) -> dict[str, str]:
        """Storage options for delta-rs (``DeltaTable``, commits): config plus resolved endpoint.

        S3 commits need no lock: delta-rs 1.x commits with S3 conditional writes
        (put-if-absent). A store without them needs ``AWS_S3_ALLOW_UNSAFE_RENAME``
        and a single writer per table.
        """
        return dict(self._options)

    # ------------------------------------------------------------------ pyarrow
    @cached_property
    def _s3_filesystem(self) -> pafs.S3FileSystem:
        endpoint = urlsplit(self.endpoint) if self.endpoint else None
        return pafs.S3FileSystem(
            access_key=self._options.get(ACCESS_KEY_ID),
            secret_key=self._options.get(SECRET_ACCESS_KEY),
            session_token=self._options.get(SESSION_TOKEN),
            region=self.region,
            endpoint_override=endpoint.netloc if endpoint else None,
            scheme=endpoint.scheme if endpoint else "https",
        )

    def filesystem(self) -> pafs.FileSystem:
        """The filesystem for pyarrow (Petastorm: ``petastorm_source``)."""
        if self.is_s3:
            return self._s3_filesystem
        if self.scheme == "file":
            return pafs.LocalFileSystem()
        filesystem, _ = pafs.FileSystem.from_uri(self.root)
        return filesystem

    def filesystem_for(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """``(filesystem, path)`` for a URI or local path under this root."""
        scheme = urlsplit(uri).scheme.lower() if "://" in uri else "file"
        if scheme in S3_SCHEMES:
            if not self.is_s3:
                raise StorageError(f"{uri!r} is on S3 but lake.root {self.root!r} is not")
            return self._s3_filesystem, uri.split("://", 1)[1]
        if scheme == "file":
            # Literal, as Hadoop reads it: from_uri would decode a hive-escaped
            # directory such as "dt=%2Fabs" into another path.
            path = uri.removeprefix("file://") if uri.startswith("file://") else uri
            return pafs.LocalFileSystem(), path.removeprefix("file:")
        return pafs.FileSystem.from_uri(uri)

    def petastorm_source(self, uris: Sequence[str]) -> tuple[list[str], Any]:
        """``(urls, filesystem)`` for ``petastorm.make_batch_reader(urls, filesystem=...)``.

        ``uris`` are snapshot files (``Lake.snapshot_files``). Local files pass through
        (Petastorm resolves them itself, filesystem None). S3 files are handed over as
        bucket-relative paths on a filesystem rooted at the bucket: Petastorm resolves
        ``s3://`` URLs through s3fs even when given a filesystem, and the project does
        not depend on s3fs.
        """
        if not self.is_s3:
            return list(uris), None
        bucket = urlsplit(self.root).netloc
        paths = []
        for uri in uris:
            parsed = urlsplit(uri)
            if parsed.scheme not in S3_SCHEMES or parsed.netloc != bucket:
                raise StorageError(f"{uri!r} is not in the lake's bucket {bucket!r}")
            paths.append(f"file:///{parsed.path.lstrip('/')}")
        return paths, PetastormFileSystem(pafs.SubTreeFileSystem(bucket, self._s3_filesystem))

    # ------------------------------------------------------------------ Spark / Hadoop
    def spark_conf(self) -> dict[str, str]:
        """``spark.hadoop.fs.s3a.*`` entries for this root (empty for a local root).

        ``fs.s3.impl`` maps ``s3://`` onto S3A too, so Spark reads the same URIs the
        lake and delta-rs write. Needs the hadoop-aws jars (``--packages
        org.apache.hadoop:hadoop-aws:3.4.1``), see docs/cluster.md.
        """
        if not self.is_s3:
            return {}
        prefix = "spark.hadoop.fs.s3a."
        conf = {
            "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
            prefix + "path.style.access": str(self.path_style).lower(),
        }
        if self.endpoint:
            conf[prefix + "endpoint"] = self.endpoint
            conf[prefix + "connection.ssl.enabled"] = str(
                urlsplit(self.endpoint).scheme == "https"
            ).lower()
        if self.region:
            conf[prefix + "endpoint.region"] = self.region
        if ACCESS_KEY_ID in self._options and SECRET_ACCESS_KEY in self._options:
            conf[prefix + "access.key"] = self._options[ACCESS_KEY_ID]
            conf[prefix + "secret.key"] = self._options[SECRET_ACCESS_KEY]
            if SESSION_TOKEN in self._options:
                conf[prefix + "session.token"] = self._options[SESSION_TOKEN]
                provider = "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
            else:
                provider = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        else:
            # The AWS SDK v2 default chain: environment, web identity (IRSA), profile,
            # container and instance credentials, refreshed by the SDK.
            provider = "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
        conf[prefix + "aws.credentials.provider"] = provider
        return conf
