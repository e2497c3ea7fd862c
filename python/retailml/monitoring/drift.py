"""Feature drift: PSI on reference quantile bins (numeric), Jensen-Shannon distance
(categorical), counts computed by SQL in the warehouse.

At training time the trainer stores a :class:`DriftReference` for the model version
(``mlops.drift_reference``): per numeric feature the interior quantile edges and the
reference count per bin, per categorical feature the count per category. Bins are
``x <= edge[0]``, ``edge[0] < x <= edge[1]``, ..., ``x > edge[-1]``, plus a bin for nulls
(bin -1), the same in :func:`bin_index` (Python) and :func:`numeric_bin_sql` (SQL).
:func:`check_drift` counts the current table with those bins and writes one row per
feature, plus a dataset verdict (``feature = '__dataset__'``), to ``mlops.drift_results``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..features.spec import CATEGORICAL_FEATURES, CUSTOMER_FEATURES_TABLE, NUMERIC_FEATURES
from ..registry import ModelRegistry
from ..warehouse.base import Warehouse, quote_ident

DRIFT_REFERENCE_TABLE = "mlops.drift_reference"
DRIFT_RESULTS_TABLE = "mlops.drift_results"
NULL_CATEGORY = "__null__"
DATASET_ROW = "__dataset__"
PSI_THRESHOLD = 0.2
JS_THRESHOLD = 0.1
DATASET_SHARE_THRESHOLD = 0.25

DRIFT_REFERENCE_SCHEMA = pa.schema(
    [
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("feature", pa.string()),
        ("kind", pa.string()),
        ("bin", pa.int64()),
        ("upper_edge", pa.float64()),
        ("category", pa.string()),
        ("ref_count", pa.int64()),
    ]
)
DRIFT_RESULTS_SCHEMA = pa.schema(
    [
        ("run_at", pa.timestamp("us", tz="UTC")),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("feature", pa.string()),
        ("statistic", pa.string()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("is_drifted", pa.bool_()),
    ]
)


class DriftError(RuntimeError):
    """Drift cannot be computed (no reference, empty table...); the message says why."""


# -- statistics (pure) ---------------------------------------------------------------------
def psi(
    reference_counts: Sequence[float], current_counts: Sequence[float], *, epsilon: float = 1e-4
) -> float:
    """Population stability index of two count vectors over the same bins.

    Empty bins are floored at ``epsilon`` (a share) so the result is always finite.
    """
    ref = np.asarray(reference_counts, dtype=float)
    cur = np.asarray(current_counts, dtype=float)
    if ref.shape != cur.shape or ref.ndim != 1:
        raise ValueError(f"bin counts differ in shape: {ref.shape} vs {cur.shape}")
    if (ref < 0).any() or (cur < 0).any():
        raise ValueError("bin counts must be >= 0")
    if ref.sum() == 0 or cur.sum() == 0:
        raise ValueError("PSI needs at least one reference and one current observation")
    p = np.maximum(ref / ref.sum(), epsilon)
    q = np.maximum(cur / cur.sum(), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def jensen_shannon(
    reference_counts: Mapping[str, float], current_counts: Mapping[str, float]
) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two category -> count mappings.

    Categories present on one side only count as zero on the other (finite, no smoothing).
    """
    categories = sorted(set(reference_counts) | set(current_counts))
    ref = np.array([float(reference_counts.get(c, 0.0)) for c in categories])
    cur = np.array([float(current_counts.get(c, 0.0)) for c in categories])
    if (ref < 0).any() or (cur < 0).any():
        raise ValueError("category counts must be >= 0")
    if ref.sum() == 0 or cur.sum() == 0:
        raise ValueError("Jensen-Shannon needs at least one reference and one current count")
    p, q = ref / ref.sum(), cur / cur.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    divergence = max(0.5 * kl(p) + 0.5 * kl(q), 0.0)
    return float(min(math.sqrt(divergence), 1.0))


# -- the reference -------------------------------------------------------------------------
@dataclass(frozen=True)
class NumericReference:
    edges: tuple[float, ...]
    counts: tuple[int, ...]  # [null bin, bin 0, ..., bin len(edges)]


@dataclass(frozen=True)
class DriftReference:
    numeric: dict[str, NumericReference]
    categorical: dict[str, dict[str, int]]


def quantile_edges(values: np.ndarray, n_bins: int = 10) -> tuple[float, ...]:
    """Distinct interior quantile edges of the finite values (at most ``n_bins - 1``)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return ()
    qs = np.quantile(finite, np.linspace(0, 1, n_bins + 1)[1:-1])
    return tuple(float(e) for e in np.unique(qs))


def bin_index(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin of each value for ``edges`` (``x <= edges[0]`` is 0); NaN -> -1."""
    values = np.asarray(values, dtype=float)
    bins = np.searchsorted(np.asarray(edges, dtype=float), values, side="left")
    return np.where(np.isnan(values), -1, bins)


def numeric_counts(values: np.ndarray, edges: Sequence[float]) -> tuple[int, ...]:
    """Counts per bin, null bin first (the layout of :class:`NumericReference`)."""
    bins = bin_index(values, edges) + 1
    return tuple(int(c) for c in np.bincount(bins, minlength=len(edges) + 2))


def build_reference(
    data: pa.Table,
    *,
    numeric: Sequence[str] = NUMERIC_FEATURES,
    categorical: Sequence[str] = CATEGORICAL_FEATURES,
    n_bins: int = 10,
) -> DriftReference:
    """Quantile bins and counts of ``data`` (e.g. the latest snapshot of the training rows)."""
    if data.num_rows == 0:
        raise DriftError("cannot build a drift reference from zero rows")
    numeric_refs = {}
    for name in numeric:
        values = data.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)
        values = np.asarray(values, dtype=float)
        edges = quantile_edges(values, n_bins)
        numeric_refs[name] = NumericReference(edges, numeric_counts(values, edges))
    categorical_refs = {}
    for name in categorical:
        column = pc.fill_null(data.column(name).cast(pa.string()), NULL_CATEGORY)
        counts = pc.value_counts(column).to_pylist()
        categorical_refs[name] = {c["values"]: int(c["counts"]) for c in counts}
    return DriftReference(numeric_refs, categorical_refs)


def reference_to_table(reference: DriftReference, model_name: str, version: int) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for feature, ref in reference.numeric.items():
        for position, count in enumerate(ref.counts):
            bin_ = position - 1
            upper = ref.edges[bin_] if 0 <= bin_ < len(ref.edges) else None
            rows.append(
                {"feature": feature, "kind": "numeric", "bin": bin_, "upper_edge": upper,
                 "category": None, "ref_count": count}
            )  # fmt: skip
    for feature, counts in reference.categorical.items():
        for category, count in sorted(counts.items()):
            rows.append(
                {"feature": feature, "kind": "categorical", "bin": None, "upper_edge": None,
                 "category": category, "ref_count": count}
            )  # fmt: skip
    for row in rows:
        row.update(model_name=model_name, model_version=version)
    return pa.Table.from_pylist(rows, schema=DRIFT_REFERENCE_SCHEMA)


def reference_from_table(table: pa.Table) -> DriftReference:
    numeric: dict[str, list[dict[str, Any]]] = {}
    categorical: dict[str, dict[str, int]] = {}
    for row in table.to_pylist():
        if row["kind"] == "numeric":
            numeric.setdefault(row["feature"], []).append(row)
        else:
            categorical.setdefault(row["feature"], {})[row["category"]] = int(row["ref_count"])
    numeric_refs = {}
    for feature, rows in numeric.items():
        rows.sort(key=lambda r: r["bin"])
        edges = tuple(float(r["upper_edge"]) for r in rows if r["upper_edge"] is not None)
        numeric_refs[feature] = NumericReference(edges, tuple(int(r["ref_count"]) for r in rows))
    return DriftReference(numeric_refs, categorical)


def write_drift_reference(
    warehouse: Warehouse, model_name: str, version: int, reference: DriftReference
) -> int:
    """Store ``reference`` for a model version (replacing that version's rows)."""
    data = reference_to_table(reference, model_name, version)
    warehouse.create_table(DRIFT_REFERENCE_TABLE, DRIFT_REFERENCE_SCHEMA)
    with warehouse.transaction():
        warehouse.execute(
            f"delete from {DRIFT_REFERENCE_TABLE} where model_name = ? and model_version = ?",
            [model_name, version],
        )
        return warehouse.append_arrow(DRIFT_REFERENCE_TABLE, data)


def read_drift_reference(warehouse: Warehouse, model_name: str, version: int) -> DriftReference:
    if not warehouse.table_exists(DRIFT_REFERENCE_TABLE):
        raise DriftError(f"{DRIFT_REFERENCE_TABLE} does not exist: train a model first")
    table = warehouse.query_arrow(
        f"select {', '.join(DRIFT_REFERENCE_SCHEMA.names)} from {DRIFT_REFERENCE_TABLE} "
        "where model_name = ? and model_version = ?",
        [model_name, version],
    )
    if table.num_rows == 0:
        raise DriftError(f"no drift reference stored for {model_name} v{version}")
    return reference_from_table(table)


# -- counting in the warehouse -------------------------------------------------------------
def _float_literal(value: float) -> str:
    if not math.isfinite(value):
        raise DriftError(f"bin edge {value!r} is not finite")
    return f"cast({float(value)!r} as double precision)"


def numeric_bin_sql(table: str, feature: str, edges: Sequence[float]) -> str:
    """``(bin, n)`` rows: the reference bins of ``feature`` counted in ``table``."""
    column = quote_ident(feature)
    whens = " ".join(
        f"when {column} <= {_float_literal(edge)} then {i}" for i, edge in enumerate(edges)
    )
    return (
        f"select case when {column} is null then -1 {whens} else {len(edges)} end as bin, "
        f"count(*) as n from {table} group by 1"
    )


def categorical_count_sql(table: str, feature: str) -> str:
    """``(category, n)`` rows: counts per value of ``feature`` in ``table`` (nulls named)."""
    column = quote_ident(feature)
    return (
        f"select coalesce(cast({column} as text), '{NULL_CATEGORY}') as category, "
        f"count(*) as n from {table} group by 1"
    )


def count_current(
    warehouse: Warehouse, table: str, reference: DriftReference
) -> tuple[dict[str, tuple[int, ...]], dict[str, dict[str, int]]]:
    """Counts of ``table`` in the reference's bins and categories (computed by SQL)."""
    numeric = {}
    for feature, ref in reference.numeric.items():
        rows = warehouse.query_arrow(numeric_bin_sql(table, feature, ref.edges)).to_pylist()
        counts = [0] * (len(ref.edges) + 2)
        for row in rows:
            counts[int(row["bin"]) + 1] += int(row["n"])
        numeric[feature] = tuple(counts)
    categorical = {}
    for feature in reference.categorical:
        rows = warehouse.query_arrow(categorical_count_sql(table, feature)).to_pylist()
        categorical[feature] = {str(r["category"]): int(r["n"]) for r in rows}
    return numeric, categorical


# -- the check -----------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    statistic: str
    value: float
    threshold: float
    is_drifted: bool


@dataclass(frozen=True)
class DriftReport:
    run_at: datetime
    model_name: str
    model_version: int
    current_table: str
    rows: int
    features: list[FeatureDrift]
    share_drifted: float
    dataset_threshold: float
    is_drifted: bool

    def summary(self) -> str:
        drifted = [f.feature for f in self.features if f.is_drifted]
        verdict = "DRIFTED" if self.is_drifted else "no dataset-level drift"
        return (
            f"{self.model_name} v{self.model_version} reference vs {self.current_table} "
            f"({self.rows} rows): {len(drifted)}/{len(self.features)} features drifted"
            + (f" ({', '.join(drifted)})" if drifted else "")
            + f"; {verdict}"
        )

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.is_drifted]

    @property
    def needs_retraining(self) -> bool:
        """The retraining trigger the orchestration reads (here: dataset-level drift)."""
        return self.is_drifted

    @property
    def reasons(self) -> list[str]:
        """Why retraining is needed: one line per drifted feature."""
        return [
            f"{f.feature} drifted ({f.statistic} {f.value:.3f} > {f.threshold:g})"
            for f in self.features
            if f.is_drifted
        ]

    def markdown(self) -> str:
        """The summary and a table of the features (for a Prefect markdown artifact)."""
        rows = "\n".join(
            f"| {f.feature} | {f.statistic} | {f.value:.4f} | {f.threshold:g} | "
            f"{'yes' if f.is_drifted else 'no'} |"
            for f in self.features
        )
        return (
            f"## Drift: {self.summary()}\n\n"
            "| feature | statistic | value | threshold | drifted |\n|---|---|---|---|---|\n"
            f"{rows}\n"
        )


def compare(
    reference: DriftReference,
    numeric: Mapping[str, Sequence[int]],
    categorical: Mapping[str, Mapping[str, int]],
    *,
    psi_threshold: float = PSI_THRESHOLD,
    js_threshold: float = JS_THRESHOLD,
) -> list[FeatureDrift]:
    """One :class:`FeatureDrift` per reference feature."""
    results = []
    for feature, ref in reference.numeric.items():
        value = psi(ref.counts, numeric[feature])
        results.append(FeatureDrift(feature, "psi", value, psi_threshold, value > psi_threshold))
    for feature, ref_counts in reference.categorical.items():
        value = jensen_shannon(ref_counts, categorical[feature])
        results.append(
            FeatureDrift(feature, "jensen_shannon", value, js_threshold, value > js_threshold)
        )
    return results


def check_drift(
    warehouse: Warehouse,
    registry: ModelRegistry,
    *,
    current_table: str = CUSTOMER_FEATURES_TABLE,
    model_name: str = "churn",
    version_or_alias: int | str = "production",
    psi_threshold: float = PSI_THRESHOLD,
    js_threshold: float = JS_THRESHOLD,
    dataset_threshold: float = DATASET_SHARE_THRESHOLD,
    run_at: datetime | None = None,
) -> DriftReport:
    """Compare ``current_table`` with the model version's training reference; write
    ``mlops.drift_results``. The dataset drifts when more than ``dataset_threshold`` of the
    features drift."""
    version = registry.get(model_name, version_or_alias)
    reference = read_drift_reference(warehouse, model_name, version.version)
    if not warehouse.table_exists(current_table):
        raise DriftError(f"{current_table} does not exist")
    present = warehouse.columns(current_table)
    missing = [c for c in (*reference.numeric, *reference.categorical) if c not in present]
    if missing:
        raise DriftError(f"{current_table} lacks the reference's features {missing}")
    rows = int(warehouse.scalar(f"select count(*) from {current_table}") or 0)
    if rows == 0:
        raise DriftError(f"{current_table} has no rows to compare")
    numeric, categorical = count_current(warehouse, current_table, reference)
    features = compare(
        reference, numeric, categorical, psi_threshold=psi_threshold, js_threshold=js_threshold
    )
    share = sum(f.is_drifted for f in features) / len(features)
    report = DriftReport(
        run_at=run_at or datetime.now(UTC),
        model_name=model_name,
        model_version=version.version,
        current_table=current_table,
        rows=rows,
        features=features,
        share_drifted=share,
        dataset_threshold=dataset_threshold,
        is_drifted=share > dataset_threshold,
    )
    write_drift_results(warehouse, report)
    return report


def drift_results_table(report: DriftReport) -> pa.Table:
    rows = [(f.feature, f.statistic, f.value, f.threshold, f.is_drifted) for f in report.features]
    rows.append(
        (DATASET_ROW, "share_drifted", report.share_drifted, report.dataset_threshold,
         report.is_drifted)
    )  # fmt: skip
    return pa.Table.from_pylist(
        [
            {
                "run_at": report.run_at,
                "model_name": report.model_name,
                "model_version": report.model_version,
                "feature": feature,
                "statistic": statistic,
                "value": value,
                "threshold": threshold,
                "is_drifted": drifted,
            }
            for feature, statistic, value, threshold, drifted in rows
        ],
        schema=DRIFT_RESULTS_SCHEMA,
    )


def write_drift_results(warehouse: Warehouse, report: DriftReport) -> int:
    warehouse.create_table(DRIFT_RESULTS_TABLE, DRIFT_RESULTS_SCHEMA)
    with warehouse.transaction():
        return warehouse.append_arrow(DRIFT_RESULTS_TABLE, drift_results_table(report))
