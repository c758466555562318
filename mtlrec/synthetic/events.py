"""Simulate one (day, shard) partition: sessions, page views, the funnel, bots, strays.

Everything is held as numpy columns (``EventFrame``) over the partition's events
only, so a worker's memory is bounded by the partition, never by the dataset.
Each partition draws from its own ``SeedSequence([seed, 0, day, shard])``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from mtlrec.raw_contract import DEVICES, PAGES
from mtlrec.synthetic.behavior import (
    FunnelProbabilities,
    ItemSampler,
    LatentInputs,
    funnel_probabilities,
    latent_inputs,
    show_items,
)
from mtlrec.synthetic.world import DAY_MS, HOUR_MS, World

IMPRESSION, CLICK, ADD_TO_CART, PURCHASE = range(4)  # indices into raw_contract.EVENT_TYPES
REAL, BOT, UNKNOWN_ITEM = range(3)  # EventFrame.origin
SESSION_GAP_MS = 30 * 60_000  # the sessionisation threshold of the contract
_PDP = PAGES.index("pdp")
_WEB = DEVICES.index("web")
_MISSING = -1


def partition_rng(seed: int, day: int, shard: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0, day, shard]))


def hex_ids(rng: np.random.Generator, count: int, words: int = 1) -> list[str]:
    """Random hexadecimal ids, 16 characters per 64-bit word (collisions are negligible)."""
    width = 16 * words
    text = rng.bytes(count * width // 2).hex()
    return [text[i : i + width] for i in range(0, count * width, width)]


@dataclasses.dataclass
class EventFrame:
    """Events as columns; ``_MISSING`` (-1) / NaN mark absent optional fields."""

    ts_ms: np.ndarray
    kind: np.ndarray
    user: np.ndarray
    item: np.ndarray  # >= num_items: an id absent from the catalog
    session: np.ndarray  # index into the partition's session ids
    request: np.ndarray  # index into the partition's request ids
    position: np.ndarray
    page: np.ndarray
    device: np.ndarray
    price: np.ndarray
    quantity: np.ndarray
    origin: np.ndarray
    truth_row: np.ndarray  # row in the partition's truth table (impressions), else -1

    def __len__(self) -> int:
        return len(self.ts_ms)

    def take(self, index: np.ndarray) -> EventFrame:
        return EventFrame(
            **{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)}
        )

    @staticmethod
    def concat(frames: list[EventFrame]) -> EventFrame:
        return EventFrame(**{
            f.name: np.concatenate([getattr(frame, f.name) for frame in frames])
            for f in dataclasses.fields(EventFrame)
        })


def _frame(n: int, **columns: np.ndarray) -> EventFrame:
    defaults: dict[str, np.ndarray] = {
        "session": np.full(n, _MISSING, dtype=np.int64),
        "request": np.full(n, _MISSING, dtype=np.int64),
        "position": np.full(n, _MISSING, dtype=np.int16),
        "page": np.full(n, _MISSING, dtype=np.int8),
        "price": np.full(n, np.nan),
        "quantity": np.full(n, _MISSING, dtype=np.int16),
        "truth_row": np.full(n, _MISSING, dtype=np.int64),
    }
    defaults.update(columns)
    return EventFrame(**defaults)


@dataclasses.dataclass
class Impressed:
    """The ground truth of the partition's impressions (row i = truth_row i)."""

    user: np.ndarray
    item: np.ndarray
    request: np.ndarray
    position: np.ndarray
    page: np.ndarray
    ts_ms: np.ndarray
    inputs: LatentInputs
    probabilities: FunnelProbabilities
    clicked: np.ndarray
    carted: np.ndarray
    purchased: np.ndarray


@dataclasses.dataclass
class Partition:
    """The clean content of one (day, shard) partition, before dirt and formatting."""

    day: int
    shard: int
    events: EventFrame
    impressed: Impressed
    session_ids: list[str]
    request_ids: list[str]
    rng: np.random.Generator  # continues the partition's stream for dirt and formatting


def shard_users(world: World, shard: int) -> range:
    per = world.config.users_per_shard
    return range(shard * per, min((shard + 1) * per, world.num_users_total))


def num_shards(world: World) -> int:
    return -(-world.num_users_total // world.config.users_per_shard)


def _sessions(
    world: World, day: int, users: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Session owner, start (ms) and page-view count, non-overlapping per user."""
    cfg = world.config.users
    weekday = (world.config.start + dt.timedelta(days=day)).weekday()
    boost = cfg.weekend_activity_boost if weekday >= 5 else 1.0
    counts = rng.poisson(world.user_activity[users] * cfg.sessions_per_user_day * boost)
    owner = np.repeat(users, counts)
    cum = np.cumsum(world.hourly_weights, axis=1)[world.user_market[owner]]
    hour = (rng.random(len(owner))[:, None] > cum[:, :-1]).sum(axis=1)
    start = world.day_start_ms(day) + hour * HOUR_MS + rng.integers(0, HOUR_MS, size=len(owner))
    views = 1 + rng.poisson(cfg.requests_per_session - 1, size=len(owner))
    order = np.lexsort((start, owner))
    return owner[order], start[order], views[order]


def _space_sessions(
    owner: np.ndarray, start: np.ndarray, duration: np.ndarray
) -> np.ndarray:
    """Push each session past its user's previous one by more than the session gap."""
    start = start.copy()
    same = np.flatnonzero(owner[1:] == owner[:-1]) + 1
    for i in same.tolist():  # few: most users have at most one session a day
        earliest = start[i - 1] + duration[i - 1] + SESSION_GAP_MS + 60_000
        if start[i] < earliest:
            start[i] = earliest
    return start


def _conversion_delay(world: World, rng: np.random.Generator, n: int) -> np.ndarray:
    """Click->cart or cart->purchase delays: mostly minutes, some hours; each < window/2."""
    beh = world.config.behavior
    half_window = beh.attribution_window_hours * HOUR_MS / 2
    fast = rng.exponential(beh.fast_conversion_minutes * 60_000, size=n)
    slow = rng.random(n) * half_window
    delay = np.where(rng.random(n) < beh.slow_conversion_share, slow, fast)
    return np.minimum(delay, half_window - 1).astype(np.int64) + 1_000


def simulate_partition(world: World, day: int, shard: int) -> Partition:
    rng = partition_rng(world.config.seed, day, shard)
    day_start = world.day_start_ms(day)
    shard_range = shard_users(world, shard)
    everyone = np.arange(shard_range.start, shard_range.stop)
    humans = everyone[~world.user_is_bot[everyone] & (world.user_signup_ms[everyone] < day_start)]
    sampler = ItemSampler.for_day(world, day)
    beh = world.config.behavior

    # --- sessions and page views ---
    owner, start, views = _sessions(world, day, humans, rng)
    session_of_view = np.repeat(np.arange(len(owner)), views)
    gaps = (rng.exponential(beh.request_gap_seconds * 1000, size=len(session_of_view))
            + 3_000).astype(np.int64)
    first = np.cumsum(views) - views  # each session's first view (empty when no sessions)
    gaps[first] = 0
    offset = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], views)
    duration = offset[np.cumsum(views) - 1] + 60_000
    start = _space_sessions(owner, start, duration)
    view_ts = start[session_of_view] + offset
    view_user = owner[session_of_view]
    n_sessions = len(owner)
    session_device = np.where(
        rng.random(n_sessions) < world.config.users.primary_device_share, world.user_device[owner],
        rng.integers(0, len(DEVICES), size=n_sessions),
    ).astype(np.int8)
    session_index = np.where(
        rng.random(n_sessions) < world.config.users.session_id_missing_share,
        _MISSING, np.arange(n_sessions),
    )

    shown = show_items(world, sampler, view_user, rng)
    imp_user = view_user[shown.request]
    imp_ts = view_ts[shown.request] + (shown.position - 1) * 15
    inputs = latent_inputs(world, day, imp_user, shown.item, shown.position)
    probs = funnel_probabilities(world, world.user_market[imp_user], inputs)
    n_imp = len(imp_user)
    clicked = rng.random(n_imp) < probs.click
    carted = clicked & (rng.random(n_imp) < probs.add_to_cart_given_click)
    purchased = carted & (rng.random(n_imp) < probs.purchase_given_cart)

    imp_session = session_of_view[shown.request]
    imp_page = shown.page[shown.request].astype(np.int8)
    device = session_device[imp_session]
    impressions = _frame(
        n_imp, ts_ms=imp_ts, kind=np.full(n_imp, IMPRESSION, dtype=np.int8),
        user=imp_user, item=shown.item, session=session_index[imp_session],
        request=shown.request.astype(np.int64), position=shown.position.astype(np.int16),
        page=imp_page, device=device, origin=np.full(n_imp, REAL, dtype=np.int8),
        truth_row=np.arange(n_imp),
    )

    # --- the funnel: clicks carry their impression's request; carts/purchases follow ---
    c = np.flatnonzero(clicked)
    click_ts = imp_ts[c] + 1_000 + rng.exponential(beh.click_dwell_seconds * 1000, len(c)).astype(
        np.int64
    )
    clicks = impressions.take(c)
    clicks.ts_ms, clicks.kind = click_ts, np.full(len(c), CLICK, dtype=np.int8)
    clicks.truth_row = np.full(len(c), _MISSING, dtype=np.int64)

    next_session = n_sessions
    cart_rows = carted[c]
    a = c[cart_rows]
    cart_delay = _conversion_delay(world, rng, len(a))
    cart_ts = click_ts[cart_rows] + cart_delay
    cart_session = np.where(
        cart_delay < SESSION_GAP_MS, session_index[imp_session[a]],
        next_session + np.arange(len(a)),
    )
    next_session += len(a)
    carts = _frame(
        len(a), ts_ms=cart_ts, kind=np.full(len(a), ADD_TO_CART, dtype=np.int8),
        user=imp_user[a], item=shown.item[a], session=cart_session,
        page=np.full(len(a), _PDP, dtype=np.int8), device=device[a],
        price=world.item_price[shown.item[a]], origin=np.full(len(a), REAL, dtype=np.int8),
    )
    buy_rows = purchased[a]
    b = a[buy_rows]
    buy_delay = _conversion_delay(world, rng, len(b))
    buy_session = np.where(
        buy_delay < SESSION_GAP_MS, cart_session[buy_rows], next_session + np.arange(len(b))
    )
    next_session += len(b)
    quantity = 1 + rng.poisson(beh.extra_quantity_mean, size=len(b))
    purchases = _frame(
        len(b), ts_ms=cart_ts[buy_rows] + buy_delay,
        kind=np.full(len(b), PURCHASE, dtype=np.int8), user=imp_user[b], item=shown.item[b],
        session=buy_session, device=device[b], price=world.item_price[shown.item[b]],
        quantity=quantity.astype(np.int16), origin=np.full(len(b), REAL, dtype=np.int8),
    )

    # --- bots: absurd activity, detectable only by thresholds ---
    bots, next_request, next_session = _bot_events(
        world, day, everyone, sampler, rng, len(shown.page), next_session
    )

    real = EventFrame.concat([impressions, clicks, carts, purchases])
    # the extract ends with the run window: later events are censored, as in a real export
    real = real.take(np.flatnonzero(real.ts_ms < world.end_ms))
    strays = _unknown_item_events(world, day, humans, rng, len(real), next_request)
    next_request += len(strays)
    events = EventFrame.concat([real, bots, strays])

    emitted = np.zeros(n_imp, dtype=bool)
    emitted[real.truth_row[real.truth_row >= 0]] = True
    click_ok = _within_window(world, clicks.ts_ms, c, n_imp)
    cart_ok = _within_window(world, cart_ts, a, n_imp)
    buy_ok = _within_window(world, cart_ts[buy_rows] + buy_delay, b, n_imp)
    keep = np.flatnonzero(emitted)
    remap = np.full(n_imp, _MISSING, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    has_truth = events.truth_row >= 0
    events.truth_row[has_truth] = remap[events.truth_row[has_truth]]
    impressed = Impressed(
        user=imp_user[keep], item=shown.item[keep], request=shown.request[keep],
        position=shown.position[keep], page=imp_page[keep], ts_ms=imp_ts[keep],
        inputs=LatentInputs(**{
            f.name: getattr(inputs, f.name)[keep] for f in dataclasses.fields(LatentInputs)
        }),
        probabilities=FunnelProbabilities(**{
            f.name: getattr(probs, f.name)[keep] for f in dataclasses.fields(FunnelProbabilities)
        }),
        clicked=click_ok[keep], carted=cart_ok[keep], purchased=buy_ok[keep],
    )
    return Partition(
        day=day, shard=shard, events=events, impressed=impressed,
        session_ids=hex_ids(rng, next_session), request_ids=hex_ids(rng, next_request),
        rng=rng,
    )


def _within_window(
    world: World, ts_ms: np.ndarray, rows: np.ndarray, n_imp: int
) -> np.ndarray:
    """Per impression: whether its funnel event at ``ts_ms`` made it into the extract."""
    flag = np.zeros(n_imp, dtype=bool)
    flag[rows[ts_ms < world.end_ms]] = True
    return flag


def _bot_events(
    world: World, day: int, everyone: np.ndarray, sampler: ItemSampler,
    rng: np.random.Generator, first_request: int, first_session: int,
) -> tuple[EventFrame, int, int]:
    """Bots crawl: a page view every few seconds, ten items each, clicking many."""
    dirt = world.config.dirt
    active = everyone[world.bot_active[everyone, day]]
    frames: list[EventFrame] = []
    request, session = first_request, first_session
    for bot in active.tolist():
        per_view = 10
        n_views = max(1, round(dirt.bot_events_per_day * rng.uniform(0.75, 1.25)
                               / (per_view * (1 + dirt.bot_click_share))))
        view_ts = (world.day_start_ms(day) + int(rng.integers(0, 12 * HOUR_MS))
                   + np.cumsum(rng.integers(1_500, 6_000, size=n_views)))
        n = n_views * per_view
        view = np.repeat(np.arange(n_views), per_view)
        imp = _frame(
            n, ts_ms=view_ts[view], kind=np.full(n, IMPRESSION, dtype=np.int8),
            user=np.full(n, bot), item=sampler.global_items(rng, n),
            session=np.full(n, session, dtype=np.int64), request=request + view,
            position=np.tile(np.arange(1, per_view + 1), n_views).astype(np.int16),
            page=np.full(n, PAGES.index("search"), dtype=np.int8),
            device=np.full(n, _WEB, dtype=np.int8), origin=np.full(n, BOT, dtype=np.int8),
        )
        clicks = imp.take(np.flatnonzero(rng.random(n) < dirt.bot_click_share))
        clicks.kind = np.full(len(clicks), CLICK, dtype=np.int8)
        clicks.ts_ms = clicks.ts_ms + rng.integers(200, 1_200, size=len(clicks))
        frames += [imp, clicks]
        request += n_views
        session += 1
    if not frames:
        return _frame(0, ts_ms=np.zeros(0, dtype=np.int64), kind=np.zeros(0, dtype=np.int8),
                      user=np.zeros(0, dtype=np.int64), item=np.zeros(0, dtype=np.int64),
                      device=np.zeros(0, dtype=np.int8),
                      origin=np.zeros(0, dtype=np.int8)), request, session
    bot_frame = EventFrame.concat(frames)
    return bot_frame.take(np.flatnonzero(bot_frame.ts_ms < world.end_ms)), request, session


def _unknown_item_events(
    world: World, day: int, humans: np.ndarray, rng: np.random.Generator, n_clean: int,
    first_request: int,
) -> EventFrame:
    """Clicks and carts on ids absent from the catalog (catalog lag, deleted listings)."""
    n = int(rng.binomial(n_clean, world.config.dirt.unknown_item)) if len(humans) else 0
    n_items = len(world.item_ids)
    kind = np.where(rng.random(n) < 0.7, CLICK, ADD_TO_CART).astype(np.int8)
    is_click = kind == CLICK
    return _frame(
        n, ts_ms=world.day_start_ms(day) + rng.integers(0, DAY_MS, size=n), kind=kind,
        user=rng.choice(humans, size=n) if n else np.zeros(0, dtype=np.int64),
        item=n_items + rng.integers(0, max(n_items, 1000), size=n),
        request=np.where(is_click, first_request + np.arange(n), _MISSING),
        position=np.where(is_click, rng.integers(1, 21, size=n), _MISSING).astype(np.int16),
        page=np.where(is_click, rng.integers(0, len(PAGES), size=n), _PDP).astype(np.int8),
        device=rng.integers(0, len(DEVICES), size=n).astype(np.int8),
        price=np.where(is_click, np.nan, np.round(rng.lognormal(3.5, 0.8, size=n), 2)),
        origin=np.full(n, UNKNOWN_ITEM, dtype=np.int8),
    )
