"""The point-in-time guarantee checked from the outside: recompute the order-based features
of training rows from the order lines strictly before each cutoff, independently of the dbt
macro, and report every row where the mart differs.

A feature that saw the cutoff day or later (an order on the cutoff date counted in
``frequency_90d``, ``recency_days`` of 0, spend after the cutoff) shows up as a violation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..features.spec import CHURN_TRAINING_TABLE, CUTOFF, ENTITY_KEY
from ..warehouse.base import Warehouse

CHECKED_FEATURES: tuple[str, ...] = (
    "recency_days",
    "frequency_90d",
    "frequency_365d",
    "monetary_90d",
    "monetary_365d",
)
ORDER_LINES_SQL = """
select lines.customer_id, lines.order_id, lines.order_date, lines.net_amount
from core.fct_order_lines as lines
inner join core.dim_products as products on lines.product_sk = products.product_sk
where lines.is_product_line and not lines.is_return and lines.customer_sk > 0
"""


def recompute_order_features(rows: pd.DataFrame, lines: pd.DataFrame) -> pd.DataFrame:
    """The :data:`CHECKED_FEATURES` of each (customer_id, cutoff_date) of ``rows`` from the
    purchase ``lines`` (customer_id, order_id, order_date, net_amount) dated before it."""
    keys = [ENTITY_KEY, CUTOFF]
    spine = rows[keys].drop_duplicates().copy()
    spine[CUTOFF] = pd.to_datetime(spine[CUTOFF])
    purchases = lines.assign(order_date=pd.to_datetime(lines["order_date"]))
    merged = spine.merge(purchases, on=ENTITY_KEY, how="inner")
    merged = merged[merged["order_date"] < merged[CUTOFF]]
    age = (merged[CUTOFF] - merged["order_date"]).dt.days
    merged = merged.assign(
        age=age,
        order_90=merged["order_id"].where(age <= 90),
        order_365=merged["order_id"].where(age <= 365),
        spend_90=merged["net_amount"].where(age <= 90, 0.0),
        spend_365=merged["net_amount"].where(age <= 365, 0.0),
    )
    grouped = merged.groupby(keys).agg(
        recency_days=("age", "min"),
        frequency_90d=("order_90", "nunique"),
        frequency_365d=("order_365", "nunique"),
        monetary_90d=("spend_90", "sum"),
        monetary_365d=("spend_365", "sum"),
    )
    out = spine.merge(grouped.reset_index(), on=keys, how="left")
    for column in CHECKED_FEATURES[1:]:
        out[column] = out[column].fillna(0.0)
    out[CUTOFF] = out[CUTOFF].dt.date
    return out


def point_in_time_violations(
    mart: pd.DataFrame, lines: pd.DataFrame, *, tolerance: float = 0.01
) -> pd.DataFrame:
    """One row per (customer_id, cutoff_date, feature) where ``mart`` differs from the
    recomputation from ``lines`` before the cutoff (absolute tolerance for amounts)."""
    expected = recompute_order_features(mart, lines)
    actual = mart[[ENTITY_KEY, CUTOFF, *CHECKED_FEATURES]].copy()
    actual[CUTOFF] = pd.to_datetime(actual[CUTOFF]).dt.date
    joined = actual.merge(expected, on=[ENTITY_KEY, CUTOFF], suffixes=("", "_expected"))
    found = []
    for feature in CHECKED_FEATURES:
        got = joined[feature].astype(float).to_numpy()
        want = joined[f"{feature}_expected"].astype(float).to_numpy()
        both_missing = np.isnan(got) & np.isnan(want)
        differs = ~both_missing & ~(np.abs(got - want) <= tolerance)
        if differs.any():
            part = joined.loc[differs, [ENTITY_KEY, CUTOFF]].copy()
            part["feature"] = feature
            part["mart_value"] = got[differs]
            part["recomputed_value"] = want[differs]
            found.append(part)
    columns = [ENTITY_KEY, CUTOFF, "feature", "mart_value", "recomputed_value"]
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=columns)


@dataclass(frozen=True)
class PointInTimeReport:
    customers: int
    rows_checked: int
    violations: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.rows_checked > 0 and self.violations == 0


def check_point_in_time(
    warehouse: Warehouse,
    *,
    table: str = CHURN_TRAINING_TABLE,
    customers: int = 200,
    seed: int = 0,
) -> PointInTimeReport:
    """Check every training row of a seeded sample of ``customers`` customers against the
    order lines in ``core.fct_order_lines``."""
    ids = warehouse.query_arrow(f"select distinct {ENTITY_KEY} from {table}").column(0)
    ids = sorted(ids.to_pylist())
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(ids, min(customers, len(ids)), replace=False).tolist())
    if not sample:
        return PointInTimeReport(0, 0, 0)
    placeholders = ", ".join("?" * len(sample))
    cols = ", ".join([ENTITY_KEY, CUTOFF, *CHECKED_FEATURES])
    mart = warehouse.query_arrow(
        f"select {cols} from {table} where {ENTITY_KEY} in ({placeholders})", sample
    ).to_pandas()
    lines = warehouse.query_arrow(
        f"select * from ({ORDER_LINES_SQL}) as purchases where customer_id in ({placeholders})",
        sample,
    ).to_pandas()
    violations = point_in_time_violations(mart, lines)
    return PointInTimeReport(
        customers=len(sample),
        rows_checked=len(mart),
        violations=len(violations),
        examples=violations.head(10).to_dict("records"),
    )
