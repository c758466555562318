"""Run the benchmarks and write benchmarks/results.md (the same table is printed).

    python -m benchmarks.run --profile quick            # ~15 min on 2 cores (make bench)
    python -m benchmarks.run --profile full             # the reference run, see README.md
    python -m benchmarks.run --parts 2,3 --set repeats=5

Every figure is a median of at least 3 runs with a baseline measured in the same run
on the same data. A part that cannot run prints ``not run: <reason>``, never a number.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from benchmarks.context import BenchContext
from benchmarks.dataset import DatasetPaths, generate_log, generator_overrides, lines_per_user
from benchmarks.harness import PartResult, render_report
from benchmarks.machine import machine_header
from benchmarks.profiles import PROFILES, BenchProfile
from mtlrec.config import apply_override, parse_override

ROOT = Path(__file__).resolve().parent.parent
PART_KEYS = ("1", "2", "3", "4", "5")
SHARED_DATASET_PARTS = ("2", "3", "4", "5")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark every part of the pipeline; same-run ratios, medians of >= 3 "
        "runs. Writes the results table as markdown and prints it.",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument(
        "--parts", default=",".join(PART_KEYS),
        help="comma-separated parts to run: 1 features, 2 loader, 3 training, 4 quality, "
        "5 scoring (default: all)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
        help="override a profile field (repeatable), e.g. --set repeats=5",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.md")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "out" / "bench",
        help="scratch space, emptied at the start (default: out/bench)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    return parser


def resolve_profile(name: str, overrides: list[str]) -> BenchProfile:
    data = PROFILES[name].model_dump()
    for text in overrides:
        path, value = parse_override(text)
        apply_override(data, path, value)
    return BenchProfile.model_validate(data)


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PART_KEYS))
    if unknown or not parts:
        raise ValueError(f"--parts: unknown part(s) {unknown}; choose from {list(PART_KEYS)}")
    return [key for key in PART_KEYS if key in parts]


def build_shared_dataset(ctx: BenchContext) -> DatasetPaths:
    """Generate the log of parts 2-5 and run the feature job on it once, unless part 1 has
    just built a dataset of the same size (its largest)."""
    from benchmarks.bench_features import reusable_dataset
    from jobs.build_features import run_stages

    reused = reusable_dataset(ctx)
    if reused is not None:
        ctx.log(f"shared dataset: reusing part 1's largest size ({reused.root})")
        return reused
    profile = ctx.profile
    paths = DatasetPaths(ctx.part_dir("dataset"))
    per_user = lines_per_user(
        profile.config, ctx.workdir, profile.calibration_users, profile.generator_days
    )
    users = max(1, round(profile.dataset_lines / per_user))
    cfg = ctx.config(paths, generator_overrides(users, profile.generator_days))
    ctx.log(f"shared dataset: generating {users:,} users x {profile.generator_days} days")
    generated = generate_log(cfg, paths)
    ctx.log(f"shared dataset: {generated.summary.total_lines:,} lines; running the feature job")
    run_stages("all", cfg, None, "bench-dataset")
    return paths


def _part_runners() -> dict[str, tuple[str, Callable[[BenchContext], PartResult]]]:
    from benchmarks import (
        bench_features,
        bench_loader,
        bench_quality,
        bench_scoring,
        bench_training,
    )

    return {
        "1": (bench_features.TITLE, bench_features.run),
        "2": (bench_loader.TITLE, bench_loader.run),
        "3": (bench_training.TITLE, bench_training.run),
        "4": (bench_quality.TITLE, bench_quality.run),
        "5": (bench_scoring.TITLE, bench_scoring.run),
    }


def _failure(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(last.filename).name}:{last.lineno})" if last else ""
    return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}"


def run_parts(
    ctx: BenchContext, parts: list[str], publish: Callable[[list[PartResult]], None]
) -> list[PartResult]:
    """Run ``parts``; ``publish`` gets every part's result so far (in part order) after each."""
    runners = _part_runners()
    dataset_error: str | None = None
    done: dict[str, PartResult] = {}

    def pending(key: str) -> PartResult:
        return PartResult.skipped(key, runners[key][0], "still running (this run has not "
                                  "reached it yet)")

    # In part order: part 1's largest size can then serve as the shared dataset.
    for key in parts:
        title, runner = runners[key]
        if key in SHARED_DATASET_PARTS and ctx.dataset is None and dataset_error is None:
            try:
                ctx = BenchContext(ctx.profile, ctx.workdir, ctx.log, build_shared_dataset(ctx))
            except Exception as exc:  # every part that needs it reports why it did not run
                traceback.print_exc()
                dataset_error = f"the shared dataset could not be built: {_failure(exc)}"
        if key in SHARED_DATASET_PARTS and dataset_error is not None:
            done[key] = PartResult.skipped(key, title, dataset_error)
            continue
        ctx.log(f"== part {key}: {title}")
        started = time.monotonic()
        try:
            result = runner(ctx)
        except Exception as exc:  # a broken part must not cost the others their figures
            traceback.print_exc()
            result = PartResult.skipped(key, title, _failure(exc))
        result.seconds = time.monotonic() - started
        done[key] = result
        publish([done.get(k) or pending(k) for k in parts])
    return [done[k] for k in parts]


def with_unselected(results: list[PartResult]) -> list[PartResult]:
    """Every part in order; those not selected with ``--parts`` say so."""
    runners = _part_runners()
    ran = {r.key: r for r in results}
    return [
        ran.get(key) or PartResult.skipped(key, runners[key][0], "not selected (--parts)")
        for key in PART_KEYS
    ]


def _quiet_library_warnings() -> None:
    """Petastorm 0.13 calls pyarrow APIs deprecated since 5.0 on every read (DESIGN.md 3)."""
    for module in ("petastorm", "pyarrow"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", message="schema_fields behavior has changed")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        profile = resolve_profile(args.profile, args.overrides)
        parts = parse_parts(args.parts)
    except ValueError as exc:
        print(f"benchmarks.run: {exc}", file=sys.stderr)
        return 2
    _quiet_library_warnings()
    began = time.monotonic()

    def log(line: str) -> None:
        print(f"[bench {time.monotonic() - began:6.0f}s] {line}", flush=True)

    header = machine_header(profile.name, ROOT)
    header.append((
        "method",
        f"every figure is the median of {profile.repeats} runs; a ratio is the median over "
        "rounds of (figure / baseline) where each round ran both back to back in this "
        "process, in rotating order",
    ))
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    ctx = BenchContext(profile, args.workdir.resolve(), log)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def publish(results: list[PartResult]) -> None:
        # Rewritten after every part, so a run cut short leaves what it measured.
        wall = ("wall time so far", f"{time.monotonic() - began:.0f} s")
        args.out.write_text(render_report([*header, wall], with_unselected(results)))

    try:
        results = run_parts(ctx, parts, publish)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    header.append(("total wall time", f"{time.monotonic() - began:.0f} s"))
    report = render_report(header, with_unselected(results))
    args.out.write_text(report)
    print(report, end="")
    print(f"benchmarks.run: wrote {args.out}", file=sys.stderr)
    return 0 if all(r.not_run is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
