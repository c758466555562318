"""Drive a generation run: build the world, fan out partitions, write catalog and manifest.

Partitions are ``(day, shard)`` pairs, each with its own seed, written by a pool
of worker processes; the output is byte-identical whatever the number of
processes. The manifest holds only deterministic facts (no timings), so two
runs with one seed produce identical files.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mtlrec.errors import InputError
from mtlrec.raw_contract import QuarantineReason, SilverOutcome
from mtlrec.synthetic.calibrate import calibrate_world
from mtlrec.synthetic.config import GeneratorConfig
from mtlrec.synthetic.events import num_shards
from mtlrec.synthetic.world import TIERS, World, build_world
from mtlrec.synthetic.writer import PartitionStats, date_of, write_partition

_RAW_PARTS = ("events", "items", "users")
_TRUTH_PARTS = ("impressions", "generator_config.json", "manifest.json")


class OutputError(InputError, ValueError):
    """The output roots cannot be used as given; the message names the path."""


class OutputExistsError(OutputError):
    """The output directory holds an earlier run and overwrite was not requested."""


@dataclasses.dataclass(frozen=True)
class GenerationSummary:
    total_lines: int
    truth_impressions: int
    seconds: float
    raw_root: Path
    truth_root: Path

    @property
    def lines_per_second(self) -> float:
        return self.total_lines / max(self.seconds, 1e-9)


# --- worker side: the world arrives once per process through the pool initializer ---
_WORKER: dict[str, Any] = {}


def _init_worker(world: World, raw_root: Path, truth_root: Path) -> None:
    _WORKER.update(world=world, raw_root=raw_root, truth_root=truth_root)


def _run(task: tuple[int, int]) -> PartitionStats:
    return write_partition(_WORKER["world"], task[0], task[1], _WORKER["raw_root"],
                           _WORKER["truth_root"])


def _prepare(raw_root: Path, truth_root: Path, overwrite: bool) -> None:
    raw, truth = raw_root.resolve(), truth_root.resolve()
    if raw == truth or raw in truth.parents or truth in raw.parents:
        raise OutputError(
            f"truth root {truth_root} and raw root {raw_root} must not contain one another: "
            "the feature jobs must never see the ground truth"
        )
    existing = [root / part for root, parts in ((raw_root, _RAW_PARTS), (truth_root, _TRUTH_PARTS))
                for part in parts if (root / part).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"output exists: {', '.join(map(str, existing))} (pass --overwrite to replace it)"
        )
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _iso(ms: np.ndarray) -> list[str]:
    return [f"{s}Z" for s in np.datetime_as_string(ms.astype("datetime64[ms]"), unit="s")]


def _write_jsonl(path: Path, rows: Iterator[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _write_catalog(world: World, raw_root: Path) -> None:
    created = _iso(world.item_created_ms)
    _write_jsonl(raw_root / "items" / "items.jsonl", (
        {"item_id": world.item_ids[i], "title": world.item_titles[i],
         "category_path": world.leaf_paths[world.item_leaf[i]], "brand": world.item_brand[i],
         "price": float(world.item_price[i]), "created_at": created[i]}
        for i in range(len(world.item_ids))
    ))
    signup = _iso(world.user_signup_ms)
    markets = [market.name for market in world.config.markets]
    _write_jsonl(raw_root / "users" / "users.jsonl", (
        {"user_id": world.user_ids[u], "signup_ts": signup[u],
         "region": markets[world.user_market[u]], "tier": TIERS[world.user_tier[u]]}
        for u in range(world.num_users_total)
    ))


def _expected_outcomes() -> dict[str, dict[str, str]]:
    outcomes = {reason.value: {"stage": "bronze", "outcome": reason.value}
                for reason in QuarantineReason}
    outcomes.update({outcome.value: {"stage": "silver", "outcome": outcome.value}
                     for outcome in SilverOutcome})
    return outcomes


def _manifest(world: World, stats: list[PartitionStats]) -> dict[str, Any]:
    config = world.config
    lines_per_dt: Counter[str] = Counter()
    defects: Counter[str] = Counter()
    event_types: Counter[str] = Counter()
    for item in stats:
        lines_per_dt.update(item.lines_per_dt)
        defects.update(item.defects)
        event_types.update(item.event_types)
    return {
        "seed": config.seed,
        "first_day": date_of(world, 0),
        "last_day": date_of(world, config.num_days - 1),
        "shards_per_day": num_shards(world),
        "total_lines": sum(lines_per_dt.values()),
        "lines_per_dt": dict(sorted(lines_per_dt.items())),
        "defects": {
            name: {"count": defects.get(name, 0), **outcome}
            for name, outcome in _expected_outcomes().items()
        },
        "bot_user_ids": sorted(world.bot_user_ids),
        "truth_impressions": sum(item.truth_rows for item in stats),
        "real_events": dict(event_types),
        "catalog_items": len(world.item_ids),
        "users": world.num_users_total,
        "intercepts": {
            market.name: {
                "click": float(world.click_intercept[m]),
                "add_to_cart": float(world.add_to_cart_intercept[m]),
                "purchase_given_cart": float(world.purchase_intercept[m]),
            }
            for m, market in enumerate(config.markets)
        },
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def generate(
    config: GeneratorConfig, raw_root: Path, truth_root: Path, *, overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> GenerationSummary:
    """Write the raw logs under ``raw_root`` and the ground truth under ``truth_root``."""
    began = time.perf_counter()
    _prepare(raw_root, truth_root, overwrite)
    world = calibrate_world(build_world(config))
    _write_catalog(world, raw_root)
    shards = num_shards(world)
    tasks = [(day, shard) for day in range(config.num_days) for shard in range(shards)]
    processes = min(config.processes or os.cpu_count() or 1, len(tasks))
    log(f"generating {config.num_days} days x {shards} shard(s) with {processes} process(es): "
        f"{world.num_users_total} users, {len(world.item_ids)} items -> {raw_root}")

    stats: list[PartitionStats] = []

    def record(result: PartitionStats) -> None:
        stats.append(result)
        if result.shard == shards - 1:
            lines = sum(sum(s.lines_per_dt.values()) for s in stats if s.day == result.day)
            log(f"  day {result.day + 1}/{config.num_days} {date_of(world, result.day)}: "
                f"{lines:,} lines ({time.perf_counter() - began:.1f}s)")

    if processes == 1:
        _init_worker(world, raw_root, truth_root)
        for task in tasks:
            record(_run(task))
    else:
        context = mp.get_context("spawn")  # no fork of a threaded parent; works everywhere
        with context.Pool(processes, _init_worker, (world, raw_root, truth_root)) as pool:
            for result in pool.imap(_run, tasks):
                record(result)

    manifest = _manifest(world, stats)
    _write_json(truth_root / "generator_config.json",
                {"seed": config.seed, "config": config.model_dump(mode="json")})
    _write_json(truth_root / "manifest.json", manifest)
    return GenerationSummary(
        total_lines=manifest["total_lines"], truth_impressions=manifest["truth_impressions"],
        seconds=time.perf_counter() - began, raw_root=raw_root, truth_root=truth_root,
    )
