"""Model drift: the realized performance of past churn scores, once their labels matured.

A score of ``mlops.churn_scores`` predicts churn in ``[as_of_date, as_of_date + horizon)``
(the label of ``marts.ml_churn_training``: no product order in the ``churn_horizon_days``
from the cutoff). Its label is known once that window is over; the mart holds it for every
cutoff date whose window is fully observed (the Mondays up to the last loaded day minus the
horizon). :func:`check_performance` joins the scores to those labels *in the warehouse*
(``labelled_scores_sql``: scores.customer_id = labels.customer_id and scores.as_of_date =
labels.cutoff_date, matured scores only), pulls the narrow result, groups it by ISO week of
the score's as_of_date and model version, and computes per group the count, churn rate,
mean score, calibration gap, ROC AUC, Brier score, log loss, and precision/recall at the
version's threshold. Each week is compared with the version's held-out metrics from the
registry; a week of at least ``min_count`` rows whose AUC is more than ``auc_drop`` below the
training AUC is degraded. One row per (week, version, metric) is appended to
``mlops.model_performance``.

Only scores whose as_of_date is a cutoff date of the mart get a label (the mart is built on
Mondays), so with daily scoring each ISO week is evaluated on its Monday's scores. The other
matured scores are counted in the report (``unlabelled_rows``) rather than labelled by a
second definition of churn here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from ..features.spec import CHURN_TRAINING_TABLE, CUTOFF, ENTITY_KEY, LABEL
from ..registry import ModelNotFoundError, ModelRegistry
from ..training.churn import CHURN_MODEL_NAME
from ..training.common import TrainingDataError, cast_table
from ..training.scoring import AS_OF, SCORES_TABLE
from ..warehouse.base import Warehouse

PERFORMANCE_TABLE = "mlops.model_performance"
AUC_DROP = 0.05
MIN_COUNT = 200
SCORE = "churn_probability"
VERSION = "model_version"
WEEK = "week_start"

# The metrics of a week, in the order they are written and shown.
METRICS: tuple[str, ...] = (
    "n",
    "positives",
    "churn_rate",
    "mean_score",
    "calibration_gap",
    "roc_auc",
    "brier",
    "log_loss",
    "precision",
    "recall",
)
SCORE_COLUMNS = (ENTITY_KEY, AS_OF, SCORE, "model_name", VERSION)
LABEL_COLUMNS = (ENTITY_KEY, CUTOFF, LABEL)
# The columns of the labelled scores, as the Python side works with them.
LABELLED_TYPES: dict[str, pa.DataType] = {
    AS_OF: pa.date32(),
    VERSION: pa.int64(),
    SCORE: pa.float64(),
    LABEL: pa.bool_(),
}
PERFORMANCE_SCHEMA = pa.schema(
    [
        ("run_at", pa.timestamp("us", tz="UTC")),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("week_start", pa.date32()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("training_value", pa.float64()),
        ("threshold", pa.float64()),
        ("is_degraded", pa.bool_()),
    ]
)


class PerformanceError(RuntimeError):
    """The inputs are broken (missing columns, null or out-of-range values); the message
    says which. Nothing having matured yet is not an error (see the report's message)."""


# -- metrics (pure) ------------------------------------------------------------------------
def iso_week_start(dates: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The Monday starting each date's ISO week (``datetime64[D]``)."""
    days = np.asarray(pc.cast(dates, pa.date32()).to_numpy(zero_copy_only=False), "datetime64[D]")
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (ISO weekday 3)
    return days - weekday.astype("timedelta64[D]")


def realized_metrics(
    y: np.ndarray, score: np.ndarray, threshold: float | None
) -> dict[str, float | None]:
    """:data:`METRICS` of scores against realized labels (``None`` where undefined: AUC of a
    single class, precision/recall without a threshold, nothing predicted or nothing churned).
    """
    y = np.asarray(y, dtype=np.int64)
    score = np.asarray(score, dtype=float)
    if y.size == 0 or y.shape != score.shape:
        raise ValueError(f"need as many labels as scores, at least one: {y.shape} {score.shape}")
    n, positives = int(y.size), int(y.sum())
    churn_rate, mean_score = positives / n, float(score.mean())
    metrics: dict[str, float | None] = {
        "n": float(n),
        "positives": float(positives),
        "churn_rate": churn_rate,
        "mean_score": mean_score,
        "calibration_gap": mean_score - churn_rate,
        "roc_auc": float(roc_auc_score(y, score)) if 0 < positives < n else None,
        "brier": float(brier_score_loss(y, score, labels=[0, 1])),
        "log_loss": float(log_loss(y, score, labels=[0, 1])),
        "precision": None,
        "recall": None,
    }
    if threshold is not None:
        predicted = score >= threshold
        hits = int((predicted & (y == 1)).sum())
        metrics["precision"] = hits / int(predicted.sum()) if predicted.any() else None
        metrics["recall"] = hits / positives if positives else None
    return metrics


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def training_values(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """The training-time (held-out) counterpart of each of :data:`METRICS`, from a registry
    version's metrics (``None`` where training recorded none, e.g. log loss)."""
    holdout = metrics.get("holdout") or {}
    rows, rate = _number(holdout.get("rows")), _number(holdout.get("positive_rate"))
    calibration = [r for r in metrics.get("calibration") or [] if _number(r.get("rows"))]
    weight = sum(float(r["rows"]) for r in calibration)
    mean_score = (
        sum(float(r["rows"]) * float(r["mean_predicted"]) for r in calibration) / weight
        if weight
        else None
    )
    return {
        "n": rows,
        "positives": float(round(rows * rate)) if rows is not None and rate is not None else None,
        "churn_rate": rate,
        "mean_score": mean_score,
        "calibration_gap": mean_score - rate
        if mean_score is not None and rate is not None
        else None,
        "roc_auc": _number(metrics.get("roc_auc")),
        "brier": _number(metrics.get("brier")),
        "log_loss": _number(metrics.get("log_loss")),
        "precision": _number(metrics.get("precision")),
        "recall": _number(metrics.get("recall")),
    }


@dataclass(frozen=True)
class WeekPerformance:
    """Realized metrics of one model version's scores of one ISO week."""

    week_start: date
    model_version: int
    values: dict[str, float | None]  # realized, keyed by METRICS
    training: dict[str, float | None]  # the version's held-out values, keyed by METRICS
    classification_threshold: float | None
    auc_drop: float
    min_count: int
    is_degraded: bool

    @property
    def n(self) -> int:
        return int(self.values["n"] or 0)

    @property
    def roc_auc(self) -> float | None:
        return self.values["roc_auc"]

    @property
    def week(self) -> str:
        """The ISO week, e.g. ``2024-W10``."""
        year, week, _ = self.week_start.isocalendar()
        return f"{year}-W{week:02d}"

    @property
    def below_min_count(self) -> bool:
        return self.n < self.min_count


def is_degraded(
    auc: float | None, training_auc: float | None, n: int, *, auc_drop: float, min_count: int
) -> bool:
    """AUC more than ``auc_drop`` below training, on at least ``min_count`` rows."""
    if auc is None or training_auc is None or n < min_count:
        return False
    return training_auc - auc > auc_drop


def evaluate_weeks(
    rows: pa.Table,
    training: Mapping[int, Mapping[str, Any]],
    *,
    auc_drop: float = AUC_DROP,
    min_count: int = MIN_COUNT,
) -> list[WeekPerformance]:
    """One :class:`WeekPerformance` per (ISO week, model version) of labelled scores
    (:data:`LABELLED_TYPES` columns), sorted by week then version. ``training``: version ->
    registry metrics (a version missing from it gets no training values and never flags)."""
    rows = _cast(rows, LABELLED_TYPES, what="labelled scores")
    if rows.num_rows == 0:
        return []
    weeks = iso_week_start(rows.column(AS_OF)).astype(np.int64)
    versions = rows.column(VERSION).to_numpy()
    score = rows.column(SCORE).to_numpy()
    y = rows.column(LABEL).to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.lexsort((versions, weeks))
    keys = np.stack([weeks[order], versions[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, (np.diff(keys, axis=0) != 0).any(axis=1)])
    results = []
    for start, stop in zip(starts, [*starts[1:], len(order)], strict=True):
        part = order[start:stop]
        version = int(versions[part[0]])
        metrics = training.get(version) or {}
        threshold = _number(metrics.get("threshold"))
        values = realized_metrics(y[part], score[part], threshold)
        trained = training_values(metrics)
        degraded = is_degraded(
            values["roc_auc"], trained["roc_auc"], part.size, auc_drop=auc_drop, min_count=min_count
        )
        results.append(
            WeekPerformance(
                week_start=date(1970, 1, 1) + timedelta(days=int(weeks[part[0]])),
                model_version=version,
                values=values,
                training=trained,
                classification_threshold=threshold,
                auc_drop=auc_drop,
                min_count=min_count,
                is_degraded=degraded,
            )
        )
    return results


def _cast(table: pa.Table, types: Mapping[str, pa.DataType], *, what: str) -> pa.Table:
    try:
        result = cast_table(table, types, what=what)
    except TrainingDataError as exc:
        raise PerformanceError(str(exc)) from exc
    for name in types:
        nulls = result.column(name).null_count
        if nulls:
            raise PerformanceError(f"{what}: column {name} has {nulls} null values")
    if SCORE in types:
        scores = result.column(SCORE).to_numpy()
        valid = (scores >= 0.0) & (scores <= 1.0)  # NaN is invalid too
        if not valid.all():
            raise PerformanceError(
                f"{what}: {SCORE} must be probabilities in [0, 1]; {int((~valid).sum())} are "
                f"not (e.g. {scores[~valid][0]!r})"
            )
    return result


# -- the report ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PerformanceReport:
    run_at: datetime
    model_name: str
    horizon_days: int
    as_of: date | None  # the date the labels are judged from (default: latest as_of_date)
    matured_through: date | None  # scores up to this as_of_date have matured labels
    scored_rows: int
    matured_rows: int
    labelled_rows: int
    weeks: list[WeekPerformance]
    auc_drop: float
    min_count: int
    message: str | None = None  # why nothing was evaluated, when nothing was
    notes: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> list[WeekPerformance]:
        return [w for w in self.weeks if w.is_degraded]

    @property
    def unlabelled_rows(self) -> int:
        """Matured scores without a label (as_of_date not a cutoff of the labels mart, or a
        customer the mart does not hold)."""
        return self.matured_rows - self.labelled_rows

    @property
    def needs_retraining(self) -> bool:
        """The retraining trigger the orchestration reads: some week's AUC decayed."""
        return bool(self.degraded)

    @property
    def reasons(self) -> list[str]:
        """Why retraining is needed: one line per degraded (week, version)."""
        return [
            f"{self.model_name} v{w.model_version} week {w.week} ({w.week_start}): roc_auc "
            f"{w.roc_auc:.3f} is {w.training['roc_auc'] - w.roc_auc:.3f} below training "
            f"{w.training['roc_auc']:.3f} (> {w.auc_drop:g}, n={w.n})"
            for w in self.degraded
            if w.roc_auc is not None and w.training["roc_auc"] is not None
        ]

    def summary(self) -> str:
        if self.message:
            return f"{self.model_name} realized performance: {self.message}"
        versions = sorted({w.model_version for w in self.weeks})
        degraded = [f"v{w.model_version} {w.week}" for w in self.degraded]
        small = sum(w.below_min_count for w in self.weeks)
        return (
            f"{self.model_name} realized performance of {self.labelled_rows} labelled scores "
            f"(as_of_date <= {self.matured_through}, horizon {self.horizon_days}d), "
            f"{len(self.weeks)} week-versions of v{', v'.join(map(str, versions))}"
            + (f" ({small} under {self.min_count} rows)" if small else "")
            + f": {len(degraded)} degraded"
            + (f" ({', '.join(degraded)})" if degraded else "")
            + ("; RETRAIN" if degraded else "; no decay")
        )

    def markdown(self) -> str:
        """The summary and a table of the weeks (for a Prefect markdown artifact)."""
        head = f"## Model performance: {self.summary()}\n\n"
        notes = "".join(f"- {note}\n" for note in self.notes) + ("\n" if self.notes else "")
        if not self.weeks:
            return head + notes
        rows = "\n".join(
            f"| {w.week_start} | v{w.model_version} | {w.n} | {_fmt(w.values['churn_rate'])} | "
            f"{_fmt(w.values['mean_score'])} | {_fmt(w.values['calibration_gap'])} | "
            f"{_fmt(w.roc_auc)} | {_fmt(w.training['roc_auc'])} | {_fmt(w.values['brier'])} | "
            f"{_fmt(w.values['log_loss'])} | {_fmt(w.values['precision'])} | "
            f"{_fmt(w.values['recall'])} | "
            + ("yes" if w.is_degraded else f"no (n < {w.min_count})" if w.below_min_count else "no")
            + " |"
            for w in self.weeks
        )
        return (
            head
            + notes
            + "| week | version | n | churn rate | mean score | calibration gap | roc_auc | "
            "training roc_auc | brier | log loss | precision | recall | degraded |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"{rows}\n"
        )


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def performance_table(report: PerformanceReport) -> pa.Table:
    """The rows :func:`check_performance` appends: one per (week, version, metric)."""
    rows = []
    for week in report.weeks:
        for metric in METRICS:
            is_auc = metric == "roc_auc"
            rows.append(
                {
                    "run_at": report.run_at,
                    "model_name": report.model_name,
                    "model_version": week.model_version,
                    "week_start": week.week_start,
                    "metric": metric,
                    "value": week.values[metric],
                    "training_value": week.training[metric],
                    "threshold": week.auc_drop if is_auc else None,
                    "is_degraded": week.is_degraded if is_auc else False,
                }
            )
    return pa.Table.from_pylist(rows, schema=PERFORMANCE_SCHEMA)


# -- the warehouse side --------------------------------------------------------------------
def scoring_days_sql(scores_table: str = SCORES_TABLE, *, since: bool = False) -> str:
    """``(as_of_date, n)``: scores of a model (parameter 1) per scoring day, on or after
    parameter 2 when ``since``."""
    return (
        f"select {AS_OF}, count(*) as n from {scores_table} where model_name = ?"
        + (f" and {AS_OF} >= ?" if since else "")
        + f" group by {AS_OF}"
    )


def labelled_scores_sql(
    scores_table: str = SCORES_TABLE,
    labels_table: str = CHURN_TRAINING_TABLE,
    *,
    since: bool = False,
) -> str:
    """``(as_of_date, model_version, churn_probability, is_churned)``: the matured scores of
    a model joined to their realized labels. Parameters: model name, the last matured
    as_of_date, and the first as_of_date when ``since``."""
    return (
        f"select scores.{AS_OF}, scores.{VERSION}, scores.{SCORE}, labels.{LABEL} "
        f"from {scores_table} as scores "
        f"inner join {labels_table} as labels "
        f"on scores.{ENTITY_KEY} = labels.{ENTITY_KEY} and scores.{AS_OF} = labels.{CUTOFF} "
        f"where scores.model_name = ? and scores.{AS_OF} <= ?"
        + (f" and scores.{AS_OF} >= ?" if since else "")
    )


def _require_columns(warehouse: Warehouse, table: str, columns: Sequence[str]) -> None:
    present = warehouse.columns(table)
    missing = [c for c in columns if c not in present]
    if missing:
        raise PerformanceError(f"{table} lacks columns {missing} (has {list(present)})")


def _training_metrics(
    registry: ModelRegistry, model_name: str, versions: Sequence[int]
) -> tuple[dict[int, dict[str, Any]], list[str]]:
    metrics, notes = {}, []
    for version in versions:
        try:
            metrics[version] = registry.get(model_name, version).metrics
        except ModelNotFoundError:
            notes.append(
                f"{model_name} v{version} is not in the registry: no training values, "
                "its weeks are reported but never flagged"
            )
    return metrics, notes


def check_performance(
    warehouse: Warehouse,
    registry: ModelRegistry,
    *,
    horizon_days: int,
    model_name: str = CHURN_MODEL_NAME,
    as_of: date | None = None,
    since: date | None = None,
    auc_drop: float = AUC_DROP,
    min_count: int = MIN_COUNT,
    scores_table: str = SCORES_TABLE,
    labels_table: str = CHURN_TRAINING_TABLE,
    run_at: datetime | None = None,
) -> PerformanceReport:
    """Realized performance per ISO week and version of the scores whose labels matured;
    append it to ``mlops.model_performance`` (one transaction).

    ``horizon_days``: the churn horizon (``Settings.churn_horizon_days``, dbt's
    ``churn_horizon_days``). A score has matured when ``as_of_date + horizon_days <= as_of``;
    ``as_of`` defaults to the latest scored as_of_date (data time, not the wall clock), and
    only scores with a label row in ``labels_table`` are evaluated. ``since``: ignore older
    scores. The labelled rows (four narrow columns: one per customer per labelled scoring
    day) are pulled with ``query_arrow``, since ROC AUC needs every row's score.

    Nothing to evaluate (no scores table, nothing matured or labelled yet) is a report with
    a ``message``; missing columns and invalid values raise :class:`PerformanceError`.
    """
    run_at = run_at or datetime.now(UTC)

    def empty(
        message: str,
        *,
        as_of: date | None = as_of,
        matured: date | None = None,
        scored: int = 0,
        matured_rows: int = 0,
    ) -> PerformanceReport:
        return PerformanceReport(
            run_at=run_at, model_name=model_name, horizon_days=horizon_days, as_of=as_of,
            matured_through=matured, scored_rows=scored, matured_rows=matured_rows,
            labelled_rows=0, weeks=[], auc_drop=auc_drop, min_count=min_count, message=message,
        )  # fmt: skip

    if horizon_days < 1:
        raise PerformanceError(f"horizon_days must be >= 1, not {horizon_days}")
    if not warehouse.table_exists(scores_table):
        return empty(f"{scores_table} does not exist: nothing has been scored yet")
    _require_columns(warehouse, scores_table, SCORE_COLUMNS)
    since_param = [] if since is None else [since]
    days = _cast(
        warehouse.query_arrow(
            scoring_days_sql(scores_table, since=since is not None), [model_name, *since_param]
        ),
        {AS_OF: pa.date32(), "n": pa.int64()},
        what=f"{scores_table} scoring days",
    ).to_pylist()
    scored = sum(d["n"] for d in days)
    if not scored:
        return empty(f"{scores_table} holds no scores of {model_name}")
    as_of = as_of or max(d[AS_OF] for d in days)
    matured = as_of - timedelta(days=horizon_days)
    matured_rows = sum(d["n"] for d in days if d[AS_OF] <= matured)
    counts: dict[str, Any] = {
        "as_of": as_of, "matured": matured, "scored": scored, "matured_rows": matured_rows
    }  # fmt: skip
    if not matured_rows:
        first = min(d[AS_OF] for d in days)
        return empty(
            f"no labels have matured yet: the {scored} scores run from {first}, and a score's "
            f"label needs {horizon_days} days (as_of_date <= {matured} as of {as_of})",
            **counts,
        )
    if not warehouse.table_exists(labels_table):
        return empty(f"{labels_table} does not exist: build the dbt marts first", **counts)
    _require_columns(warehouse, labels_table, LABEL_COLUMNS)

    sql = labelled_scores_sql(scores_table, labels_table, since=since is not None)
    labelled = warehouse.query_arrow(sql, [model_name, matured, *since_param])
    if labelled.num_rows == 0:
        return empty(
            f"{matured_rows} scores have matured (as_of_date <= {matured}) but none has a "
            f"label in {labels_table} (labels exist only for its cutoff dates)",
            **counts,
        )
    labelled = _cast(labelled, LABELLED_TYPES, what=f"{scores_table} joined to {labels_table}")
    versions = sorted(set(labelled.column(VERSION).to_pylist()))
    training, notes = _training_metrics(registry, model_name, versions)
    report = PerformanceReport(
        run_at=run_at,
        model_name=model_name,
        horizon_days=horizon_days,
        as_of=as_of,
        matured_through=matured,
        scored_rows=scored,
        matured_rows=matured_rows,
        labelled_rows=labelled.num_rows,
        weeks=evaluate_weeks(labelled, training, auc_drop=auc_drop, min_count=min_count),
        auc_drop=auc_drop,
        min_count=min_count,
        notes=notes,
    )
    write_performance(warehouse, report)
    return report


def write_performance(warehouse: Warehouse, report: PerformanceReport) -> int:
    """Append the report's rows to ``mlops.model_performance`` (earlier runs stay)."""
    warehouse.create_table(PERFORMANCE_TABLE, PERFORMANCE_SCHEMA)
    with warehouse.transaction():
        return warehouse.append_arrow(PERFORMANCE_TABLE, performance_table(report))
