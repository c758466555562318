"""What users are shown and how they respond: the logging policy and the funnel model.

The logging policy fills each page view with items from the page's context
category or from global popularity and ranks them by noisy popularity (so
position correlates with popularity, as with a production ranker). The funnel
is an examination model: an impression is clicked with probability
``position_bias * sigmoid(intercept + affinity, quality, price fit, trend)``;
cart and purchase given click are logistic in affinity and price fit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mtlrec.raw_contract import PAGES
from mtlrec.synthetic.world import World

_DEDUPE_ROUNDS = 4


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


@dataclasses.dataclass(frozen=True)
class ItemSampler:
    """Popularity-weighted draws over the items live on one day, globally or per leaf."""

    order: np.ndarray  # item indices sorted by leaf
    cumulative: np.ndarray  # cumulative weight along ``order``
    leaf_base: np.ndarray  # cumulative weight before each leaf's block
    leaf_total: np.ndarray
    leaf_cumulative: np.ndarray  # over leaves, for drawing a leaf by popularity
    log_weight: np.ndarray  # per item; -inf when not yet in the catalog

    @classmethod
    def for_day(cls, world: World, day: int) -> ItemSampler:
        live = world.item_created_ms < world.day_start_ms(day)
        trend = world.category_trend[day, world.leaf_top[world.item_leaf]]
        log_weight = np.where(live, world.item_log_pop + trend, -np.inf)
        weight = np.exp(log_weight)
        order = np.argsort(world.item_leaf, kind="stable")
        cumulative = np.cumsum(weight[order])
        leaf_total = np.bincount(world.item_leaf, weights=weight, minlength=len(world.leaf_top))
        leaf_base = np.concatenate([[0.0], np.cumsum(leaf_total)[:-1]])
        if cumulative[-1] <= 0:
            raise ValueError(f"no item is in the catalog on day {day}")
        return cls(order, cumulative, leaf_base, leaf_total, np.cumsum(leaf_total), log_weight)

    def _at(self, targets: np.ndarray) -> np.ndarray:
        # side="right" never lands on a zero-weight item: it skips equal cumulative values
        index = np.searchsorted(self.cumulative, targets, side="right")
        return np.asarray(self.order[np.minimum(index, len(self.order) - 1)])

    def global_items(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self._at(rng.random(size) * self.cumulative[-1])

    def leaf_items(self, rng: np.random.Generator, leaves: np.ndarray) -> np.ndarray:
        """One item per requested leaf; leaves with no live item fall back to global."""
        empty = self.leaf_total[leaves] <= 0
        targets = self.leaf_base[leaves] + rng.random(len(leaves)) * self.leaf_total[leaves]
        items = self._at(targets)
        if empty.any():
            items[empty] = self.global_items(rng, int(empty.sum()))
        return items

    def popular_leaves(self, rng: np.random.Generator, size: int) -> np.ndarray:
        targets = rng.random(size) * self.leaf_cumulative[-1]
        index = np.searchsorted(self.leaf_cumulative, targets, side="right")
        return np.minimum(index, len(self.leaf_total) - 1)


@dataclasses.dataclass(frozen=True)
class Impressions:
    """Slots shown, sorted by (request, position); ``request`` indexes the caller's requests."""

    request: np.ndarray
    item: np.ndarray
    position: np.ndarray  # 1-based slot
    page: np.ndarray  # per request: index into raw_contract.PAGES


def show_items(
    world: World, sampler: ItemSampler, users: np.ndarray, rng: np.random.Generator
) -> Impressions:
    """Fill one page view per entry of ``users`` (user indices) with distinct items."""
    pages_cfg = world.config.pages
    n_req = len(users)
    page_shares = np.array([pages_cfg.page_shares[p] for p in PAGES])
    page = rng.choice(len(PAGES), size=n_req, p=page_shares / page_shares.sum())
    size = rng.integers(pages_cfg.impressions_min, pages_cfg.impressions_max + 1, size=n_req)

    fav_cum = np.cumsum(world.user_fav_weights[users], axis=1)
    fav_slot = (rng.random(n_req)[:, None] > fav_cum[:, :-1]).sum(axis=1)
    favourite = world.user_fav_leaves[users, fav_slot]
    context = np.where(
        rng.random(n_req) < pages_cfg.favourite_context_share,
        favourite, sampler.popular_leaves(rng, n_req),
    )

    request = np.repeat(np.arange(n_req), size)
    focus = np.array([pages_cfg.page_focus[p] for p in PAGES])[page[request]]
    focused = rng.random(len(request)) < focus
    item = sampler.global_items(rng, len(request))
    item[focused] = sampler.leaf_items(rng, context[request[focused]])

    # A page never shows an item twice (request_id + item_id identifies an impression).
    n_items = len(world.item_ids)
    for _ in range(_DEDUPE_ROUNDS):
        repeated = _repeated(request, item, n_items)
        if not repeated.any():
            break
        item[repeated] = sampler.global_items(rng, int(repeated.sum()))
    keep = ~_repeated(request, item, n_items)
    request, item = request[keep], item[keep]

    score = sampler.log_weight[item] + pages_cfg.ranking_noise * rng.gumbel(size=len(item))
    order = np.lexsort((-score, request))
    request, item = request[order], item[order]
    starts = np.flatnonzero(np.r_[True, request[1:] != request[:-1]])
    lengths = np.diff(np.r_[starts, len(request)])
    position = np.arange(len(request)) - np.repeat(starts, lengths) + 1
    return Impressions(request=request, item=item, position=position, page=page)


def _repeated(request: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """True where (request, item) occurred earlier in the arrays."""
    keys = request.astype(np.int64) * n_items + item
    _, first = np.unique(keys, return_index=True)
    mask = np.ones(len(keys), dtype=bool)
    mask[first] = False
    return mask


@dataclasses.dataclass(frozen=True)
class LatentInputs:
    """The true per-impression inputs of the funnel (also written to the ground truth)."""

    affinity: np.ndarray
    price_fit: np.ndarray
    quality: np.ndarray
    trend: np.ndarray
    position_bias: np.ndarray


def latent_inputs(
    world: World, day: int, users: np.ndarray, items: np.ndarray, positions: np.ndarray
) -> LatentInputs:
    dim = world.config.behavior.latent_dim
    affinity = np.einsum(
        "nd,nd->n", world.user_vec[users], world.item_vec[items], dtype=np.float64
    ) / np.sqrt(dim)
    gap = world.item_price_z[items] - world.user_price_pref[users]
    # paying more than one's usual level hurts; paying less only mildly signals low quality
    price_fit = -world.user_price_sens[users] * np.where(gap > 0, gap, -0.3 * gap)
    trend = world.category_trend[day, world.leaf_top[world.item_leaf[items]]]
    bias = positions.astype(np.float64) ** -world.config.behavior.position_bias_exponent
    return LatentInputs(affinity, price_fit, world.item_quality[items], trend, bias)


@dataclasses.dataclass(frozen=True)
class FunnelScores:
    """Logits of the three funnel stages without their market intercepts."""

    click: np.ndarray
    add_to_cart: np.ndarray
    purchase_given_cart: np.ndarray


def funnel_scores(world: World, inputs: LatentInputs) -> FunnelScores:
    beh = world.config.behavior
    return FunnelScores(
        click=beh.click_affinity_weight * inputs.affinity
        + beh.click_quality_weight * inputs.quality
        + beh.click_price_weight * inputs.price_fit
        + inputs.trend,
        add_to_cart=beh.add_to_cart_affinity_weight * inputs.affinity
        + beh.add_to_cart_price_weight * inputs.price_fit,
        purchase_given_cart=beh.purchase_affinity_weight * inputs.affinity
        + beh.purchase_price_weight * inputs.price_fit,
    )


@dataclasses.dataclass(frozen=True)
class FunnelProbabilities:
    click: np.ndarray
    add_to_cart_given_click: np.ndarray
    purchase_given_cart: np.ndarray

    @property
    def purchase_given_click(self) -> np.ndarray:
        return np.asarray(self.add_to_cart_given_click * self.purchase_given_cart)


def funnel_probabilities(
    world: World, markets: np.ndarray, inputs: LatentInputs
) -> FunnelProbabilities:
    scores = funnel_scores(world, inputs)
    return FunnelProbabilities(
        click=inputs.position_bias * sigmoid(world.click_intercept[markets] + scores.click),
        add_to_cart_given_click=sigmoid(world.add_to_cart_intercept[markets] + scores.add_to_cart),
        purchase_given_cart=sigmoid(
            world.purchase_intercept[markets] + scores.purchase_given_cart
        ),
    )
