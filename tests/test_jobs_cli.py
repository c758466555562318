"""Every job module answers --help, and rejects a bad config before touching data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Arguments a job requires besides the config; the config must fail before they are used.
REQUIRED_ARGS = {"score_users": ["--model", "model.pt"], "report": ["--run", "runs/x"]}
JOBS = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if p.stem not in {"__init__", "config"})


def test_there_are_jobs() -> None:
    assert "generate_logs" in JOBS


@pytest.mark.parametrize("job", JOBS)
def test_job_answers_help(job: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", f"jobs.{job}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout and "--config" in proc.stdout and "--set" in proc.stdout


@pytest.mark.parametrize("job", JOBS)
def test_job_rejects_unknown_config_key_naming_it(job: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", f"jobs.{job}", "--set", "lake.rooot=x", *REQUIRED_ARGS.get(job, [])],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "lake.rooot: unknown key" in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written on a bad config"
