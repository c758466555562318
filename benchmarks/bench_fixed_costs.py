"""The feature job's seconds per stage, this checkout against another, on the same log.

    python -m benchmarks.bench_fixed_costs --baseline-tree /tmp/main-checkout \\
        --users 40 --days 4 --repeats 3 --small

``--stage bronze`` times bronze alone (silver and gold need no rerun to compare it).
Generates one log, then each round runs ``jobs.build_features --stage all`` once from
each tree (a fresh process and a fresh lake each; the order rotates from round to round,
``harness.time_interleaved``) and reads the seconds of bronze, silver and gold from
the job's ``stage=`` lines; ``start-up`` is the rest of the process's wall time (JVM,
session, imports). Printed per stage: the median seconds of each side and the median of
the per-round ratios (this / baseline), so load from other processes hits both sides of
a ratio alike. A small log shows the job's fixed costs; ``--small`` runs it with the
test suite's settings (``tests/reliability/harness.py``: local[1], 2 shuffle partitions,
1g driver, C1-only JIT).

The baseline tree is any checkout of this repository (``git worktree add /tmp/base
<commit>``); both sides run with this checkout's Python environment, each importing
its own tree's code.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import median, paired_ratio, time_interleaved

STAGES = ("bronze", "silver", "gold")
_STAGE_LINE = re.compile(r"stage=(bronze|silver|gold) (\{.*\})$")
SMALL_SPARK = (
    "spark.master=local[1]",
    "spark.shuffle_partitions=2",
    "spark.driver_memory=1g",
    'spark.conf={"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"}',
)


def stage_seconds(log: str) -> dict[str, float]:
    """``{stage: seconds}`` from the job's ``stage=<name> {json}`` summary lines."""
    found: dict[str, float] = {}
    for line in log.splitlines():
        match = _STAGE_LINE.search(line)
        if match:
            found[match.group(1)] = float(json.loads(match.group(2))["seconds"])
    return found


def run_job(
    tree: Path, workdir: Path, overrides: list[str], stages: tuple[str, ...] = STAGES
) -> dict[str, float]:
    """One run of ``stages`` from ``tree`` into a fresh lake: seconds per stage + total."""
    lake = workdir / f"lake-{tree.name}"
    shutil.rmtree(lake, ignore_errors=True)
    sets = [f"lake.root={lake}", f"lake.raw_root={workdir / 'raw'}", *overrides]
    stage = "all" if stages == STAGES else stages[0]
    command = [sys.executable, "-m", "jobs.build_features", "--stage", stage]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    total = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: exit {done.returncode}: {done.stderr[-2000:]}")
    seconds = stage_seconds(done.stderr + done.stdout)
    missing = [s for s in stages if s not in seconds]
    if missing:
        raise RuntimeError(f"{tree}: no stage= line for {missing}")
    seconds["start-up"] = total - sum(seconds[s] for s in stages)
    seconds["total"] = total
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_fixed_costs", description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-tree", type=Path, required=True)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="the test suite's Spark settings")
    parser.add_argument(
        "--stage", choices=("all", *STAGES[:1]), default="all", help="bronze: time bronze alone"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mtlrec-bench-fixed-costs"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    this_tree = Path(__file__).resolve().parent.parent
    trees = {"baseline": args.baseline_tree.resolve(), "this": this_tree}
    workdir: Path = args.workdir
    generator = [
        f"lake.raw_root={workdir / 'raw'}",
        f"generator.truth_root={workdir / 'truth'}",
        f"generator.num_users={args.users}",
        f"generator.num_days={args.days}",
        "generator.processes=1",
    ]
    command = [sys.executable, "-m", "jobs.generate_logs", "--overwrite"]  # a rerun's log
    for item in generator:
        command += ["--set", item]
    generated = subprocess.run(command, cwd=this_tree, check=True, capture_output=True, text=True)
    wrote = re.search(r"wrote ([0-9,]+) lines", generated.stdout + generated.stderr)
    lines = wrote.group(1) if wrote else "?"
    overrides = [*(SMALL_SPARK if args.small else ()), *args.overrides]
    stages = STAGES if args.stage == "all" else (args.stage,)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}

    def side(name: str) -> None:
        runs[name].append(run_job(trees[name], workdir, overrides, stages))

    time_interleaved({name: functools.partial(side, name) for name in trees}, args.repeats)
    print(
        f"feature job on {lines} lines, {args.repeats} rounds, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (at the end)"
    )
    print(f"{'stage':10} {'baseline s':>11} {'this s':>8} {'this/baseline':>14}")
    for stage in ("start-up", *stages, "total"):
        base = [r[stage] for r in runs["baseline"]]
        this = [r[stage] for r in runs["this"]]
        print(
            f"{stage:10} {median(base):11.1f} {median(this):8.1f} {paired_ratio(this, base):14.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
