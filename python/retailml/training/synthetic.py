"""Seeded synthetic versions of the ML marts (same columns and types as the dbt models).

For tests and benchmarks of training, scoring and drift without running the pipeline: the
churn label depends on recency *and* on frequency, returns, tier and channel, so a model
that learns must beat the recency baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import numpy as np
import pyarrow as pa

from ..features.spec import CATEGORICAL_FEATURES, NUMERIC_FEATURES

COUNTRIES = ("NL", "DE", "BE", "FR")
TIERS = ("bronze", "silver", "gold")
CHANNELS = ("web", "app", "marketplace")


def _features(
    rng: np.random.Generator,
    engagement: np.ndarray,
    tenure_base: np.ndarray,
    *,
    countries: Sequence[str] = COUNTRIES,
    recency_scale: float = 1.0,
) -> dict[str, np.ndarray]:
    n = engagement.shape[0]
    e = engagement + rng.normal(0.0, 0.3, n)
    recency = np.minimum(rng.exponential(np.exp(2.5 - 0.8 * e)) * recency_scale, 720).round()
    frequency_90d = rng.poisson(np.exp(0.3 + 0.7 * e))
    frequency_365d = frequency_90d + rng.poisson(np.exp(1.0 + 0.7 * e))
    basket = rng.lognormal(3.6, 0.4, n)
    monetary_90d = (frequency_90d * basket).round(2)
    monetary_365d = (frequency_365d * basket * rng.uniform(0.9, 1.1, n)).round(2)
    with np.errstate(invalid="ignore", divide="ignore"):
        aov = np.where(frequency_365d > 0, monetary_365d / frequency_365d, np.nan)
    return_rate = np.where(frequency_365d > 0, rng.beta(1.0, 8.0, n), np.nan)
    return {
        "recency_days": recency,
        "frequency_90d": frequency_90d.astype(float),
        "monetary_90d": monetary_90d,
        "frequency_365d": frequency_365d.astype(float),
        "monetary_365d": monetary_365d,
        "avg_order_value_365d": aov,
        "return_rate_365d": return_rate,
        "tenure_days": tenure_base,
        "distinct_categories_365d": np.minimum(frequency_365d, rng.poisson(2.0, n)).astype(float),
        "country": rng.choice(np.array(countries), n),
        "loyalty_tier": rng.choice(np.array(TIERS), n, p=[0.6, 0.3, 0.1]),
        "signup_channel": rng.choice(np.array(CHANNELS), n, p=[0.5, 0.3, 0.2]),
    }


def churn_probability(f: dict[str, np.ndarray]) -> np.ndarray:
    """The probability the labels were drawn from (the synthetic oracle)."""
    tier = np.select(
        [f["loyalty_tier"] == "gold", f["loyalty_tier"] == "silver"], [-1.2, -0.5], 0.0
    )
    channel = np.where(f["signup_channel"] == "marketplace", 0.6, 0.0)
    returns = np.nan_to_num(f["return_rate_365d"], nan=0.0)
    logit = (
        -0.8
        + 0.012 * f["recency_days"]
        - 0.45 * np.minimum(f["frequency_90d"], 6)
        + 4.0 * returns
        + tier
        + channel
    )
    return 1.0 / (1.0 + np.exp(-logit))


def _table(columns: dict[str, np.ndarray | list]) -> pa.Table:
    arrays = {}
    for name, values in columns.items():
        if name in NUMERIC_FEATURES:
            arrays[name] = pa.array(values, type=pa.float64(), from_pandas=True)
        elif name in CATEGORICAL_FEATURES or name == "customer_id":
            arrays[name] = pa.array(values, type=pa.string())
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


def make_churn_training(
    n_customers: int = 2_000,
    n_cutoffs: int = 10,
    *,
    first_cutoff: date = date(2024, 1, 7),
    cutoff_step_days: int = 14,
    seed: int = 0,
) -> pa.Table:
    """``marts.ml_churn_training``: one row per (customer_id, cutoff_date)."""
    rng = np.random.default_rng(seed)
    engagement = rng.normal(0.0, 1.0, n_customers)
    signup_age = rng.integers(30, 900, n_customers)
    ids = np.array([f"C{i:07d}" for i in range(1, n_customers + 1)])
    parts: list[dict[str, np.ndarray | list]] = []
    for k in range(n_cutoffs):
        cutoff = first_cutoff + timedelta(days=k * cutoff_step_days)
        features = _features(rng, engagement, (signup_age + k * cutoff_step_days).astype(float))
        churned = rng.random(n_customers) < churn_probability(features)
        parts.append(
            {
                "customer_id": ids,
                "cutoff_date": [cutoff] * n_customers,
                **features,
                "is_churned": churned,
            }
        )
    merged = {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}
    merged["cutoff_date"] = [c for p in parts for c in p["cutoff_date"]]
    return _table(merged)


def make_customer_features(
    n_customers: int = 2_000,
    *,
    as_of_date: date = date(2024, 6, 30),
    seed: int = 1,
    drift: bool = False,
) -> pa.Table:
    """``marts.ml_customer_features``: one row per customer. ``drift=True`` shifts recency
    upwards and adds a country never seen in training."""
    rng = np.random.default_rng(seed)
    engagement = rng.normal(0.0, 1.0, n_customers)
    tenure = rng.integers(30, 900, n_customers).astype(float) + 120
    countries = (*COUNTRIES, "US", "US", "US") if drift else COUNTRIES
    features = _features(
        rng,
        engagement,
        tenure,
        countries=countries,
        recency_scale=3.0 if drift else 1.0,
    )
    ids = [f"C{i:07d}" for i in range(1, n_customers + 1)]
    return _table({"customer_id": ids, "as_of_date": [as_of_date] * n_customers, **features})


def make_demand_daily(
    categories: Sequence[str] = ("books", "garden", "toys"),
    *,
    days: int = 400,
    start: date = date(2023, 1, 1),
    seed: int = 2,
) -> pa.Table:
    """``marts.ml_demand_daily``: one row per (category, order_date), zero-filled."""
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    dates = [start + timedelta(days=int(d)) for d in t]
    weekday = np.array([d.weekday() for d in dates])
    weekly = np.array([1.0, 0.9, 0.9, 1.0, 1.2, 1.5, 1.3])[weekday]
    yearly = 1.0 + 0.25 * np.sin(2 * np.pi * t / 365.25)
    rows: dict[str, list] = {"category": [], "order_date": [], "units": [], "revenue": []}
    for i, category in enumerate(categories):
        level = 20.0 * (i + 1)
        units = rng.poisson(level * weekly * yearly * (1 + 0.0005 * t))
        rows["category"] += [category] * days
        rows["order_date"] += dates
        rows["units"] += units.tolist()
        rows["revenue"] += (units * (10.0 + 5 * i)).round(2).tolist()
    return pa.table(
        {
            "category": pa.array(rows["category"], pa.string()),
            "order_date": pa.array(rows["order_date"], pa.date32()),
            "units": pa.array(rows["units"], pa.int64()),
            "revenue": pa.array(rows["revenue"], pa.float64()),
        }
    )
