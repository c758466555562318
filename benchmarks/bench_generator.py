"""Benchmark the log generator at scale: about 10M events into a temporary directory.

    python benchmarks/bench_generator.py [--events 10000000] [--processes N] [--keep DIR]

Prints lines written, events/s and the peak resident memory of the whole process
tree (this process plus every worker, sampled every 50 ms with psutil and summed),
and exits 1 when that peak exceeds --max-rss-gib (default 2). The workload is
sized from the generator's own yield: a small calibration run measures lines per
user-day, then users are scaled to reach --events over --days days.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from mtlrec.synthetic.config import GeneratorConfig
from mtlrec.synthetic.generate import generate

GIB = 1024**3


class TreeRssSampler:
    """Peak of the summed RSS of this process and all its descendants."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> int:
        root = psutil.Process()
        total = 0
        for process in [root, *root.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:  # a worker exited between listing and reading
                continue
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._sample())


def _config(users: int, args: argparse.Namespace) -> GeneratorConfig:
    return GeneratorConfig(
        seed=args.seed, num_users=users, num_items=args.items, num_days=args.days,
        processes=args.processes, users_per_shard=args.users_per_shard,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="target lines")
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--users-per-shard", type=int, default=10_000)
    parser.add_argument(
        "--processes", type=int, default=min(4, os.cpu_count() or 1),
        help="worker processes (default: CPU count, at most 4: each holds ~250 MB, so the "
        "2 GiB budget is for a fixed degree of parallelism, not for every core of a big box)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-rss-gib", type=float, default=2.0)
    parser.add_argument("--keep", type=Path, help="write here instead of a temporary dir")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_generator_") as scratch:
        probe_users = 2_000
        probe = generate(_config(probe_users, args), Path(scratch) / "probe" / "raw",
                         Path(scratch) / "probe" / "truth", log=lambda _: None)
        users = max(1, round(args.events * probe_users / probe.total_lines))
        root = args.keep or Path(scratch) / "run"
        config = _config(users, args)
        print(f"bench_generator: {users:,} users x {args.days} days, {args.items:,} items "
              f"(target {args.events:,} lines)", flush=True)
        with TreeRssSampler() as sampler:
            began = time.perf_counter()
            summary = generate(config, root / "raw", root / "truth", overwrite=True,
                               log=lambda line: print(line, flush=True))
            seconds = time.perf_counter() - began
        peak_gib = sampler.peak_bytes / GIB
        print(f"bench_generator: {summary.total_lines:,} lines in {seconds:.1f}s = "
              f"{summary.total_lines / seconds:,.0f} events/s; peak RSS (process tree) "
              f"{peak_gib:.2f} GiB (limit {args.max_rss_gib:.2f} GiB)")
    if peak_gib > args.max_rss_gib:
        print("bench_generator: FAIL peak RSS over the limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
