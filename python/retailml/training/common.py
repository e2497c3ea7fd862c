"""Shared by the trainers and batch scoring: reading marts as Arrow with a canonical schema,
content fingerprints, the feature frame the churn pipeline takes, and result types."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..features.spec import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES
from ..registry import ModelVersion, PromotionDecision
from ..warehouse.base import Warehouse, quote_ident

Progress = Callable[[str], None]

# Arrow types the Python side works with, whatever the warehouse returned (DECIMAL sums,
# INTEGER counts, TIMESTAMP dates...). Fingerprints are computed after this cast, so the
# same rows hash the same on DuckDB and PostgreSQL.
FEATURE_TYPES: dict[str, pa.DataType] = {
    **{name: pa.float64() for name in NUMERIC_FEATURES},
    **{name: pa.string() for name in CATEGORICAL_FEATURES},
}


class TrainingDataError(ValueError):
    """The training data cannot produce a model; the message says what is wrong."""


@dataclass(frozen=True)
class TrainResult:
    model_name: str
    version: ModelVersion
    promotion: PromotionDecision
    metrics: dict[str, Any]
    rows: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        headline = ("roc_auc", "pr_auc", "baseline_recency_roc_auc", "mase", "mase_seasonal_naive")
        figures = ", ".join(
            f"{k}={self.metrics[k]:.3f}" for k in headline if isinstance(self.metrics.get(k), float)
        )
        return (
            f"{self.model_name} v{self.version.version} on {self.rows} rows in "
            f"{self.seconds:.1f}s ({figures}); {self.promotion.reason}"
        )


def report(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def select_sql(table: str, columns: Sequence[str]) -> str:
    return f"select {', '.join(quote_ident(c) for c in columns)} from {table}"


def read_table(
    warehouse: Warehouse, table: str, types: Mapping[str, pa.DataType], *, what: str
) -> tuple[str, pa.Table]:
    """Read ``types``' columns of ``table`` as Arrow cast to those types; return (sql, data).

    Raises :class:`TrainingDataError` naming the table or the missing columns.
    """
    if not warehouse.table_exists(table):
        raise TrainingDataError(
            f"{what}: table {table} does not exist (build the dbt marts first: dbt build)"
        )
    present = warehouse.columns(table)
    missing = [c for c in types if c not in present]
    if missing:
        raise TrainingDataError(f"{what}: table {table} lacks columns {missing}")
    sql = select_sql(table, list(types))
    return sql, cast_table(warehouse.query_arrow(sql), types, what=what)


def cast_table(table: pa.Table, types: Mapping[str, pa.DataType], *, what: str) -> pa.Table:
    """``table`` reduced to ``types``' columns, in that order, cast to those types."""
    missing = [c for c in types if c not in table.column_names]
    if missing:
        raise TrainingDataError(f"{what}: data lacks columns {missing}")
    arrays = []
    for name, target in types.items():
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        try:
            safe = not (pa.types.is_date(target) or pa.types.is_floating(target))
            arrays.append(pc.cast(column, target, safe=safe))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise TrainingDataError(
                f"{what}: column {name} ({column.type}) cannot be read as {target}: {exc}"
            ) from exc
    return pa.Table.from_arrays(arrays, schema=pa.schema(list(types.items())))


def table_sha256(table: pa.Table, sort_keys: Sequence[str]) -> str:
    """sha256 of the Arrow IPC stream of ``table`` sorted by ``sort_keys`` (one batch)."""
    ordered = table.sort_by([(k, "ascending") for k in sort_keys]) if sort_keys else table
    ordered = ordered.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, ordered.schema) as writer:
        writer.write_table(ordered)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def feature_frame(data: pa.Table | pa.RecordBatch | pd.DataFrame) -> pd.DataFrame:
    """The DataFrame the churn pipeline takes: the :data:`FEATURES` columns in contract order,
    numerics as float64 (NaN for missing), categoricals as strings. Serving should build its
    input with this too (e.g. ``feature_frame(pd.DataFrame([payload]))``)."""
    if isinstance(data, pd.DataFrame):
        missing = [c for c in FEATURES if c not in data.columns]
        if missing:
            raise ValueError(f"feature frame lacks columns {missing}")
        frame = pd.DataFrame(
            {
                **{
                    c: pd.to_numeric(data[c], errors="coerce").astype("float64")
                    for c in NUMERIC_FEATURES
                },
                **{
                    c: data[c]
                    .astype(object)
                    .where(data[c].notna(), None)
                    .map(lambda v: v if v is None else str(v))
                    for c in CATEGORICAL_FEATURES
                },
            }
        )
        data = pa.Table.from_pandas(frame, preserve_index=False)
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    return cast_table(data, FEATURE_TYPES, what="features").to_pandas()
