"""Data and prediction drift of the scored population against a model version's training
reference, computed where the data is.

At training time the trainer stores a :class:`DriftReference` for the model version
(``mlops.drift_reference``): per numeric feature the interior quantile edges (``n_bins``
bins, a setting), the count and the sum of values per bin and the standard deviation; per
categorical feature the count per category; and the same numeric summary of the model's
scores on the reference rows (feature ``__score__``), for prediction drift. Bins are
``x <= edge[0]``, ``edge[0] < x <= edge[1]``, ..., ``x > edge[-1]``, plus a bin for nulls,
the same in :func:`numeric_counts` (numpy) and :func:`count_current` (SQL).

:func:`count_current` asks the warehouse for the current window's counts in those bins, in
one scan, in the form each warehouse runs fastest (measured by ``benchmarks/drift_pushdown.py``):
conditional counts with no ``GROUP BY`` on PostgreSQL (``FILTER``: parallel, no hash table) and
BigQuery (``countif``), every feature binned once per row and counted with ``GROUPING SETS`` on
DuckDB. What moves to Python is a few hundred numbers, whatever the window's size. :func:`compare` turns
reference and current counts into per-feature statistics (:mod:`.stats`): PSI, Wasserstein
distance over the reference's standard deviation and KS for numeric features; Jensen-Shannon
distance and chi-square for categorical ones. The dataset verdict controls false alarms over
the many features: a feature drifts when its Benjamini-Hochberg adjusted p-value is under
``alpha`` *and* its effect size passes its threshold (a large window makes every tiny change
significant; the effect size keeps that from alarming). :func:`check_drift` runs it all for
a version and writes one row per feature (plus ``__dataset__`` and ``__score__`` rows) to
``mlops.drift_results``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..features.spec import CATEGORICAL_FEATURES, CUSTOMER_FEATURES_TABLE, NUMERIC_FEATURES
from ..warehouse.base import Params, Warehouse, ensure_table, quote_ident
from . import stats

if TYPE_CHECKING:  # the registry pulls in pandas: not needed to count and compare
    from ..registry import ModelRegistry

DRIFT_REFERENCE_TABLE = "mlops.drift_reference"
DRIFT_RESULTS_TABLE = "mlops.drift_results"
NULL_CATEGORY = "__null__"
DATASET_ROW = "__dataset__"
SCORE_FEATURE = "__score__"  # the model's scores, in the reference and the results
DEFAULT_BINS = 10

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
        ("ref_sum", pa.float64()),  # sum of the values in the bin (numeric)
        ("ref_std", pa.float64()),  # standard deviation of the feature (numeric)
    ]
)
DRIFT_RESULTS_SCHEMA = pa.schema(
    [
        ("run_at", pa.timestamp("us", tz="UTC")),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("feature", pa.string()),
        ("statistic", pa.string()),  # the effect size that decided: psi, wasserstein, js...
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("is_drifted", pa.bool_()),
        ("kind", pa.string()),  # numeric, categorical, prediction, dataset
        ("current_table", pa.string()),
        ("window_filter", pa.string()),
        ("current_rows", pa.int64()),
        ("psi", pa.float64()),
        ("wasserstein", pa.float64()),  # over the reference's standard deviation
        ("ks_statistic", pa.float64()),
        ("js_distance", pa.float64()),
        ("chi2_statistic", pa.float64()),
        ("p_value", pa.float64()),
        ("p_adjusted", pa.float64()),  # Benjamini-Hochberg over the run's features
    ]
)


class DriftError(RuntimeError):
    """Drift cannot be computed (no reference, empty table...); the message says why."""


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature, and the dataset, count as drifted.

    A feature drifts when its BH-adjusted p-value is at most ``alpha`` and its effect size
    reaches its threshold (numeric: PSI or Wasserstein over the reference's standard
    deviation; categorical: Jensen-Shannon distance, or the share of rows in categories the
    model never saw in training: the model has learnt nothing about those rows, so even a
    small share of them matters). The dataset drifts when at least
    ``min_drifted_features`` features do. Scores (prediction drift) use the numeric rule.
    """

    alpha: float = 0.01
    psi: float = 0.2
    wasserstein: float = 0.2
    js: float = 0.1
    new_category_share: float = 0.005
    min_drifted_features: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if min(self.psi, self.wasserstein, self.js, self.new_category_share) <= 0:
            raise ValueError("effect-size thresholds must be > 0")
        if self.min_drifted_features < 1:
            raise ValueError("min_drifted_features must be >= 1")


# -- the reference -------------------------------------------------------------------------
@dataclass(frozen=True)
class NumericReference:
    edges: tuple[float, ...]
    counts: tuple[int, ...]  # [null bin, bin 0, ..., bin len(edges)]
    sums: tuple[float, ...] | None = None  # same layout (null bin: 0); None: older reference
    std: float | None = None


@dataclass(frozen=True)
class DriftReference:
    numeric: dict[str, NumericReference]
    categorical: dict[str, dict[str, int]]
    scores: NumericReference | None = None

    def only(
        self,
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        *,
        with_scores: bool = False,
    ) -> DriftReference:
        """The reference of some features only (and of the scores, ``with_scores``)."""
        return DriftReference(
            {k: self.numeric[k] for k in numeric},
            {k: self.categorical[k] for k in categorical},
            self.scores if with_scores else None,
        )


def quantile_edges(values: np.ndarray, n_bins: int = DEFAULT_BINS) -> tuple[float, ...]:
    """Distinct interior quantile edges of the finite values (at most ``n_bins - 1``)."""
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
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


def numeric_sums(values: np.ndarray, edges: Sequence[float]) -> tuple[float, ...]:
    """Sum of the values per bin, null bin (0) first."""
    values = np.asarray(values, dtype=float)
    bins = bin_index(values, edges) + 1
    weights = np.where(np.isnan(values), 0.0, values)
    return tuple(float(s) for s in np.bincount(bins, weights=weights, minlength=len(edges) + 2))


def numeric_reference(values: np.ndarray, n_bins: int = DEFAULT_BINS) -> NumericReference:
    values = np.asarray(values, dtype=float)
    edges = quantile_edges(values, n_bins)
    finite = values[np.isfinite(values)]
    std = float(np.std(finite)) if finite.size else None
    return NumericReference(edges, numeric_counts(values, edges), numeric_sums(values, edges), std)


def _float_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)


def category_counts(column: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    filled = pc.fill_null(column.cast(pa.string()), NULL_CATEGORY)
    return {c["values"]: int(c["counts"]) for c in pc.value_counts(filled).to_pylist()}


def build_reference(
    data: pa.Table,
    *,
    numeric: Sequence[str] = NUMERIC_FEATURES,
    categorical: Sequence[str] = CATEGORICAL_FEATURES,
    n_bins: int = DEFAULT_BINS,
    scores: np.ndarray | None = None,
) -> DriftReference:
    """Quantile bins, counts and sums of ``data`` (e.g. the latest snapshot of the training
    rows), and of the model's ``scores`` on those rows when given."""
    if data.num_rows == 0:
        raise DriftError("cannot build a drift reference from zero rows")
    missing = [c for c in (*numeric, *categorical) if c not in data.column_names]
    if missing:
        raise DriftError(f"the reference rows lack the features {missing}")
    numeric_refs = {
        name: numeric_reference(_float_values(data.column(name)), n_bins) for name in numeric
    }
    categorical_refs = {name: category_counts(data.column(name)) for name in categorical}
    score_ref = None
    if scores is not None:
        if len(scores) != data.num_rows:
            raise DriftError(f"{len(scores)} scores for {data.num_rows} reference rows")
        score_ref = numeric_reference(np.asarray(scores, dtype=float), n_bins)
    return DriftReference(numeric_refs, categorical_refs, score_ref)


def _numeric_rows(feature: str, kind: str, ref: NumericReference) -> list[dict[str, Any]]:
    rows = []
    for position, count in enumerate(ref.counts):
        bin_ = position - 1
        rows.append(
            {"feature": feature, "kind": kind, "bin": bin_,
             "upper_edge": ref.edges[bin_] if 0 <= bin_ < len(ref.edges) else None,
             "category": None, "ref_count": count,
             "ref_sum": None if ref.sums is None else ref.sums[position], "ref_std": ref.std}
        )  # fmt: skip
    return rows


def reference_to_table(reference: DriftReference, model_name: str, version: int) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for feature, ref in reference.numeric.items():
        rows.extend(_numeric_rows(feature, "numeric", ref))
    if reference.scores is not None:
        rows.extend(_numeric_rows(SCORE_FEATURE, "score", reference.scores))
    for feature, counts in reference.categorical.items():
        for category, count in sorted(counts.items()):
            rows.append(
                {"feature": feature, "kind": "categorical", "bin": None, "upper_edge": None,
                 "category": category, "ref_count": count, "ref_sum": None, "ref_std": None}
            )  # fmt: skip
    for row in rows:
        row.update(model_name=model_name, model_version=version)
    return pa.Table.from_pylist(rows, schema=DRIFT_REFERENCE_SCHEMA)


def _numeric_from_rows(rows: list[dict[str, Any]]) -> NumericReference:
    rows.sort(key=lambda r: r["bin"])
    edges = tuple(float(r["upper_edge"]) for r in rows if r["upper_edge"] is not None)
    sums = [r.get("ref_sum") for r in rows]
    std = rows[0].get("ref_std")
    return NumericReference(
        edges,
        tuple(int(r["ref_count"]) for r in rows),
        None if any(s is None for s in sums) else tuple(float(s) for s in sums),
        None if std is None else float(std),
    )


def reference_from_table(table: pa.Table) -> DriftReference:
    numeric: dict[str, list[dict[str, Any]]] = {}
    scores: list[dict[str, Any]] = []
    categorical: dict[str, dict[str, int]] = {}
    for row in table.to_pylist():
        if row["kind"] == "numeric":
            numeric.setdefault(row["feature"], []).append(row)
        elif row["kind"] == "score":
            scores.append(row)
        else:
            categorical.setdefault(row["feature"], {})[row["category"]] = int(row["ref_count"])
    return DriftReference(
        {feature: _numeric_from_rows(rows) for feature, rows in numeric.items()},
        categorical,
        _numeric_from_rows(scores) if scores else None,
    )


def write_drift_reference(
    warehouse: Warehouse, model_name: str, version: int, reference: DriftReference
) -> int:
    """Store ``reference`` for a model version (replacing that version's rows)."""
    data = reference_to_table(reference, model_name, version)
    ensure_table(warehouse, DRIFT_REFERENCE_TABLE, DRIFT_REFERENCE_SCHEMA)
    with warehouse.transaction():
        warehouse.execute(
            f"delete from {DRIFT_REFERENCE_TABLE} where model_name = ? and model_version = ?",
            [model_name, version],
        )
        return warehouse.append_arrow(DRIFT_REFERENCE_TABLE, data)


def read_drift_reference(warehouse: Warehouse, model_name: str, version: int) -> DriftReference:
    if not warehouse.table_exists(DRIFT_REFERENCE_TABLE):
        raise DriftError(f"{DRIFT_REFERENCE_TABLE} does not exist: train a model first")
    ensure_table(warehouse, DRIFT_REFERENCE_TABLE, DRIFT_REFERENCE_SCHEMA)
    table = warehouse.query_arrow(
        f"select {', '.join(DRIFT_REFERENCE_SCHEMA.names)} from {DRIFT_REFERENCE_TABLE} "
        "where model_name = ? and model_version = ?",
        [model_name, version],
    )
    if table.num_rows == 0:
        raise DriftError(f"no drift reference stored for {model_name} v{version}")
    return reference_from_table(table)


# -- counting in the warehouse -------------------------------------------------------------
@dataclass(frozen=True)
class CurrentCounts:
    """The current window in the reference's bins: what :func:`compare` needs."""

    rows: int
    numeric: dict[str, tuple[int, ...]]  # [null, bin 0, ..., bin k]
    categorical: dict[str, dict[str, int]]


_FLOAT_TYPE = {"bigquery": "float64"}
_TEXT_TYPE = {"bigquery": "string"}


def _float_literal(value: float, dialect: str) -> str:
    if not math.isfinite(value):
        raise DriftError(f"bin edge {value!r} is not finite")
    return f"cast({float(value)!r} as {_FLOAT_TYPE.get(dialect, 'double precision')})"


_INTEGER_TYPES = {
    "smallint",
    "integer",
    "bigint",
    "int",
    "int2",
    "int4",
    "int8",
    "int64",
    "hugeint",
}
_TEXT_TYPES = {"text", "varchar", "character varying", "string"}


def _edge_literal(edge: float, column_type: str | None, dialect: str) -> str:
    """The edge as the column compares cheapest: ``x <= 2.5`` is ``x <= 2`` for an integer
    column (no cast of every row to double precision: a quarter of PostgreSQL's time)."""
    literal = _float_literal(edge, dialect)  # raises on a non-finite edge
    return str(math.floor(edge)) if column_type in _INTEGER_TYPES else literal


def _text_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _count_if(condition: str, dialect: str) -> str:
    """A conditional count in the form each warehouse runs fastest (measured: PostgreSQL's
    ``FILTER``; BigQuery's ``countif``; ``sum(case ...)`` elsewhere)."""
    if dialect == "postgres":
        return f"count(*) filter (where {condition})"
    if dialect == "bigquery":
        return f"countif({condition})"
    return f"sum(case when {condition} then 1 else 0 end)"


def conditional_counts_sql(
    table: str,
    reference: DriftReference,
    *,
    where: str | None = None,
    columns: Mapping[str, str] | None = None,
    column_types: Mapping[str, str] | None = None,
    dialect: str = "postgres",
) -> str:
    """One scan of conditional counts, no ``GROUP BY`` (PostgreSQL runs it in parallel, with
    no hash table): per numeric feature its non-null count and, per edge, the count of values
    ``<= edge`` (cumulative: one comparison per aggregate; :func:`count_current` differences
    them into bins); per categorical feature its non-null count and the count of each of the
    reference's categories (the rest are unseen ones, named by :func:`unseen_categories_sql`
    when there are any). ``column_types`` (the warehouse's type names) lets integer and text
    columns compare without a cast."""
    columns = columns or {}
    types = column_types or {}
    text = _TEXT_TYPE.get(dialect, "varchar")
    selects = ["count(*) as n_rows"]
    for i, (feature, ref) in enumerate(reference.numeric.items()):
        name = columns.get(feature, feature)
        column = quote_ident(name)
        selects.append(f"count({column}) as n_{i}")
        for j, edge in enumerate(ref.edges):
            condition = f"{column} <= {_edge_literal(edge, types.get(name), dialect)}"
            selects.append(f"{_count_if(condition, dialect)} as n_{i}_{j}")
    for i, (feature, counts) in enumerate(reference.categorical.items()):
        name = columns.get(feature, feature)
        column = quote_ident(name)
        value = column if types.get(name) in _TEXT_TYPES else f"cast({column} as {text})"
        selects.append(f"count({column}) as c_{i}")
        known = sorted(c for c in counts if c != NULL_CATEGORY)
        for j, category in enumerate(known):
            condition = f"{value} = {_text_literal(category)}"
            selects.append(f"{_count_if(condition, dialect)} as c_{i}_{j}")
    sql = f"select {', '.join(selects)} from {table}"
    return sql + f" where {where}" if where else sql


def unseen_categories_sql(
    table: str,
    feature: str,
    known: Sequence[str],
    *,
    where: str | None = None,
    columns: Mapping[str, str] | None = None,
    dialect: str = "postgres",
) -> str:
    """``(category, n)`` of the values of ``feature`` the reference never saw."""
    text = _TEXT_TYPE.get(dialect, "varchar")
    column = f"cast({quote_ident((columns or {}).get(feature, feature))} as {text})"
    conditions = [f"{column} is not null"]
    if known:
        conditions.append(f"{column} not in ({', '.join(_text_literal(c) for c in known)})")
    if where:
        conditions.append(f"({where})")
    return (
        f"select {column} as category, count(*) as n from {table} "
        f"where {' and '.join(conditions)} group by 1"
    )


def grouping_sets_sql(
    table: str,
    reference: DriftReference,
    *,
    where: str | None = None,
    columns: Mapping[str, str] | None = None,
    dialect: str = "duckdb",
) -> str:
    """One scan that bins every numeric feature once per row (a ``CASE`` on the edges) and
    counts every feature's bins and categories with ``GROUPING SETS``: ``(set_index, value,
    n)`` rows, numeric sets first (the fastest form on DuckDB, measured)."""
    columns = columns or {}
    text = _TEXT_TYPE.get(dialect, "varchar")
    keys = []
    for feature, ref in reference.numeric.items():
        column = quote_ident(columns.get(feature, feature))
        whens = " ".join(
            f"when {column} <= {_float_literal(edge, dialect)} then {j}"
            for j, edge in enumerate(ref.edges)
        )
        keys.append(f"case when {column} is null then -1 {whens} else {len(ref.edges)} end")
    for feature in reference.categorical:
        keys.append(f"cast({quote_ident(columns.get(feature, feature))} as {text})")
    names = [f"k_{i}" for i in range(len(keys))]
    inner = (
        f"select {', '.join(f'{k} as {n}' for k, n in zip(keys, names, strict=True))} from {table}"
    )
    if where:
        inner += f" where {where}"
    n_numeric = len(reference.numeric)
    which = " ".join(f"when grouping({n}) = 0 then {i}" for i, n in enumerate(names))
    value = " ".join(
        f"when grouping({n}) = 0 then "
        + (f"cast({n} as {text})" if i < n_numeric else f"coalesce({n}, '{NULL_CATEGORY}')")
        for i, n in enumerate(names)
    )
    sets = ", ".join(f"({n})" for n in names)
    return (
        f"select case {which} end as set_index, case {value} end as value, count(*) as n "
        f"from ({inner}) as current_window group by grouping sets ({sets})"
    )


def _cumulative_to_bins(cumulative: list[int], non_null: int, rows: int) -> tuple[int, ...]:
    values = [*cumulative, non_null]
    return (rows - non_null, values[0], *(values[k] - values[k - 1] for k in range(1, len(values))))


def count_current(
    warehouse: Warehouse,
    table: str,
    reference: DriftReference,
    *,
    where: str | None = None,
    params: Params = None,
    columns: Mapping[str, str] | None = None,
) -> CurrentCounts:
    """Counts of ``table`` (rows matching ``where``) in the reference's bins and categories,
    computed by the warehouse in one scan (plus one for unseen categories, when a window has
    any): a few hundred numbers come back, whatever the window's size."""
    dialect = warehouse.kind
    if dialect == "duckdb" and (reference.numeric or reference.categorical):
        return _count_grouping_sets(warehouse, table, reference, where, params, columns)
    types = warehouse.columns(table)
    sql = conditional_counts_sql(
        table, reference, where=where, columns=columns, column_types=types, dialect=dialect
    )
    row = warehouse.query_arrow(sql, params).to_pylist()[0]
    rows = int(row["n_rows"] or 0)
    numeric = {}
    for i, (feature, ref) in enumerate(reference.numeric.items()):
        cumulative = [int(row[f"n_{i}_{j}"] or 0) for j in range(len(ref.edges))]
        numeric[feature] = _cumulative_to_bins(cumulative, int(row[f"n_{i}"] or 0), rows)
    categorical: dict[str, dict[str, int]] = {}
    for i, (feature, counts) in enumerate(reference.categorical.items()):
        known = sorted(c for c in counts if c != NULL_CATEGORY)
        found = {c: int(row[f"c_{i}_{j}"] or 0) for j, c in enumerate(known)}
        non_null = int(row[f"c_{i}"] or 0)
        if rows - non_null:
            found[NULL_CATEGORY] = rows - non_null
        if non_null > sum(found.get(c, 0) for c in known):  # values the reference never saw
            sql = unseen_categories_sql(
                table, feature, known, where=where, columns=columns, dialect=dialect
            )
            for item in warehouse.query_arrow(sql, params).to_pylist():
                found[str(item["category"])] = int(item["n"])
        categorical[feature] = {c: n for c, n in found.items() if n}
    return CurrentCounts(rows, numeric, categorical)


def _count_grouping_sets(
    warehouse: Warehouse,
    table: str,
    reference: DriftReference,
    where: str | None,
    params: Params,
    columns: Mapping[str, str] | None,
) -> CurrentCounts:
    sql = grouping_sets_sql(table, reference, where=where, columns=columns, dialect=warehouse.kind)
    numeric_features = list(reference.numeric)
    categorical_features = list(reference.categorical)
    numeric = {f: [0] * (len(r.edges) + 2) for f, r in reference.numeric.items()}
    categorical: dict[str, dict[str, int]] = {f: {} for f in categorical_features}
    for item in warehouse.query_arrow(sql, params).to_pylist():
        index, n = int(item["set_index"]), int(item["n"])
        if index < len(numeric_features):
            numeric[numeric_features[index]][int(item["value"]) + 1] += n
        else:
            categorical[categorical_features[index - len(numeric_features)]][item["value"]] = n
    if numeric_features:
        rows = sum(numeric[numeric_features[0]])
    else:
        rows = sum(categorical[categorical_features[0]].values())
    return CurrentCounts(rows, {f: tuple(c) for f, c in numeric.items()}, categorical)


def count_arrow(batches: Any, reference: DriftReference) -> CurrentCounts:
    """The same counts as :func:`count_current`, in numpy, from Arrow batches or a table
    (streamed: memory is one batch)."""
    if isinstance(batches, pa.Table):
        batches = batches.to_batches()
    rows = 0
    numeric = {f: np.zeros(len(r.edges) + 2, dtype=np.int64) for f, r in reference.numeric.items()}
    categorical: dict[str, dict[str, int]] = {f: {} for f in reference.categorical}
    for batch in batches:
        rows += batch.num_rows
        for feature, ref in reference.numeric.items():
            values = _float_values(batch.column(feature))
            numeric[feature] += np.asarray(numeric_counts(values, ref.edges), dtype=np.int64)
        for feature in reference.categorical:
            counts = categorical[feature]
            for category, n in category_counts(batch.column(feature)).items():
                counts[category] = counts.get(category, 0) + n
    return CurrentCounts(
        rows, {f: tuple(int(c) for c in v) for f, v in numeric.items()}, categorical
    )


# -- the comparison (pure) -----------------------------------------------------------------
@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric, categorical, prediction
    statistic: str  # the effect size reported in ``value``
    value: float
    threshold: float
    is_drifted: bool
    current_rows: int = 0
    psi: float | None = None
    wasserstein: float | None = None
    ks_statistic: float | None = None
    js_distance: float | None = None
    chi2_statistic: float | None = None
    p_value: float = 1.0
    p_adjusted: float = 1.0
    note: str = ""

    def reason(self) -> str:
        return (
            f"{self.feature} drifted ({self.statistic} {self.value:.3f} >= {self.threshold:g}, "
            f"adjusted p {self.p_adjusted:.2g})"
        )


def _numeric_drift(
    feature: str, kind: str, ref: NumericReference, counts: Sequence[int],
    thresholds: DriftThresholds,
) -> FeatureDrift:  # fmt: skip
    rows = int(sum(counts))
    if len(counts) != len(ref.counts):
        raise DriftError(f"{feature}: {len(counts)} current bins for {len(ref.counts)} reference")
    if rows == 0 or sum(ref.counts) == 0:
        return FeatureDrift(feature, kind, "psi", 0.0, thresholds.psi, False, rows,
                            note="no rows to compare")  # fmt: skip
    psi_value = stats.psi(ref.counts, counts)
    wasserstein = None
    non_null_ref, non_null_cur = ref.counts[1:], counts[1:]
    if ref.sums is not None and sum(non_null_ref) and sum(non_null_cur):
        distance = stats.binned_wasserstein(ref.edges, non_null_ref, ref.sums[1:], non_null_cur)
        spread = ref.std if ref.std and ref.std > 0 else None
        wasserstein = distance / spread if spread else (0.0 if distance == 0 else math.inf)
        if not math.isfinite(wasserstein):
            wasserstein = None  # a constant reference: PSI decides
    # KS over the ordered bins with nulls first: a shift in the null share also counts.
    ks_statistic, p_value = stats.ks_binned(ref.counts, counts)
    psi_share = psi_value / thresholds.psi
    w_share = (wasserstein or 0.0) / thresholds.wasserstein
    if w_share > psi_share:
        statistic, value, threshold = (
            "wasserstein",
            float(wasserstein or 0.0),
            thresholds.wasserstein,
        )
    else:
        statistic, value, threshold = "psi", psi_value, thresholds.psi
    return FeatureDrift(
        feature, kind, statistic, value, threshold, False, rows, psi=psi_value,
        wasserstein=wasserstein, ks_statistic=ks_statistic, p_value=p_value,
    )  # fmt: skip


def _categorical_drift(
    feature: str, ref: Mapping[str, int], counts: Mapping[str, int], thresholds: DriftThresholds
) -> FeatureDrift:
    rows = int(sum(counts.values()))
    if rows == 0 or sum(ref.values()) == 0:
        return FeatureDrift(feature, "categorical", "js", 0.0, thresholds.js, False, rows,
                            note="no rows to compare")  # fmt: skip
    js = stats.jensen_shannon(ref, counts)
    chi2, p_value = stats.chi_square(ref, counts)
    unseen = sorted(set(counts) - set(ref))
    vanished = sorted(set(ref) - set(counts))
    unseen_share = sum(counts[c] for c in unseen) / rows
    statistic, value, threshold = "js", js, thresholds.js
    if unseen_share / thresholds.new_category_share > js / thresholds.js:
        statistic, value, threshold = "unseen_share", unseen_share, thresholds.new_category_share
    note = "; ".join(
        part
        for part in (
            f"unseen: {', '.join(unseen)} ({unseen_share:.1%})" if unseen else "",
            f"vanished: {', '.join(vanished)}" if vanished else "",
        )
        if part
    )
    return FeatureDrift(
        feature, "categorical", statistic, value, threshold, False, rows, js_distance=js,
        chi2_statistic=chi2, p_value=p_value, note=note,
    )  # fmt: skip


def _decide(results: list[FeatureDrift], thresholds: DriftThresholds) -> list[FeatureDrift]:
    """Benjamini-Hochberg over the features' p-values, then the effect-size rule."""
    adjusted = stats.benjamini_hochberg([r.p_value for r in results])
    decided = []
    for result, p_adjusted in zip(results, adjusted, strict=True):
        material = result.value >= result.threshold
        decided.append(
            replace(
                result,
                p_adjusted=p_adjusted,
                is_drifted=bool(
                    result.current_rows and material and p_adjusted <= thresholds.alpha
                ),
            )
        )
    return decided


def compare(
    reference: DriftReference,
    current: CurrentCounts,
    *,
    thresholds: DriftThresholds = DriftThresholds(),
) -> list[FeatureDrift]:
    """One :class:`FeatureDrift` per reference feature, decided together (BH)."""
    results = [
        _numeric_drift(feature, "numeric", ref, current.numeric[feature], thresholds)
        for feature, ref in reference.numeric.items()
    ]
    results += [
        _categorical_drift(feature, ref, current.categorical.get(feature, {}), thresholds)
        for feature, ref in reference.categorical.items()
    ]
    return _decide(results, thresholds)


def compare_scores(
    reference: NumericReference, current: CurrentCounts, thresholds: DriftThresholds
) -> FeatureDrift:
    """Prediction drift: the score distribution against the reference's scores."""
    result = _numeric_drift(
        SCORE_FEATURE, "prediction", reference, current.numeric[SCORE_FEATURE], thresholds
    )
    return _decide([result], thresholds)[0]


def dataset_verdict(features: Sequence[FeatureDrift], thresholds: DriftThresholds) -> bool:
    return sum(f.is_drifted for f in features) >= thresholds.min_drifted_features


def compare_tables(
    reference: DriftReference,
    current: pa.Table,
    *,
    thresholds: DriftThresholds = DriftThresholds(),
) -> tuple[bool, list[FeatureDrift]]:
    """Dataset verdict and features for an in-memory current window (tests, calibration)."""
    features = compare(reference, count_arrow(current, reference), thresholds=thresholds)
    return dataset_verdict(features, thresholds), features


# -- the check -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftReport:
    run_at: datetime
    model_name: str
    model_version: int
    current_table: str
    rows: int
    features: list[FeatureDrift]
    thresholds: DriftThresholds
    is_drifted: bool
    predictions: FeatureDrift | None = None  # prediction drift (None: not checked)
    prediction_note: str = ""
    window_filter: str = ""
    # what the verdict was computed from (for the charts)
    reference: DriftReference | None = None
    current: CurrentCounts | None = None
    served: CurrentCounts | None = None  # the logged scores' counts, when judged

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.is_drifted]

    @property
    def share_drifted(self) -> float:
        return len(self.drifted_features) / len(self.features) if self.features else 0.0

    @property
    def prediction_drifted(self) -> bool:
        return bool(self.predictions is not None and self.predictions.is_drifted)

    @property
    def needs_retraining(self) -> bool:
        """The retraining trigger the orchestration reads: dataset-level drift of the
        features, or drift of the scores the API served."""
        return self.is_drifted or self.prediction_drifted

    @property
    def reasons(self) -> list[str]:
        """Why retraining is needed: one line per drifted feature (and the scores)."""
        lines = [f.reason() for f in self.features if f.is_drifted]
        if self.prediction_drifted and self.predictions is not None:
            lines.append(f"served scores: {self.predictions.reason()}")
        return lines

    def summary(self) -> str:
        drifted = self.drifted_features
        verdict = "DRIFTED" if self.is_drifted else "no dataset-level drift"
        text = (
            f"{self.model_name} v{self.model_version} reference vs {self.current_table} "
            f"({self.rows} rows): {len(drifted)}/{len(self.features)} features drifted"
            + (f" ({', '.join(drifted)})" if drifted else "")
            + f"; {verdict}"
        )
        if self.predictions is not None:
            p = self.predictions
            state = "DRIFTED" if p.is_drifted else "stable"
            text += f"; served scores {state} ({p.statistic} {p.value:.3f}, {p.current_rows} rows)"
        elif self.prediction_note:
            text += f"; {self.prediction_note}"
        return text

    def markdown(self) -> str:
        """The summary and a table of the features (a Prefect markdown artifact)."""

        def fmt(value: float | None) -> str:
            return "" if value is None else f"{value:.4f}"

        lines = [
            f"## Drift: {self.summary()}",
            "",
            f"Rule: BH-adjusted p <= {self.thresholds.alpha:g} and effect size >= threshold "
            f"(PSI {self.thresholds.psi:g}, Wasserstein/sd {self.thresholds.wasserstein:g}, "
            f"JS {self.thresholds.js:g}, share in unseen categories "
            f"{self.thresholds.new_category_share:g}).",
            "",
            "| feature | kind | PSI | Wasserstein/sd | KS | JS | chi2 | p | p (BH) | drifted | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = list(self.features) + ([self.predictions] if self.predictions else [])
        for f in rows:
            lines.append(
                f"| {f.feature} | {f.kind} | {fmt(f.psi)} | {fmt(f.wasserstein)} | "
                f"{fmt(f.ks_statistic)} | {fmt(f.js_distance)} | {fmt(f.chi2_statistic)} | "
                f"{f.p_value:.3g} | {f.p_adjusted:.3g} | {'**yes**' if f.is_drifted else 'no'} "
                f"| {f.note} |"
            )
        return "\n".join(lines) + "\n"


def check_drift(
    warehouse: Warehouse,
    registry: ModelRegistry,
    *,
    current_table: str = CUSTOMER_FEATURES_TABLE,
    model_name: str = "churn",
    version_or_alias: int | str = "production",
    thresholds: DriftThresholds = DriftThresholds(),
    where: str | None = None,
    params: Params = None,
    prediction_window_days: int | None = 7,
    min_prediction_rows: int = 100,
    run_at: datetime | None = None,
    write: bool = True,
) -> DriftReport:
    """Compare ``current_table`` (rows matching ``where``) with the model version's training
    reference, and the scores the API logged for that version in the last
    ``prediction_window_days`` (None: skip) with the reference's scores; write
    ``mlops.drift_results``."""
    from ..serving.prediction_log import PREDICTION_LOG_TABLE

    run_at = run_at or datetime.now(UTC)
    version = registry.get(model_name, version_or_alias)
    reference = read_drift_reference(warehouse, model_name, version.version)
    if not warehouse.table_exists(current_table):
        raise DriftError(f"{current_table} does not exist")
    present = warehouse.columns(current_table)
    missing = [c for c in (*reference.numeric, *reference.categorical) if c not in present]
    if missing:
        raise DriftError(f"{current_table} lacks the reference's features {missing}")
    current = count_current(warehouse, current_table, reference, where=where, params=params)
    if current.rows == 0:
        raise DriftError(
            f"{current_table} has no rows to compare" + (f" where {where}" if where else "")
        )
    features = compare(reference, current, thresholds=thresholds)

    predictions, note = None, ""
    served = None
    if prediction_window_days is not None:
        if reference.scores is None:
            note = (
                f"no score reference for {model_name} v{version.version}: prediction drift skipped"
            )
        elif not warehouse.table_exists(PREDICTION_LOG_TABLE):
            note = "no prediction log yet: prediction drift skipped"
        else:
            since = run_at - timedelta(days=prediction_window_days)
            window = DriftReference({SCORE_FEATURE: reference.scores}, {})
            logged = count_current(
                warehouse, PREDICTION_LOG_TABLE, window,
                where="model_name = ? and model_version = ? and predicted_at >= ?",
                params=[model_name, version.version, since],
                columns={SCORE_FEATURE: "score"},
            )  # fmt: skip
            if logged.rows < min_prediction_rows:
                note = (
                    f"{logged.rows} predictions logged in the last {prediction_window_days} days "
                    f"(< {min_prediction_rows}): prediction drift not judged"
                )
            else:
                predictions = compare_scores(reference.scores, logged, thresholds)
                served = logged
    report = DriftReport(
        run_at=run_at,
        model_name=model_name,
        model_version=version.version,
        current_table=current_table,
        rows=current.rows,
        features=features,
        thresholds=thresholds,
        is_drifted=dataset_verdict(features, thresholds),
        predictions=predictions,
        prediction_note=note,
        window_filter=where or "",
        reference=reference,
        current=current,
        served=served,
    )
    if write:
        write_drift_results(warehouse, report)
    return report


def drift_results_table(report: DriftReport) -> pa.Table:
    common = {
        "run_at": report.run_at,
        "model_name": report.model_name,
        "model_version": report.model_version,
        "current_table": report.current_table,
        "window_filter": report.window_filter,
    }
    rows = []
    for f in [*report.features, *([report.predictions] if report.predictions else [])]:
        rows.append(
            {**common, "feature": f.feature, "statistic": f.statistic, "value": f.value,
             "threshold": f.threshold, "is_drifted": f.is_drifted, "kind": f.kind,
             "current_rows": f.current_rows, "psi": f.psi, "wasserstein": f.wasserstein,
             "ks_statistic": f.ks_statistic, "js_distance": f.js_distance,
             "chi2_statistic": f.chi2_statistic, "p_value": f.p_value,
             "p_adjusted": f.p_adjusted}
        )  # fmt: skip
    rows.append(
        {**common, "feature": DATASET_ROW, "statistic": "drifted_features",
         "value": float(len(report.drifted_features)),
         "threshold": float(report.thresholds.min_drifted_features),
         "is_drifted": report.is_drifted, "kind": "dataset", "current_rows": report.rows}
    )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=DRIFT_RESULTS_SCHEMA)


def write_drift_results(warehouse: Warehouse, report: DriftReport) -> int:
    ensure_table(warehouse, DRIFT_RESULTS_TABLE, DRIFT_RESULTS_SCHEMA)
    with warehouse.transaction():
        return warehouse.append_arrow(DRIFT_RESULTS_TABLE, drift_results_table(report))
