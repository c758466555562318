"""Calibrate each market's funnel intercepts so the observed base rates hit their targets.

The intercepts are solved by bisection on a sample of page views drawn with the
same logging policy as the log itself (day 0, users drawn by activity), so the
configured ``rates`` hold for the data as generated, whatever the weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from mtlrec.errors import InputError
from mtlrec.synthetic.behavior import (
    ItemSampler,
    funnel_scores,
    latent_inputs,
    show_items,
    sigmoid,
)
from mtlrec.synthetic.world import World, world_rng

CALIBRATION_PAGE_VIEWS = 4_000
_LOW, _HIGH = -30.0, 30.0


class CalibrationError(InputError, ValueError):
    """The configured rates cannot be reached; the message names the field."""


def _solve(rate_at: Callable[[float], float], target: float, field: str) -> float:
    """The intercept b with rate_at(b) == target (rate_at increases with b)."""
    if not rate_at(_LOW) < target < rate_at(_HIGH):
        raise CalibrationError(
            f"generator.{field}: target {target:.4g} is unreachable (achievable range "
            f"{rate_at(_LOW):.4g}..{rate_at(_HIGH):.4g} given position bias and weights)"
        )
    low, high = _LOW, _HIGH
    for _ in range(60):
        mid = (low + high) / 2
        if rate_at(mid) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _market_intercepts(
    world: World, sampler: ItemSampler, m: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Click, add-to-cart and purchase-given-cart intercepts of market ``m``."""
    config = world.config
    market = config.markets[m]
    candidates = np.flatnonzero((world.user_market == m) & ~world.user_is_bot)
    if len(candidates) == 0:
        raise CalibrationError(
            f"generator.markets[{m}] ({market.name}) has no users; raise its user_share "
            "or num_users"
        )
    weights = world.user_activity[candidates]
    users = rng.choice(candidates, size=CALIBRATION_PAGE_VIEWS, p=weights / weights.sum())
    shown = show_items(world, sampler, users, rng)
    inputs = latent_inputs(world, 0, users[shown.request], shown.item, shown.position)
    scores = funnel_scores(world, inputs)
    bias = inputs.position_bias

    click_b = _solve(
        lambda b: float(np.mean(bias * sigmoid(b + scores.click))),
        config.rates.click * market.click_scale, f"rates.click x markets[{m}].click_scale",
    )
    p_click = bias * sigmoid(click_b + scores.click)
    clicks = p_click.sum()
    cart_b = _solve(
        lambda b: float((p_click * sigmoid(b + scores.add_to_cart)).sum() / clicks),
        config.rates.add_to_cart_given_click * market.conversion_scale,
        f"rates.add_to_cart_given_click x markets[{m}].conversion_scale",
    )
    carted = p_click * sigmoid(cart_b + scores.add_to_cart)
    buy_b = _solve(
        lambda b: float((carted * sigmoid(b + scores.purchase_given_cart)).sum() / clicks),
        config.rates.purchase_given_click * market.conversion_scale,
        f"rates.purchase_given_click x markets[{m}].conversion_scale",
    )
    return click_b, cart_b, buy_b


def calibrate_world(world: World) -> World:
    """Return ``world`` with click, cart and purchase intercepts solved per market."""
    rng = world_rng(world.config, 1)
    sampler = ItemSampler.for_day(world, 0)
    solved = np.array([
        _market_intercepts(world, sampler, m, rng) for m in range(len(world.config.markets))
    ])
    return dataclasses.replace(
        world, click_intercept=solved[:, 0], add_to_cart_intercept=solved[:, 1],
        purchase_intercept=solved[:, 2],
    )
