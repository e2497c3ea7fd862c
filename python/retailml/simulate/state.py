"""The simulator's latent state as numpy columns, its initial draw, and its persistence.

Times are integer "sim seconds": seconds since ``start_date`` 00:00 shop-local time (negative
before the start). Day ``d`` covers ``[d * 86400, (d + 1) * 86400)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Self

import numpy as np

from retailml.simulate import catalog
from retailml.simulate.config import SimulationConfig

DAY_SECONDS = 86_400
STATE_FILE = "simulator_state.npz"
STATE_VERSION = 1
# independent random streams: np.random.default_rng([seed, stream, day])
STREAM_INIT = 0
STREAM_DAY = 1
STREAM_FORMAT = 2

MEDIAN_ORDER_RATE = 1.0 / 40.0  # purchases per day of the median customer
ORDER_RATE_SIGMA = 0.8
# social: the drift scenario's campaign customers, eager buyers who leave quickly
CHANNEL_RATE: tuple[float, ...] = (1.0, 1.25, 0.75, 2.5)  # web, app, marketplace, social
FRAILTY_SIGMA = 0.4
OPT_IN_SHARE = 0.55
MAX_INITIAL_TENURE_DAYS = 3 * 365


class Columns:
    """A dataclass of equally long numpy columns."""

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))  # type: ignore[arg-type]

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def take(self, index: np.ndarray) -> Self:
        return type(self)(**{name: col[index] for name, col in self.columns().items()})

    def concat(self, other: Self) -> Self:
        return type(self)(
            **{
                name: np.concatenate([col, getattr(other, name)])
                for name, col in self.columns().items()
            }
        )

    @classmethod
    def from_prefixed(cls, arrays: Any, prefix: str) -> Self:
        return cls(**{f.name: np.asarray(arrays[prefix + f.name]) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(eq=False)
class Customers(Columns):
    signup_day: np.ndarray  # int32 day index (customers order from the day after)
    created_s: np.ndarray  # int64 sim seconds
    updated_s: np.ndarray  # int64 sim seconds
    country: np.ndarray  # int8 -> catalog.COUNTRIES
    signup_channel: np.ndarray  # int8 -> catalog.SIGNUP_CHANNELS
    tier: np.ndarray  # int8 -> catalog.LOYALTY_TIERS
    preferred_category: np.ndarray  # int8 -> catalog.CATEGORIES
    opt_in: np.ndarray  # bool
    sensitivity: np.ndarray  # float64 price sensitivity in [0, 1]
    rate: np.ndarray  # float64 latent purchases per day
    frailty: np.ndarray  # float64 unobservable log-hazard offset
    return_score: np.ndarray  # float64 decayed count of recent returned lines
    spend: np.ndarray  # float64 lifetime net spend (EUR)
    churned: np.ndarray  # bool, absorbing
    first_name: np.ndarray  # int16 -> catalog.FIRST_NAMES[country]
    last_name: np.ndarray  # int16 -> catalog.LAST_NAMES[country]
    street: np.ndarray  # int16 -> catalog.STREETS[country]
    house_number: np.ndarray  # int16
    city: np.ndarray  # int16 -> catalog.CITIES[country]
    postcode: np.ndarray  # int32 -> catalog.format_postcode


@dataclass(eq=False)
class Products(Columns):
    category: np.ndarray  # int8 -> catalog.CATEGORIES
    price: np.ndarray  # float64 current list price
    popularity: np.ndarray  # float64 sampling weight within the category
    is_active: np.ndarray  # bool
    adjective: np.ndarray  # int16
    noun: np.ndarray  # int16
    color: np.ndarray  # int16
    size: np.ndarray  # int16, -1 = no size
    weight_g: np.ndarray  # int32
    created_s: np.ndarray  # int64
    updated_s: np.ndarray  # int64


@dataclass(eq=False)
class PendingReturns(Columns):
    """Returns decided at purchase time, emitted on ``due_day``."""

    customer: np.ndarray  # int64
    product: np.ndarray  # int64
    quantity: np.ndarray  # int64 (positive: units bought and to be returned)
    unit_price: np.ndarray  # float64 price paid
    channel: np.ndarray  # int8
    due_day: np.ndarray  # int32

    @classmethod
    def empty(cls) -> PendingReturns:
        return cls(
            customer=np.zeros(0, np.int64),
            product=np.zeros(0, np.int64),
            quantity=np.zeros(0, np.int64),
            unit_price=np.zeros(0, np.float64),
            channel=np.zeros(0, np.int8),
            due_day=np.zeros(0, np.int32),
        )


@dataclass(eq=False)
class SimState:
    next_day: int
    next_order_no: int
    customers: Customers
    products: Products
    returns: PendingReturns


def day_rng(config: SimulationConfig, stream: int, day: int = 0) -> np.random.Generator:
    """The random stream of one day: depends only on the seed, the stream and the day."""
    return np.random.default_rng([config.seed, stream, day])


def round_price(price: np.ndarray) -> np.ndarray:
    """Shop prices end in .99 (at least 0.99)."""
    return np.maximum(np.ceil(price) - 0.01, 0.99).round(2)


def tier_for_spend(spend: np.ndarray) -> np.ndarray:
    return (np.searchsorted(catalog.LOYALTY_THRESHOLDS, spend, side="right") - 1).astype(np.int8)


def sample_codes(
    rng: np.random.Generator, probs: np.ndarray | tuple[float, ...], size: int
) -> np.ndarray:
    """Categorical draws: codes 0..len(probs)-1."""
    cumulative = np.cumsum(probs, dtype=np.float64)
    codes = np.searchsorted(cumulative / cumulative[-1], rng.random(size), side="right")
    return np.minimum(codes, len(cumulative) - 1)


def draw_customers(
    rng: np.random.Generator,
    signup_s: np.ndarray,
    country_share: tuple[float, ...],
    *,
    backdated: bool,
    channel_share: tuple[float, ...] = catalog.SIGNUP_CHANNEL_SHARE,
) -> Customers:
    """New customers signing up at ``signup_s``; backdated ones come with a spend history."""
    n = len(signup_s)
    country = sample_codes(rng, country_share, n).astype(np.int8)
    channel = sample_codes(rng, channel_share, n).astype(np.int8)
    rate = (
        np.exp(rng.normal(np.log(MEDIAN_ORDER_RATE), ORDER_RATE_SIGMA, n))
        * np.asarray(CHANNEL_RATE)[channel]
    )
    if backdated:
        tenure_days = -signup_s / DAY_SECONDS
        spend = rate * tenure_days * 55.0 * np.exp(rng.normal(0.0, 0.5, n))
    else:
        spend = np.zeros(n)
    n_cities = np.asarray([len(c) for c in catalog.CITIES])
    n_streets = np.asarray([len(s) for s in catalog.STREETS])
    n_first = np.asarray([len(f) for f in catalog.FIRST_NAMES])
    n_last = np.asarray([len(f) for f in catalog.LAST_NAMES])
    updated_s = signup_s.copy()
    if backdated:  # some profile edit between signup and the start
        updated_s = signup_s + (rng.random(n) * -signup_s).astype(np.int64)
    return Customers(
        signup_day=np.floor_divide(signup_s, DAY_SECONDS).astype(np.int32),
        created_s=signup_s.astype(np.int64),
        updated_s=updated_s.astype(np.int64),
        country=country,
        signup_channel=channel,
        tier=tier_for_spend(spend),
        preferred_category=sample_codes(rng, catalog.CATEGORY_SHARE, n).astype(np.int8),
        opt_in=rng.random(n) < OPT_IN_SHARE,
        sensitivity=rng.beta(2.0, 3.0, n),
        rate=rate,
        frailty=rng.normal(0.0, FRAILTY_SIGMA, n),
        return_score=np.zeros(n),
        spend=spend,
        churned=np.zeros(n, dtype=bool),
        first_name=(rng.random(n) * n_first[country]).astype(np.int16),
        last_name=(rng.random(n) * n_last[country]).astype(np.int16),
        street=(rng.random(n) * n_streets[country]).astype(np.int16),
        house_number=rng.integers(1, 250, n).astype(np.int16),
        city=(rng.random(n) * n_cities[country]).astype(np.int16),
        postcode=rng.integers(0, catalog.POSTCODE_SPREAD * catalog.POSTCODE_LETTERS, n).astype(
            np.int32
        ),
    )


def draw_products(rng: np.random.Generator, n: int) -> Products:
    """The catalogue at the start; every category has at least two active products."""
    n_categories = len(catalog.CATEGORIES)
    category = np.concatenate(
        [
            np.tile(np.arange(n_categories), 2),
            sample_codes(rng, catalog.CATEGORY_SHARE, n - 2 * n_categories),
        ]
    ).astype(np.int8)
    median_price = np.asarray(catalog.CATEGORY_MEDIAN_PRICE)[category]
    median_weight = np.asarray(catalog.CATEGORY_MEDIAN_WEIGHT_G)[category]
    sized = np.isin(category, [catalog.CATEGORIES.index(c) for c in catalog.SIZED_CATEGORIES])
    is_active = rng.random(n) < 0.95
    is_active[: 2 * n_categories] = True
    created_s = -rng.integers(DAY_SECONDS, MAX_INITIAL_TENURE_DAYS * DAY_SECONDS, n)
    return Products(
        category=category,
        price=round_price(median_price * np.exp(rng.normal(0.0, 0.5, n))),
        popularity=np.exp(rng.normal(0.0, 1.0, n)),
        is_active=is_active,
        adjective=rng.integers(0, len(catalog.PRODUCT_ADJECTIVES), n).astype(np.int16),
        noun=rng.integers(0, len(catalog.PRODUCT_NOUNS[0]), n).astype(np.int16),
        color=rng.integers(0, len(catalog.COLORS), n).astype(np.int16),
        size=np.where(sized, rng.integers(0, len(catalog.SIZES), n), -1).astype(np.int16),
        weight_g=np.maximum(median_weight * np.exp(rng.normal(0.0, 0.4, n)), 10).astype(np.int32),
        created_s=created_s.astype(np.int64),
        updated_s=(created_s + (rng.random(n) * -created_s).astype(np.int64)).astype(np.int64),
    )


def initial_state(config: SimulationConfig) -> SimState:
    """The business just before ``start_date``: customers (all active) and the catalogue."""
    rng = day_rng(config, STREAM_INIT)
    n = config.initial_customers
    signup_s = -rng.integers(DAY_SECONDS, MAX_INITIAL_TENURE_DAYS * DAY_SECONDS, n)
    signup_s.sort()  # customer numbers follow signup time
    return SimState(
        next_day=0,
        next_order_no=1,
        customers=draw_customers(rng, signup_s, catalog.COUNTRY_SHARE, backdated=True),
        products=draw_products(rng, config.n_products),
        returns=PendingReturns.empty(),
    )


class StateMismatchError(ValueError):
    """The saved state was produced by a different :class:`SimulationConfig`."""


def save_state(state_dir: Path, state: SimState, config: SimulationConfig) -> Path:
    """Write the state atomically (one file, replaced in a single rename)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "version": STATE_VERSION,
        "config": config.to_json_dict(),
        "next_day": state.next_day,
        "next_order_no": state.next_order_no,
    }
    arrays: dict[str, np.ndarray] = {"meta": np.asarray(json.dumps(meta, sort_keys=True))}
    for prefix, table in (("c_", state.customers), ("p_", state.products), ("r_", state.returns)):
        arrays.update({prefix + name: col for name, col in table.columns().items()})
    target = state_dir / STATE_FILE
    tmp = target.with_suffix(".tmp.npz")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, target)
    return target


def saved_config(state_dir: Path) -> SimulationConfig | None:
    """The config a saved state was written with, ``None`` if there is no state."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        return SimulationConfig.from_json_dict(json.loads(str(arrays["meta"]))["config"])


def load_state(state_dir: Path, config: SimulationConfig) -> SimState | None:
    """The saved state, ``None`` if there is none; raises if it belongs to another config."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        meta = json.loads(str(arrays["meta"]))
        if meta.get("version") != STATE_VERSION:
            raise StateMismatchError(
                f"{path}: state version {meta.get('version')}, expected {STATE_VERSION}"
            )
        saved = meta["config"]
        wanted = config.to_json_dict()
        differing = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        if differing:
            details = ", ".join(
                f"{k}: saved {saved.get(k)!r} != {wanted.get(k)!r}" for k in differing
            )
            raise StateMismatchError(
                f"{path} was written by a different simulation config ({details}); "
                "use another state_dir or the same config"
            )
        return SimState(
            next_day=int(meta["next_day"]),
            next_order_no=int(meta["next_order_no"]),
            customers=Customers.from_prefixed(arrays, "c_"),
            products=Products.from_prefixed(arrays, "p_"),
            returns=PendingReturns.from_prefixed(arrays, "r_"),
        )
