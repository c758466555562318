"""Bad configuration and environment: non-zero exit, one clear message, nothing written.

Each case runs a real job in a subprocess from an empty working directory and checks
what an operator would see: the exit status, a message that names the problem (the
field, the path, the missing program) without a Python traceback, and no lake, raw or
run directory created anywhere under the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reliability.harness import SMALL_SPARK, JobRun, job_command, job_env, run_job

JAVA_TOOLS = {"java", "javac", "jshell", "jar", "jrunscript", "keytool"}


def _assert_clear_failure(run: JobRun, *named: str, status: int | None = None) -> None:
    assert run.returncode != 0, run.stderr[-3000:]
    if status is not None:
        assert run.returncode == status, run.stderr[-3000:]
    assert "Traceback (most recent call last)" not in run.stderr, run.stderr[-3000:]
    for text in named:
        assert text in run.stderr, f"{text!r} not named in:\n{run.stderr[-3000:]}"


def _listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("job", "override", "named"),
    [
        ("build_features", "features.bronze.max_line_bytes=lots", "features.bronze.max_line_bytes"),
        ("build_features", "spark.shuffle_partitions=0", "spark.shuffle_partitions"),
        ("build_features", "features.bronze.windowstart=2026-10-01", "unknown key"),
        ("generate_logs", "generator.num_users=-5", "generator.num_users"),
        ("train", "ray.num_workers=two", "ray.num_workers"),
        ("train", "run.max_failures=[1]", "run.max_failures"),
    ],
)
def test_bad_config_value_exits_2_naming_the_field(
    job: str, override: str, named: str, tmp_path: Path
) -> None:
    run = run_job(job_command(job, overrides=[override]), timeout=100, cwd=tmp_path)
    _assert_clear_failure(run, named, status=2)
    assert len(run.stderr.strip().splitlines()) == 2, run.stderr  # header + the bad field
    assert _listing(tmp_path) == []


@pytest.mark.timeout(60)
def test_a_mistyped_secret_is_not_echoed_in_the_config_error(tmp_path: Path) -> None:
    secret = "98765432101"
    run = run_job(
        job_command(
            "build_features",
            overrides=[f"lake.storage_options={{AWS_SECRET_ACCESS_KEY: {secret}}}"],
        ),
        timeout=50,
        cwd=tmp_path,
    )
    _assert_clear_failure(run, "lake.storage_options.AWS_SECRET_ACCESS_KEY", status=2)
    assert secret not in run.stderr + run.stdout


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", ["missing", "day_without_files"])
def test_missing_or_empty_input_exits_2_naming_the_path(layout: str, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    if layout == "day_without_files":
        (raw / "events" / "dt=2026-10-01").mkdir(parents=True)
        (raw / "events" / "dt=2026-10-01" / "notes.txt").write_text("not a log file")
    before = _listing(tmp_path)
    run = run_job(
        job_command(
            "build_features",
            "--stage",
            "bronze",
            overrides=[f"lake.root={tmp_path / 'lake'}", f"lake.raw_root={raw}", *SMALL_SPARK],
        ),
        timeout=280,
        cwd=tmp_path,
    )
    _assert_clear_failure(run, str(raw / "events"), status=2)
    assert _listing(tmp_path) == before, "nothing may be written"


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unwritable_lake_root_fails_with_one_message(tmp_path: Path) -> None:
    from reliability.corpus import build_corpus, write_corpus

    write_corpus(tmp_path / "raw", build_corpus()[:2])
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the lake root's parent should be")
    before = _listing(tmp_path)
    root = blocker / "lake"
    run = run_job(
        job_command(
            "build_features",
            "--stage",
            "bronze",
            overrides=[f"lake.root={root}", f"lake.raw_root={tmp_path / 'raw'}", *SMALL_SPARK],
        ),
        timeout=280,
        cwd=tmp_path,
    )
    _assert_clear_failure(run, str(root))
    assert _listing(tmp_path) == before


def _path_without_java(tmp_path: Path) -> str:
    """A PATH holding every program of the usual directories except Java's."""
    shim = tmp_path / "bin"
    shim.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = shim / entry.name
            if entry.name not in JAVA_TOOLS and not target.exists():
                target.symlink_to(entry.path)
    return str(shim)


@pytest.mark.timeout(120)
def test_no_java_fails_with_one_message_and_writes_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = job_env(PATH=_path_without_java(tmp_path))
    env.pop("JAVA_HOME", None)
    run = run_job(
        job_command(
            "build_features",
            "--stage",
            "bronze",
            overrides=[f"lake.root={work / 'lake'}", f"lake.raw_root={work / 'raw'}"],
        ),
        timeout=100,
        env=env,
        cwd=work,
    )
    assert run.returncode != 0
    _assert_clear_failure(run, "Java")
    assert _listing(work) == []
