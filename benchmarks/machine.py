"""What the results were measured on: the header of results.md."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil

PACKAGES = (
    "pyspark", "deltalake", "ray", "torch", "petastorm", "pyarrow", "numpy", "pandas", "duckdb",
)  # fmt: skip


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def machine_header(profile: str, root: Path) -> list[tuple[str, str]]:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("profile", profile),
        ("machine", f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 1024**3:.1f} GiB "
                    f"RAM, {cpu_model()}"),
        ("load average at start (1/5/15 min)", load),
        ("python", platform.python_version()),
        ("packages", package_versions()),
        ("commit", git_commit(root)),
    ]
