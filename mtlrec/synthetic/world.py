"""The simulated world: category tree, catalog, users and their latent tastes.

Everything here is a pure function of the configuration and seed, built once by
the driver and shared read-only with the partition workers. The world is small
next to the event log (arrays over users and items, not over events).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from mtlrec.synthetic.config import GeneratorConfig

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

TOP_CATEGORY_NAMES = (
    "electronics", "fashion", "home", "beauty", "sports", "toys", "garden", "books",
    "grocery", "automotive", "pets", "office", "music", "health", "jewelry", "tools",
)
TIERS = ("basic", "plus", "vip")
TIER_SHARES = (0.7, 0.25, 0.05)
TIER_PRICE_SHIFT = (0.0, 0.4, 0.9)
DEVICE_SHARES = (0.35, 0.4, 0.25)  # order of raw_contract.DEVICES: ios, android, web
# Title words tied to the sign of one latent taste dimension each, so that a text encoder
# can recover part of an item's taste vector from its title.
STYLE_WORDS = (
    ("classic", "modern"), ("compact", "oversized"), ("matte", "glossy"), ("eco", "sport"),
    ("soft", "rugged"), ("minimal", "deluxe"), ("vintage", "smart"), ("light", "heavy-duty"),
    ("cozy", "sleek"), ("natural", "neon"), ("handmade", "pro"), ("slim", "wide"),
    ("quiet", "turbo"), ("kids", "adult"), ("travel", "studio"), ("organic", "hybrid"),
)
PRICE_WORDS = ("budget", "value", "", "premium", "luxury")
COLORS = ("black", "white", "red", "blue", "green", "grey", "beige", "pink", "navy", "olive")
_CONSONANTS = "bcdfgklmnprstvz"
_VOWELS = "aeiou"
# Day-of-week session multipliers come from config; this is the local-time hourly shape of
# traffic (night trough, lunch and evening peaks), normalised below.
_HOURLY_SHAPE = np.array(
    [0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 0.8, 0.9, 1.0, 1.1,
     1.3, 1.2, 1.0, 1.0, 1.0, 1.1, 1.3, 1.6, 1.8, 1.7, 1.2, 0.6]
)


@dataclasses.dataclass(frozen=True)
class World:
    """Arrays describing the catalog and the users; index = dense item / user number."""

    config: GeneratorConfig
    start_ms: int
    # category tree: leaf -> level-1 index and the "A>B>C" path
    leaf_top: np.ndarray
    leaf_paths: list[str]
    leaf_weight: np.ndarray
    # items
    item_ids: list[str]
    item_leaf: np.ndarray
    item_brand: list[str]
    item_price: np.ndarray
    item_price_z: np.ndarray  # log price relative to its leaf, standardised
    item_quality: np.ndarray  # standardised log popularity
    item_log_pop: np.ndarray
    item_created_ms: np.ndarray
    item_titles: list[str]
    item_vec: np.ndarray
    # users (bots included, flagged)
    user_ids: list[str]
    user_market: np.ndarray
    user_tier: np.ndarray
    user_device: np.ndarray
    user_activity: np.ndarray
    user_signup_ms: np.ndarray
    user_price_pref: np.ndarray
    user_price_sens: np.ndarray
    user_fav_leaves: np.ndarray
    user_fav_weights: np.ndarray
    user_vec: np.ndarray
    user_is_bot: np.ndarray
    bot_active: np.ndarray  # (users, days): True on the days a bot crawls (never for humans)
    # time
    category_trend: np.ndarray  # (num_days, top_categories)
    hourly_weights: np.ndarray  # (markets, 24) UTC-hour distribution of session starts
    # calibrated intercepts per market (filled by calibrate.calibrate_world)
    click_intercept: np.ndarray
    add_to_cart_intercept: np.ndarray
    purchase_intercept: np.ndarray

    @property
    def num_users_total(self) -> int:
        return len(self.user_ids)

    @property
    def bot_user_ids(self) -> list[str]:
        return [self.user_ids[i] for i in np.flatnonzero(self.user_is_bot)]

    def day_start_ms(self, day: int) -> int:
        return self.start_ms + day * DAY_MS

    @property
    def end_ms(self) -> int:
        return self.day_start_ms(self.config.num_days)


def world_rng(config: GeneratorConfig, purpose: int) -> np.random.Generator:
    """A generator for world-level draws; ``purpose`` separates independent streams."""
    return np.random.default_rng(np.random.SeedSequence([config.seed, 1, purpose]))


def _pseudo_words(rng: np.random.Generator, count: int, syllables: tuple[int, int]) -> list[str]:
    """Distinct pronounceable words (category and brand names that carry no prior meaning)."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        length = int(rng.integers(syllables[0], syllables[1] + 1))
        word = "".join(
            _CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))]
            for _ in range(length)
        )
        if rng.random() < 0.5:
            word += _CONSONANTS[rng.integers(len(_CONSONANTS))]
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _combine(parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """Weighted sum of unit-variance components, rescaled to unit variance."""
    total = sum(weight * array for weight, array in parts)
    return np.asarray(total / np.sqrt(sum(weight**2 for weight, _ in parts)), dtype=np.float32)


def _top_k_by_gumbel(
    rng: np.random.Generator, log_weights: np.ndarray, k: int
) -> np.ndarray:
    """Per row, k distinct column indices sampled without replacement by weight."""
    keys = log_weights + rng.gumbel(size=log_weights.shape)
    return np.argsort(-keys, axis=1)[:, :k]


def _title(
    rng: np.random.Generator, brand: str, leaf_word: str, mid_word: str, vec: np.ndarray,
    price_z: float,
) -> str:
    dims = np.argsort(-np.abs(vec[: len(STYLE_WORDS)]))[:2]
    styles = [STYLE_WORDS[d][int(vec[d] > 0)] for d in dims]
    price_word = PRICE_WORDS[int(np.clip(np.round(price_z + 2), 0, 4))]
    words = [brand.capitalize(), price_word, *styles, mid_word, leaf_word]
    if rng.random() < 0.6:
        words.insert(len(words) - 1, COLORS[rng.integers(len(COLORS))])
    words.append(f"{_CONSONANTS[rng.integers(len(_CONSONANTS))].upper()}{rng.integers(10, 999)}")
    return " ".join(word for word in words if word)


def build_world(config: GeneratorConfig) -> World:
    """Draw the catalog, the users and their tastes (intercepts left at zero)."""
    rng = world_rng(config, 0)
    cat, users_cfg, beh = config.catalog, config.users, config.behavior
    dim = beh.latent_dim
    start = dt.datetime.combine(config.start, dt.time(), tzinfo=dt.UTC)
    start_ms = int(start.timestamp() * 1000)
    days = config.num_days

    # --- category tree: embeddings at each level, so that siblings share taste ---
    n_top, n_mid = cat.top_categories, cat.top_categories * cat.subcategories_per_category
    n_leaf = config.num_leaves
    mid_top = np.repeat(np.arange(n_top), cat.subcategories_per_category)
    leaf_mid = np.repeat(np.arange(n_mid), cat.leaves_per_subcategory)
    leaf_top = mid_top[leaf_mid]
    mid_words = _pseudo_words(rng, n_mid, (2, 3))
    leaf_words = _pseudo_words(rng, n_leaf, (2, 3))
    leaf_paths = [
        f"{TOP_CATEGORY_NAMES[leaf_top[leaf]]}>{mid_words[leaf_mid[leaf]]}>{leaf_words[leaf]}"
        for leaf in range(n_leaf)
    ]
    top_emb = rng.normal(size=(n_top, dim))
    mid_emb = rng.normal(size=(n_mid, dim))
    leaf_emb = rng.normal(size=(n_leaf, dim))
    leaf_vec = _combine([(1.0, top_emb[leaf_top]), (0.8, mid_emb[leaf_mid]), (0.6, leaf_emb)])
    leaf_weight = rng.lognormal(0.0, 0.7, size=n_leaf)
    leaf_weight /= leaf_weight.sum()

    # --- brands: each belongs to one level-1 category, with its own price level ---
    n_brands = n_top * cat.brands_per_category
    brand_names = _pseudo_words(rng, n_brands, (2, 3))
    brand_emb = rng.normal(size=(n_brands, dim))
    brand_price = rng.normal(0.0, cat.price_spread * 0.5, size=n_brands)

    # --- items ---
    n_items = config.num_items
    item_leaf = rng.choice(n_leaf, size=n_items, p=leaf_weight)
    within = rng.zipf(1.6, size=n_items) - 1  # a few dominant brands per category
    item_brand_idx = leaf_top[item_leaf] * cat.brands_per_category + np.minimum(
        within, cat.brands_per_category - 1
    )
    item_vec = _combine([
        (1.0, leaf_vec[item_leaf].astype(np.float64)),
        (0.45, brand_emb[item_brand_idx]),
        (0.6, rng.normal(size=(n_items, dim))),
    ])
    leaf_price = rng.normal(0.0, cat.price_spread * 0.6, size=n_leaf)
    own_price = rng.normal(0.0, cat.price_spread * 0.6, size=n_items)
    relative = brand_price[item_brand_idx] + own_price
    item_price_z = (relative - relative.mean()) / relative.std()
    item_price = np.round(
        np.maximum(cat.median_price * np.exp(leaf_price[item_leaf] + relative), 0.5) - 0.01, 2
    )
    rank = rng.permutation(n_items) + 1
    item_log_pop = -cat.popularity_exponent * np.log(rank)
    item_quality = (item_log_pop - item_log_pop.mean()) / item_log_pop.std()
    item_created_ms = start_ms - rng.integers(DAY_MS, 720 * DAY_MS, size=n_items)
    cold_items = rng.random(n_items) < cat.cold_item_share
    cold_day = rng.integers(1, days, size=n_items)
    item_created_ms = np.where(
        cold_items, start_ms + cold_day * DAY_MS - rng.integers(1, 12 * HOUR_MS, size=n_items),
        item_created_ms,
    )
    item_ids = [f"it{index:07d}" for index in rng.permutation(n_items)]
    item_brand = [brand_names[b] for b in item_brand_idx]
    item_titles = [
        _title(rng, item_brand[i], leaf_words[item_leaf[i]], mid_words[leaf_mid[item_leaf[i]]],
               item_vec[i], float(item_price_z[i]))
        for i in range(n_items)
    ]

    # --- markets: shared structure, their own taste tilt over level-1 categories ---
    markets = config.markets
    shares = np.array([market.user_share for market in markets])
    shares = shares / shares.sum()
    market_tilt = rng.normal(0.0, beh.market_taste_divergence, size=(len(markets), n_top))

    # --- users (real ones, then bots placed at random indices) ---
    n_real = config.num_users
    n_bots = (max(1, round(config.dirt.bot_user_share * n_real))
              if config.dirt.bot_user_share > 0 else 0)
    n_total = n_real + n_bots
    is_bot = np.zeros(n_total, dtype=bool)
    is_bot[rng.choice(n_total, size=n_bots, replace=False)] = True
    user_market = rng.choice(len(markets), size=n_total, p=shares).astype(np.int16)
    user_tier = rng.choice(len(TIERS), size=n_total, p=TIER_SHARES).astype(np.int16)
    user_device = rng.choice(len(DEVICE_SHARES), size=n_total, p=DEVICE_SHARES).astype(np.int16)
    activity = rng.pareto(users_cfg.activity_exponent, size=n_total) + 1.0
    activity = np.minimum(activity / activity.mean(), users_cfg.max_activity)
    activity /= activity.mean()
    k = users_cfg.favourite_leaves
    fav_leaves = np.empty((n_total, k), dtype=np.int32)
    for lo in range(0, n_total, 20_000):  # bounded memory: users x leaves per chunk
        hi = min(lo + 20_000, n_total)
        log_w = np.log(leaf_weight)[None, :] + market_tilt[user_market[lo:hi]][:, leaf_top]
        fav_leaves[lo:hi] = _top_k_by_gumbel(rng, log_w, k)
    fav_weights = rng.dirichlet(np.ones(k), size=n_total).astype(np.float32)
    taste = np.einsum("uk,ukd->ud", fav_weights, leaf_vec[fav_leaves].astype(np.float64))
    taste /= np.sqrt(np.einsum("uk,uk->u", fav_weights, fav_weights))[:, None]
    fav_brand = leaf_top[fav_leaves[:, 0]] * cat.brands_per_category + rng.integers(
        0, cat.brands_per_category, size=n_total
    )
    user_vec = _combine([
        (1.0, taste), (0.35, brand_emb[fav_brand]), (0.5, rng.normal(size=(n_total, dim)))
    ])
    price_pref = np.asarray(TIER_PRICE_SHIFT)[user_tier] + rng.normal(0.0, 0.7, size=n_total)
    price_sens = rng.lognormal(0.0, 0.4, size=n_total)
    price_sens /= price_sens.mean()
    signup_ms = start_ms - rng.integers(DAY_MS, 1000 * DAY_MS, size=n_total)
    cold_users = (rng.random(n_total) < users_cfg.cold_user_share) & ~is_bot
    signup_day = rng.integers(0, days - 1, size=n_total)
    signup_ms = np.where(
        cold_users, start_ms + signup_day * DAY_MS + rng.integers(0, DAY_MS, size=n_total),
        signup_ms,
    )
    user_ids = [f"u{index:08d}" for index in rng.permutation(n_total) + 10_000]
    # each bot crawls on a fixed number of random days, so every run has bot traffic
    bot_days = max(1, round(config.dirt.bot_active_day_share * days))
    bot_active = np.zeros((n_total, days), dtype=bool)
    for bot in np.flatnonzero(is_bot).tolist():
        bot_active[bot, rng.choice(days, size=bot_days, replace=False)] = True

    # --- time: category appeal drifts slowly; traffic follows the local clock ---
    steps = rng.normal(0.0, beh.category_drift_std, size=(days, n_top))
    steps[0] = 0.0
    category_trend = np.cumsum(steps, axis=0)
    # UTC hour h is local hour h + offset, so UTC weight[h] = shape[(h + offset) % 24]
    hourly = np.stack([np.roll(_HOURLY_SHAPE, -market.utc_offset_hours) for market in markets])
    hourly_weights = hourly / hourly.sum(axis=1, keepdims=True)

    zeros = np.zeros(len(markets))
    return World(
        config=config, start_ms=start_ms, leaf_top=leaf_top, leaf_paths=leaf_paths,
        leaf_weight=leaf_weight, item_ids=item_ids, item_leaf=item_leaf, item_brand=item_brand,
        item_price=item_price, item_price_z=item_price_z, item_quality=item_quality,
        item_log_pop=item_log_pop, item_created_ms=item_created_ms, item_titles=item_titles,
        item_vec=item_vec, user_ids=user_ids, user_market=user_market, user_tier=user_tier,
        user_device=user_device, user_activity=activity, user_signup_ms=signup_ms,
        user_price_pref=price_pref, user_price_sens=price_sens, user_fav_leaves=fav_leaves,
        user_fav_weights=fav_weights, user_vec=user_vec, user_is_bot=is_bot, bot_active=bot_active,
        category_trend=category_trend, hourly_weights=hourly_weights,
        click_intercept=zeros, add_to_cart_intercept=zeros.copy(),
        purchase_intercept=zeros.copy(),
    )
