"""Format a simulated partition as JSON Lines, add the dirt, write raw files and truth.

Partition ``(day, shard)`` writes ``events/dt=D/part-NNNNN.jsonl`` for every day D
its lines land in (its own day; the next one for events past midnight and for
late arrivals), with NNNNN = day * shards + shard, and the matching
``impressions/dt=D/part-NNNNN.parquet`` under the truth root (``dt``, the UTC
day of the impression's ts, lives in the Hive-style path only, as Spark writes
it, so that partition discovery does not meet a clashing column). Files are written
under a temporary name and renamed, so a crashed run never leaves a torn file.

Ground truth per impression: ``p_click``; ``p_add_to_cart_given_click``;
``p_purchase_given_click``; ``expected_purchase_value`` = E[price x quantity x
1{purchased}] = p_click x p_purchase_given_click x price x E[quantity];
``expected_log_purchase_value`` = E[log1p(price x quantity) x 1{purchased}], the
oracle of the purchase_value task; the latent inputs of the funnel; and the
realised outcomes (``clicked``, ``added_to_cart``, ``purchased``: the funnel
event was generated and fell inside the run window).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec.raw_contract import DEVICES, EVENT_TYPES, PAGES, SilverOutcome
from mtlrec.synthetic.dirt import inject_defects
from mtlrec.synthetic.events import (
    BOT,
    REAL,
    UNKNOWN_ITEM,
    Partition,
    hex_ids,
    num_shards,
    simulate_partition,
)
from mtlrec.synthetic.world import DAY_MS, HOUR_MS, World

_IOS, _ANDROID = DEVICES.index("ios"), DEVICES.index("android")
_QUANTITY_TERMS = 12  # E[f(1 + Poisson(lambda))] summed over this many terms


@dataclasses.dataclass
class PartitionStats:
    """What one partition wrote; the driver sums these into the manifest."""

    day: int
    shard: int
    lines_per_dt: Counter[str]
    defects: Counter[str]
    event_types: Counter[str]
    truth_rows: int


def date_of(world: World, day: int) -> str:
    return str(np.datetime64(world.day_start_ms(day), "ms").astype("datetime64[D]"))


def format_lines(world: World, part: Partition, event_ids: list[str]) -> list[bytes]:
    """One compact JSON object per event, in the field order of DESIGN.md 4.1.

    Hand-built rather than json.dumps: every value is a plain id, number or known
    token (nothing to escape), and this loop dominates the generator's run time.
    """
    ev = part.events
    n_items = len(world.item_ids)
    iso = np.datetime_as_string(ev.ts_ms.astype("datetime64[ms]"), unit="ms").tolist()
    columns = zip(
        event_ids, ev.ts_ms.tolist(), iso, ev.user.tolist(), ev.session.tolist(), ev.kind.tolist(),
        ev.item.tolist(), ev.request.tolist(), ev.position.tolist(), ev.page.tolist(),
        ev.device.tolist(), ev.price.tolist(), ev.quantity.tolist(), strict=True,
    )
    user_ids, item_ids = world.user_ids, world.item_ids
    sessions, requests = part.session_ids, part.request_ids
    lines: list[bytes] = []
    for eid, ms, stamp, user, session, kind, item, request, position, page, device, price, qty in (
        columns
    ):
        # producers differ: iOS sends epoch ms, Android ISO with ms, the web ISO seconds
        if device == _IOS:
            ts = str(ms)
        elif device == _ANDROID:
            ts = f'"{stamp}Z"'
        else:
            ts = f'"{stamp[:19]}+00:00"'
        item_id = item_ids[item] if item < n_items else f"it{item:07d}"
        parts = [f'{{"event_id":"{eid}","ts":{ts},"user_id":"{user_ids[user]}"']
        if session >= 0:
            parts.append(f',"session_id":"{sessions[session]}"')
        parts.append(f',"event_type":"{EVENT_TYPES[kind]}","item_id":"{item_id}"')
        if request >= 0:
            parts.append(f',"request_id":"{requests[request]}"')
        if position >= 0:
            parts.append(f',"position":{position}')
        if page >= 0:
            parts.append(f',"page":"{PAGES[page]}"')
        parts.append(f',"device":"{DEVICES[device]}"')
        if price == price:  # not NaN
            parts.append(f',"price":{price:.2f}')
        if qty >= 0:
            parts.append(f',"quantity":{qty}')
        parts.append("}")
        lines.append("".join(parts).encode())
    return lines


def _write_atomic(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def _expected_log_value(price: np.ndarray, extra_quantity_mean: float) -> np.ndarray:
    """E[log1p(price x (1 + K))] for K ~ Poisson(extra_quantity_mean)."""
    k = np.arange(_QUANTITY_TERMS)
    log_factorial = np.cumsum(np.r_[0.0, np.log(k[1:])])
    pmf = np.exp(k * np.log(max(extra_quantity_mean, 1e-300)) - extra_quantity_mean
                 - log_factorial) if extra_quantity_mean > 0 else (k == 0).astype(float)
    return np.asarray(np.log1p(price[:, None] * (1 + k)[None, :]) @ pmf)


def _truth_table(
    world: World, part: Partition, event_ids: list[str], rows: np.ndarray
) -> pa.Table:
    imp = part.impressed
    probs, inputs = imp.probabilities, imp.inputs
    price = world.item_price[imp.item[rows]]
    p_click = probs.click[rows]
    p_buy = probs.purchase_given_click[rows]
    extra = world.config.behavior.extra_quantity_mean
    markets = [market.name for market in world.config.markets]
    users = imp.user[rows]
    return pa.table({
        "event_id": pa.array([event_ids[i] for i in rows.tolist()], pa.string()),
        "request_id": pa.array([part.request_ids[r] for r in imp.request[rows].tolist()]),
        "user_id": pa.array([world.user_ids[u] for u in users.tolist()], pa.string()),
        "item_id": pa.array([world.item_ids[i] for i in imp.item[rows].tolist()], pa.string()),
        "ts_ms": pa.array(imp.ts_ms[rows], pa.int64()),
        "market": pa.array([markets[m] for m in world.user_market[users].tolist()], pa.string()),
        "page": pa.array([PAGES[p] for p in imp.page[rows].tolist()], pa.string()),
        "position": pa.array(imp.position[rows], pa.int32()),
        "price": pa.array(price, pa.float64()),
        "p_click": pa.array(p_click, pa.float64()),
        "p_add_to_cart_given_click": pa.array(probs.add_to_cart_given_click[rows], pa.float64()),
        "p_purchase_given_click": pa.array(p_buy, pa.float64()),
        "expected_purchase_value": pa.array(p_click * p_buy * price * (1 + extra), pa.float64()),
        "expected_log_purchase_value": pa.array(
            p_click * p_buy * _expected_log_value(price, extra), pa.float64()
        ),
        "affinity": pa.array(inputs.affinity[rows], pa.float64()),
        "price_fit": pa.array(inputs.price_fit[rows], pa.float64()),
        "item_quality": pa.array(inputs.quality[rows], pa.float64()),
        "category_trend": pa.array(inputs.trend[rows], pa.float64()),
        "position_bias": pa.array(inputs.position_bias[rows], pa.float64()),
        "cold_user": pa.array(
            world.user_signup_ms[users] >= world.start_ms, pa.bool_()
        ),
        "cold_item": pa.array(
            world.item_created_ms[imp.item[rows]] >= world.start_ms, pa.bool_()
        ),
        "clicked": pa.array(imp.clicked[rows], pa.bool_()),
        "added_to_cart": pa.array(imp.carted[rows], pa.bool_()),
        "purchased": pa.array(imp.purchased[rows], pa.bool_()),
    })


def write_partition(world: World, day: int, shard: int, raw_root: Path,
                    truth_root: Path) -> PartitionStats:
    """Simulate, format, dirty and write one partition; return its counts."""
    config = world.config
    part = simulate_partition(world, day, shard)
    rng = part.rng
    ev = part.events
    n = len(ev)
    event_ids = hex_ids(rng, n, 2)
    lines = format_lines(world, part, event_ids)

    day_index = (ev.ts_ms - world.start_ms) // DAY_MS
    real = np.flatnonzero(ev.origin == REAL)
    late = np.zeros(n, dtype=bool)
    late[real] = (rng.random(len(real)) < config.dirt.late_arrival) & (
        day_index[real] < config.num_days - 1
    )
    file_day = day_index + late
    # late lines arrive some hours into the next day's delivery
    arrival = np.where(
        late, world.start_ms + file_day * DAY_MS + rng.integers(0, 6 * HOUR_MS, size=n),
        ev.ts_ms,
    )
    priced = real[~np.isnan(ev.price[real])]
    catalog_price = np.where(ev.item < len(world.item_ids),
                             world.item_price[np.minimum(ev.item, len(world.item_ids) - 1)], 1.0)
    injections = inject_defects(rng, config.dirt, lines, real, priced, catalog_price)

    defects: Counter[str] = Counter(injection.defect for injection in injections)
    defects[SilverOutcome.LATE_ARRIVAL.value] = int(late.sum())
    defects[SilverOutcome.BOT_USER.value] = int((ev.origin == BOT).sum())
    defects[SilverOutcome.UNKNOWN_ITEM.value] = int((ev.origin == UNKNOWN_ITEM).sum())

    pid = day * num_shards(world) + shard
    suffix = ".jsonl.gz" if config.compression == "gzip" else ".jsonl"
    lines_per_dt: Counter[str] = Counter()
    by_source: dict[int, list[int]] = {}
    for k, injection in enumerate(injections):
        by_source.setdefault(int(file_day[injection.source]), []).append(k)
    for target in np.unique(file_day).tolist():
        members = np.flatnonzero(file_day == target)
        members = members[np.argsort(arrival[members], kind="stable")]
        slot = np.empty(n, dtype=np.int64)
        slot[members] = np.arange(len(members))
        keys = [float(i) for i in range(len(members))]
        payload = [lines[i] for i in members.tolist()]
        for k in by_source.get(target, []):
            injection = injections[k]
            low = slot[injection.source] + 0.5 if injection.after_source else -0.5
            keys.append(float(rng.uniform(low, len(members))))
            payload.append(injection.line)
        order = np.argsort(np.asarray(keys), kind="stable")
        body = b"\n".join([payload[i] for i in order.tolist()]) + b"\n"
        if config.compression == "gzip":
            body = gzip.compress(body, mtime=0)
        dt = date_of(world, target)
        _write_atomic(raw_root / "events" / f"dt={dt}" / f"part-{pid:05d}{suffix}", body)
        lines_per_dt[dt] += len(order)

    truth_rows = 0
    event_of_truth = np.full(len(part.impressed.user), -1, dtype=np.int64)
    has_truth = ev.truth_row >= 0
    event_of_truth[ev.truth_row[has_truth]] = np.flatnonzero(has_truth)
    truth_day = day_index[event_of_truth]
    truth_event_ids = [event_ids[i] for i in event_of_truth.tolist()]
    for target in np.unique(truth_day).tolist():
        rows = np.flatnonzero(truth_day == target)
        dt = date_of(world, target)
        table = _truth_table(world, part, truth_event_ids, rows)
        path = truth_root / "impressions" / f"dt={dt}" / f"part-{pid:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        truth_rows += len(rows)

    per_kind = np.bincount(ev.kind[ev.origin == REAL], minlength=len(EVENT_TYPES))
    event_types = Counter(dict(zip(EVENT_TYPES, per_kind.tolist(), strict=True)))
    return PartitionStats(day, shard, lines_per_dt, defects, event_types, truth_rows)
