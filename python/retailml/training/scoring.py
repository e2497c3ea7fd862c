"""Batch scoring: every customer of ``marts.ml_customer_features`` with the production churn
model into ``mlops.churn_scores``.

Memory stays flat: the features are streamed in batches (``iter_arrow``), scored, and the
scores spooled to a local Arrow IPC file; then one transaction deletes the previous scores
of the same model and as_of_date(s) and appends the new ones from the spool (streamed
again). The spool exists because a warehouse connection that is streaming a result
(PostgreSQL ``COPY ... TO STDOUT``) cannot write at the same time, and the replacement has
to be atomic.
"""

from __future__ import annotations

import itertools
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..features.spec import CUSTOMER_FEATURES_TABLE, ENTITY_KEY, FEATURES
from ..registry import ModelNotFoundError, ModelRegistry
from ..warehouse.base import Warehouse, quote_ident
from .churn import CHURN_MODEL_NAME, positive_scores
from .common import FEATURE_TYPES, Progress, cast_table, feature_frame, report, select_sql

SCORES_TABLE = "mlops.churn_scores"
AS_OF = "as_of_date"
SCORES_SCHEMA = pa.schema(
    [
        (ENTITY_KEY, pa.string()),
        (AS_OF, pa.date32()),
        ("churn_probability", pa.float64()),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)
_INPUT_TYPES: dict[str, pa.DataType] = {
    ENTITY_KEY: pa.string(),
    AS_OF: pa.date32(),
    **FEATURE_TYPES,
}


class ScoringError(RuntimeError):
    """Scoring cannot run (no production model, missing table or columns)."""


@dataclass(frozen=True)
class ScoreResult:
    model_name: str
    model_version: int
    rows: int
    as_of_dates: list[date]
    scored_at: datetime
    seconds: float

    def summary(self) -> str:
        dates = ", ".join(str(d) for d in self.as_of_dates)
        return (
            f"{self.rows} customers scored with {self.model_name} v{self.model_version} "
            f"as of {dates} in {self.seconds:.1f}s"
        )


def score_batch(
    model: object,
    batch: pa.RecordBatch,
    *,
    model_name: str,
    model_version: int,
    scored_at: datetime,
) -> pa.RecordBatch:
    """Scores of one batch of customer features (pure)."""
    table = cast_table(pa.Table.from_batches([batch]), _INPUT_TYPES, what=CUSTOMER_FEATURES_TABLE)
    for key in (ENTITY_KEY, AS_OF):
        if table.column(key).null_count:
            raise ScoringError(f"{CUSTOMER_FEATURES_TABLE}.{key} has null values")
    probability = positive_scores(model, feature_frame(table))
    if not np.isfinite(probability).all():
        raise ScoringError(f"model {model_name} v{model_version} returned non-finite scores")
    n = table.num_rows
    return pa.RecordBatch.from_arrays(
        [
            table.column(ENTITY_KEY).combine_chunks(),
            table.column(AS_OF).combine_chunks(),
            pa.array(probability, pa.float64()),
            pa.array([model_name] * n, pa.string()),
            pa.array([model_version] * n, pa.int64()),
            pa.array([scored_at] * n, SCORES_SCHEMA.field("scored_at").type),
        ],
        schema=SCORES_SCHEMA,
    )


def score_customers(
    warehouse: Warehouse,
    registry: ModelRegistry,
    *,
    batch_rows: int = 50_000,
    progress: Progress | None = None,
    model_name: str = CHURN_MODEL_NAME,
    features_table: str = CUSTOMER_FEATURES_TABLE,
    spool_dir: Path | None = None,
) -> ScoreResult:
    """Score every row of ``features_table`` with the verified production model and replace
    that model's scores of the same as_of_date(s) in ``mlops.churn_scores`` atomically."""
    started = time.perf_counter()
    try:
        loaded = registry.load(model_name, "production")
    except ModelNotFoundError as exc:
        raise ScoringError(
            f"no production version of model {model_name!r} to score with: train and promote "
            f"one first (retailml train). {exc}"
        ) from exc
    version = loaded.version.version
    if not warehouse.table_exists(features_table):
        raise ScoringError(f"{features_table} does not exist (build the dbt marts first)")
    present = warehouse.columns(features_table)
    missing = [c for c in _INPUT_TYPES if c not in present]
    if missing:
        raise ScoringError(f"{features_table} lacks columns {missing}")

    scored_at = datetime.now(UTC)
    rows = 0
    as_of_dates: set[date] = set()
    sql = select_sql(features_table, [ENTITY_KEY, AS_OF, *FEATURES])
    with tempfile.TemporaryDirectory(prefix="retailml-scores-", dir=spool_dir) as tmp:
        spool = Path(tmp) / "scores.arrows"
        with pa.OSFile(str(spool), "wb") as sink, pa.ipc.new_stream(sink, SCORES_SCHEMA) as out:
            for batch in warehouse.iter_arrow(sql, batch_rows=batch_rows):
                if batch.num_rows == 0:
                    continue
                scored = score_batch(
                    loaded.model,
                    batch,
                    model_name=model_name,
                    model_version=version,
                    scored_at=scored_at,
                )
                out.write_batch(scored)
                rows += scored.num_rows
                as_of_dates.update(d for d in pc.unique(scored.column(AS_OF)).to_pylist() if d)
                report(progress, f"scored {rows} customers")
        if rows == 0:
            raise ScoringError(f"{features_table} has no rows to score")
        _replace_scores(warehouse, spool, model_name, sorted(as_of_dates))
    report(progress, f"wrote {rows} scores of {model_name} v{version} to {SCORES_TABLE}")
    return ScoreResult(
        model_name=model_name,
        model_version=version,
        rows=rows,
        as_of_dates=sorted(as_of_dates),
        scored_at=scored_at,
        seconds=time.perf_counter() - started,
    )


def _replace_scores(
    warehouse: Warehouse, spool: Path, model_name: str, as_of_dates: list[date]
) -> None:
    warehouse.create_table(SCORES_TABLE, SCORES_SCHEMA)
    placeholders = ", ".join("?" * len(as_of_dates))
    # Read (not memory-map) the spool: each batch is freed once appended instead of its
    # pages staying resident, so this side holds about one batch however many were scored.
    with warehouse.transaction(), pa.OSFile(str(spool), "rb") as source:
        warehouse.execute(
            f"delete from {SCORES_TABLE} where model_name = ? and {AS_OF} in ({placeholders})",
            [model_name, *as_of_dates],
        )
        warehouse.append_arrow(SCORES_TABLE, pa.ipc.open_stream(source))


# -- partitioned scoring (scale-out) -------------------------------------------------------
# The same scores as :func:`score_customers`, computed by independent partitions that can run
# on different workers (e.g. Prefect tasks on a Dask cluster): customers are split into
# ranges of customer_id by SQL; each partition streams its range, scores it with the pinned
# model version and replaces its own staging table; one final transaction swaps every
# staging table into ``mlops.churn_scores``. A retried partition rewrites only its table, and
# until the swap the previous scores stay in place.
STAGING_PREFIX = "mlops._churn_scores_staging_"


@dataclass(frozen=True)
class ScoringPlan:
    """What every partition needs (small and picklable, sent to the workers)."""

    model_name: str
    model_version: int
    scored_at: datetime
    features_table: str
    run_id: str
    bounds: tuple[tuple[str | None, str | None], ...]  # [lo, hi) of customer_id; None: open

    def staging_table(self, index: int) -> str:
        return f"{STAGING_PREFIX}{self.run_id}_p{index:04d}"


@dataclass(frozen=True)
class PartitionResult:
    index: int
    rows: int
    as_of_dates: tuple[date, ...]
    worker: str = ""  # host, process and thread that scored it (for the logs)


def partition_bounds(
    warehouse: Warehouse, partitions: int, *, features_table: str = CUSTOMER_FEATURES_TABLE
) -> tuple[tuple[str | None, str | None], ...]:
    """``partitions`` customer_id ranges ``[lo, hi)`` of about equal size (computed in SQL;
    fewer when there are fewer customers). The first and last range are open-ended."""
    if partitions < 1:
        raise ScoringError(f"partitions must be >= 1, not {partitions}")
    key = quote_ident(ENTITY_KEY)
    rows = int(warehouse.scalar(f"select count(*) from {features_table}") or 0)
    if rows == 0:
        raise ScoringError(f"{features_table} has no rows to score")
    nulls = int(warehouse.scalar(f"select count(*) from {features_table} where {key} is null"))
    if nulls:
        raise ScoringError(f"{features_table}.{ENTITY_KEY} has null values")
    step = -(-rows // partitions)  # ceil
    starts = warehouse.query_arrow(
        f"select {key} from (select {key}, row_number() over (order by {key}) as rn "
        f"from {features_table}) as ranked where rn > 1 and mod(rn - 1, ?) = 0 order by {key}",
        [step],
    ).column(ENTITY_KEY)
    edges: list[str | None] = [None, *(str(v) for v in starts.to_pylist()), None]
    return tuple(itertools.pairwise(edges))


def plan_partitioned_scoring(
    warehouse: Warehouse,
    registry: ModelRegistry,
    partitions: int,
    *,
    model_name: str = CHURN_MODEL_NAME,
    features_table: str = CUSTOMER_FEATURES_TABLE,
) -> ScoringPlan:
    """Pin the production version and split the customers into ``partitions`` ranges."""
    try:
        version = registry.get(model_name, "production").version
    except ModelNotFoundError as exc:
        raise ScoringError(
            f"no production version of model {model_name!r} to score with: train and promote "
            f"one first (retailml train). {exc}"
        ) from exc
    if not warehouse.table_exists(features_table):
        raise ScoringError(f"{features_table} does not exist (build the dbt marts first)")
    missing = [c for c in _INPUT_TYPES if c not in warehouse.columns(features_table)]
    if missing:
        raise ScoringError(f"{features_table} lacks columns {missing}")
    return ScoringPlan(
        model_name=model_name,
        model_version=version,
        scored_at=datetime.now(UTC),
        features_table=features_table,
        run_id=uuid.uuid4().hex[:12],
        bounds=partition_bounds(warehouse, partitions, features_table=features_table),
    )


def _range_sql(plan: ScoringPlan, index: int) -> tuple[str, list[str]]:
    lo, hi = plan.bounds[index]
    key = quote_ident(ENTITY_KEY)
    where, params = [f"{key} is not null"], []
    if lo is not None:
        where.append(f"{key} >= ?")
        params.append(lo)
    if hi is not None:
        where.append(f"{key} < ?")
        params.append(hi)
    sql = select_sql(plan.features_table, [ENTITY_KEY, AS_OF, *FEATURES])
    return f"{sql} where {' and '.join(where)}", params


def score_partition(
    warehouse: Warehouse,
    registry: ModelRegistry,
    plan: ScoringPlan,
    index: int,
    *,
    batch_rows: int = 50_000,
    spool_dir: Path | None = None,
) -> PartitionResult:
    """Score partition ``index`` of ``plan`` into its staging table (replacing it)."""
    loaded = registry.load(plan.model_name, plan.model_version)  # sha256-verified, pinned
    sql, params = _range_sql(plan, index)
    table = plan.staging_table(index)
    rows = 0
    as_of_dates: set[date] = set()
    with tempfile.TemporaryDirectory(prefix="retailml-scores-", dir=spool_dir) as tmp:
        spool = Path(tmp) / "scores.arrows"
        with pa.OSFile(str(spool), "wb") as sink, pa.ipc.new_stream(sink, SCORES_SCHEMA) as out:
            for batch in warehouse.iter_arrow(sql, params, batch_rows=batch_rows):
                if batch.num_rows == 0:
                    continue
                scored = score_batch(
                    loaded.model,
                    batch,
                    model_name=plan.model_name,
                    model_version=plan.model_version,
                    scored_at=plan.scored_at,
                )
                out.write_batch(scored)
                rows += scored.num_rows
                as_of_dates.update(d for d in pc.unique(scored.column(AS_OF)).to_pylist() if d)
        warehouse.create_table(table, SCORES_SCHEMA)
        with warehouse.transaction(), pa.OSFile(str(spool), "rb") as source:
            warehouse.execute(f"delete from {table}")
            warehouse.append_arrow(table, pa.ipc.open_stream(source))
    worker = f"{socket.gethostname()} pid {os.getpid()} {threading.current_thread().name}"
    return PartitionResult(index, rows, tuple(sorted(as_of_dates)), worker)


def finish_partitioned_scoring(
    warehouse: Warehouse,
    plan: ScoringPlan,
    results: list[PartitionResult],
    *,
    seconds: float = 0.0,
    progress: Progress | None = None,
) -> ScoreResult:
    """Swap every partition's staging table into ``mlops.churn_scores`` in one transaction
    (replacing the model's scores of the same as_of_date(s)), then drop the staging tables."""
    done = sorted(r.index for r in results)
    if done != list(range(len(plan.bounds))):
        raise ScoringError(
            f"partitioned scoring {plan.run_id}: partitions {done} finished, expected "
            f"0..{len(plan.bounds) - 1}; the previous scores are left in place"
        )
    rows = sum(r.rows for r in results)
    if rows == 0:
        raise ScoringError(f"{plan.features_table} has no rows to score")
    as_of_dates = sorted({d for r in results for d in r.as_of_dates})
    warehouse.create_table(SCORES_TABLE, SCORES_SCHEMA)
    columns = ", ".join(quote_ident(c) for c in SCORES_SCHEMA.names)
    placeholders = ", ".join("?" * len(as_of_dates))
    with warehouse.transaction():
        warehouse.execute(
            f"delete from {SCORES_TABLE} where model_name = ? and {AS_OF} in ({placeholders})",
            [plan.model_name, *as_of_dates],
        )
        for index in range(len(plan.bounds)):
            warehouse.execute(
                f"insert into {SCORES_TABLE} ({columns}) "
                f"select {columns} from {plan.staging_table(index)}"
            )
    drop_partition_staging(warehouse, plan)
    report(
        progress,
        f"wrote {rows} scores of {plan.model_name} v{plan.model_version} from "
        f"{len(plan.bounds)} partitions to {SCORES_TABLE}",
    )
    return ScoreResult(
        model_name=plan.model_name,
        model_version=plan.model_version,
        rows=rows,
        as_of_dates=as_of_dates,
        scored_at=plan.scored_at,
        seconds=seconds,
    )


def drop_partition_staging(warehouse: Warehouse, plan: ScoringPlan) -> None:
    """Drop the plan's staging tables (after the swap, or when the run is abandoned)."""
    for index in range(len(plan.bounds)):
        warehouse.execute(f"drop table if exists {plan.staging_table(index)}")
