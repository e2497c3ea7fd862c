"""The customer lifecycle: daily churn hazard, daily order probability, and the exact
probability of "no order in the next H days" used as churn ground truth.

Each day, for a customer who has not churned: first the churn draw (probability ``hazard``;
a churned customer never orders again), then, if still active, the order draw (probability
``order_prob``). At most one purchase order per customer per day.

On a path without orders nothing that feeds the hazard is random: loyalty tiers only change
with spend, moves stay within the country, and the returns still to come are already decided
(pending). That is why :func:`no_order_probability` is exact given the latent state.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BASE_DAILY_HAZARD = 0.004
TIER_EFFECT: tuple[float, ...] = (0.3, 0.0, -0.6)  # bronze, silver, gold
CHANNEL_EFFECT: tuple[float, ...] = (0.0, -0.25, 0.45, 0.60)  # web, app, marketplace, social
COUNTRY_EFFECT: tuple[float, ...] = (0.0, -0.10, 0.05, 0.20, 0.35)  # NL, DE, BE, FR, ES
SENSITIVITY_EFFECT = 0.8  # per unit of price sensitivity (0..1) above 0.4
PRICE_RISE_EFFECT = 4.0  # per unit of sensitivity x relative price rise
RETURN_EFFECT = 0.35  # per unit of decayed recent-return score
NEW_CUSTOMER_EFFECT = 0.6  # extra log-hazard right after signup ...
NEW_CUSTOMER_DAYS = 60.0  # ... decaying with this time constant
MAX_DAILY_HAZARD = 0.5
RETURN_HALF_LIFE_DAYS = 30.0


def return_decay() -> float:
    """Daily multiplier of the recent-return score."""
    return 0.5 ** (1.0 / RETURN_HALF_LIFE_DAYS)


def base_log_hazard(
    tier: np.ndarray,
    signup_channel: np.ndarray,
    country: np.ndarray,
    sensitivity: np.ndarray,
    frailty: np.ndarray,
) -> np.ndarray:
    """The time-invariant part of the log daily hazard (``frailty`` is unobservable)."""
    return (
        np.log(BASE_DAILY_HAZARD)
        + np.asarray(TIER_EFFECT)[tier]
        + np.asarray(CHANNEL_EFFECT)[signup_channel]
        + np.asarray(COUNTRY_EFFECT)[country]
        + SENSITIVITY_EFFECT * (sensitivity - 0.4)
        + frailty
    )


def daily_hazard(
    base: np.ndarray,
    return_score: np.ndarray,
    tenure_days: np.ndarray,
    sensitivity: np.ndarray,
    price_index: float,
) -> np.ndarray:
    """Probability of churning today, for customers not churned yet."""
    log_hazard = (
        base
        + RETURN_EFFECT * return_score
        + NEW_CUSTOMER_EFFECT * np.exp(-np.maximum(tenure_days, 0) / NEW_CUSTOMER_DAYS)
        + PRICE_RISE_EFFECT * sensitivity * (price_index - 1.0)
    )
    return np.minimum(np.exp(log_hazard), MAX_DAILY_HAZARD)


def order_probability(rate: np.ndarray, intensity: float) -> np.ndarray:
    """Probability of at least one order today: Poisson with the seasonal rate."""
    return -np.expm1(-rate * intensity)


def no_order_probability(days: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """P(no purchase in the horizon) for customers active at its start.

    ``days`` gives ``(hazard, order_prob)`` vectors per horizon day, e.g.
    ``zip(hazard_matrix, order_prob_matrix)`` for ``(H, n)`` arrays, or a generator. Forward
    recursion: ``alive`` is the probability of being active without an order so far;
    churning first ends the horizon without an order.
    """
    alive: np.ndarray | None = None
    churned: np.ndarray | None = None
    for hazard, order_prob in days:
        if alive is None or churned is None:
            alive = np.ones_like(hazard, dtype=np.float64)
            churned = np.zeros_like(alive)
        churned = churned + alive * hazard
        alive = alive * (1.0 - hazard) * (1.0 - order_prob)
    if alive is None or churned is None:
        raise ValueError("the horizon must have at least one day")
    return np.clip(alive + churned, 0.0, 1.0)
