"""Churn model: a scikit-learn ``Pipeline(ColumnTransformer, estimator)`` on
``marts.ml_churn_training``, selected by time-ordered folds, gated by the registry.

Splits are by cutoff date, never shuffled. The latest cutoffs are the held-out test set.
Training rows must be at least ``horizon_days`` older than the first held-out cutoff: a
row's label looks ``horizon_days`` past its cutoff, so a newer row would have seen the
held-out period (the same gap applies to the cross-validation folds). The registered model
is the one evaluated on the held-out set (fit on the training rows only), so its recorded
metrics describe exactly the artifact the registry serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import TimeSeriesSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from ..features.spec import (
    CATEGORICAL_FEATURES,
    CHURN_TRAINING_TABLE,
    CUTOFF,
    ENTITY_KEY,
    LABEL,
    NUMERIC_FEATURES,
)
from ..monitoring.drift import build_reference, write_drift_reference
from ..registry import ModelNotFoundError, ModelRegistry
from ..warehouse.base import Warehouse
from .common import (
    FEATURE_TYPES,
    Progress,
    TrainingDataError,
    TrainResult,
    feature_frame,
    read_table,
    report,
    table_sha256,
)

CHURN_MODEL_NAME = "churn"
PROMOTION_METRIC = "roc_auc"
CHURN_COLUMNS: dict[str, pa.DataType] = {
    ENTITY_KEY: pa.string(),
    CUTOFF: pa.date32(),
    **FEATURE_TYPES,
    LABEL: pa.bool_(),
}
SORT_KEYS = (CUTOFF, ENTITY_KEY)
MISSING_CATEGORY = "__missing__"
FEATURE_REFERENCE_KEY = "feature_reference"


@dataclass(frozen=True)
class Candidate:
    name: str
    params: dict[str, Any]
    make: Callable[[], BaseEstimator]


def candidate_grid(random_state: int) -> list[Candidate]:
    """The small model-selection grid (kept small: a few seconds on 10^5 rows)."""

    def logistic(c: float) -> Callable[[], BaseEstimator]:
        return lambda: LogisticRegression(C=c, max_iter=1_000)

    def hgb(leaves: int, iterations: int, rate: float) -> Callable[[], BaseEstimator]:
        return lambda: HistGradientBoostingClassifier(
            max_leaf_nodes=leaves,
            max_iter=iterations,
            learning_rate=rate,
            early_stopping=False,
            random_state=random_state,
        )

    return [
        Candidate("logistic_c1", {"C": 1.0}, logistic(1.0)),
        Candidate("logistic_c0.1", {"C": 0.1}, logistic(0.1)),
        Candidate(
            "hgb_15", {"max_leaf_nodes": 15, "max_iter": 100, "learning_rate": 0.1}, hgb(15, 100, 0.1)
        ),
        Candidate(
            "hgb_31", {"max_leaf_nodes": 31, "max_iter": 150, "learning_rate": 0.05}, hgb(31, 150, 0.05)
        ),
    ]  # fmt: skip


def build_pipeline(estimator: BaseEstimator) -> Pipeline:
    """Preprocessing + estimator as one fitted object (trained, stored and served as one)."""
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    # Missing categoricals arrive as NaN (Arrow -> pandas) or None (JSON -> object column):
    # two imputers map both to one "__missing__" category, so serving cannot skew.
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            (
                "impute_none",
                SimpleImputer(
                    missing_values=None, strategy="constant", fill_value=MISSING_CATEGORY
                ),
            ),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    preprocess = ColumnTransformer(
        [
            ("numeric", numeric, list(NUMERIC_FEATURES)),
            ("categorical", categorical, list(CATEGORICAL_FEATURES)),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


# -- time-ordered splits ---------------------------------------------------------------------
def holdout_split(
    cutoffs: np.ndarray, *, test_fraction: float, gap_days: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test): the latest ``test_fraction`` of cutoff dates are test;
    train keeps cutoffs at least ``gap_days`` before the first test cutoff."""
    unique = np.unique(cutoffs)
    if unique.size < 2:
        raise TrainingDataError(
            f"{CHURN_TRAINING_TABLE} has {unique.size} distinct cutoff date(s); a time-ordered "
            "split needs at least 2"
        )
    n_test = min(max(1, round(unique.size * test_fraction)), unique.size - 1)
    test_cutoffs = unique[-n_test:]
    last_train = test_cutoffs[0] - np.timedelta64(gap_days, "D")
    test = np.isin(cutoffs, test_cutoffs)
    train = cutoffs <= last_train
    if not train.any():
        raise TrainingDataError(
            f"no cutoff date of {CHURN_TRAINING_TABLE} is at least {gap_days} days (the churn "
            f"horizon) before the held-out cutoffs {[str(c) for c in test_cutoffs]}: the "
            f"history ({unique[0]} .. {unique[-1]}) is too short to train without leakage"
        )
    return train, test


def cutoff_folds(
    cutoffs: np.ndarray, *, n_splits: int, gap_days: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Expanding-window folds over cutoff dates (``TimeSeriesSplit`` on the distinct dates),
    each training part ending ``gap_days`` before its validation part. Row indices."""
    unique = np.unique(cutoffs)
    if unique.size < 2:
        return []
    folds = []
    splitter = TimeSeriesSplit(n_splits=min(n_splits, unique.size - 1))
    for train_u, val_u in splitter.split(unique):
        val_dates = unique[val_u]
        train_dates = unique[train_u]
        train_dates = train_dates[train_dates <= val_dates[0] - np.timedelta64(gap_days, "D")]
        if train_dates.size == 0:
            continue
        folds.append(
            (np.flatnonzero(np.isin(cutoffs, train_dates)), np.flatnonzero(np.isin(cutoffs, val_dates)))
        )  # fmt: skip
    return folds


# -- metrics ----------------------------------------------------------------------------
def best_f1_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The probability threshold maximising F1 on (y, score)."""
    precision, recall, thresholds = precision_recall_curve(y, score)
    if thresholds.size == 0:
        return 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def classification_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = score >= threshold
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
        "brier": float(brier_score_loss(y, score)),
        "threshold": float(threshold),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
    }


def recency_baseline_auc(recency_days: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC of scoring by recency alone (missing recency ranks as the most churned)."""
    recency = np.asarray(recency_days, dtype=float)
    fill = np.nanmax(recency) + 1 if np.isfinite(recency).any() else 0.0
    return float(roc_auc_score(y, np.where(np.isnan(recency), fill, recency)))


def positive_scores(model: Any, frame: pd.DataFrame) -> np.ndarray:
    """P(churn) from a fitted classifier (the column of class 1 / True)."""
    proba = model.predict_proba(frame)
    classes = list(getattr(model, "classes_", [0, 1]))
    return proba[:, classes.index(1) if 1 in classes else -1]


# -- validation ---------------------------------------------------------------------------
def validate_training_data(data: pa.Table, *, min_rows: int) -> None:
    """Raise :class:`TrainingDataError` naming what makes ``data`` unusable."""
    table = CHURN_TRAINING_TABLE
    if data.num_rows == 0:
        raise TrainingDataError(f"{table} has no rows")
    if data.num_rows < min_rows:
        raise TrainingDataError(
            f"{table} has {data.num_rows} rows; at least {min_rows} are needed to train"
        )
    for column in (ENTITY_KEY, CUTOFF, LABEL):
        nulls = data.column(column).null_count
        if nulls:
            raise TrainingDataError(f"{table}.{column} has {nulls} null values")
    positives = int(pc.sum(data.column(LABEL).cast(pa.int64())).as_py() or 0)
    if positives in (0, data.num_rows):
        value = "true" if positives else "false"
        raise TrainingDataError(
            f"{table}.{LABEL} is {value} for all {data.num_rows} rows: a classifier needs both "
            "classes"
        )


def _require_both_classes(y: np.ndarray, part: str, cutoffs: Sequence[Any]) -> None:
    if np.unique(y).size < 2:
        raise TrainingDataError(
            f"the {part} rows ({len(y)} rows, cutoffs {sorted({str(c) for c in cutoffs})}) "
            f"have a single {LABEL} class ({bool(y[0]) if len(y) else None})"
        )


# -- training -----------------------------------------------------------------------------
def train_churn(
    warehouse: Warehouse,
    registry: ModelRegistry,
    *,
    horizon_days: int,
    random_state: int = 0,
    progress: Progress | None = None,
    test_fraction: float = 0.2,
    cv_folds: int = 3,
    min_rows: int = 200,
    margin: float = 0.0,
    manifest_sha256: str | None = None,
    model_name: str = CHURN_MODEL_NAME,
    n_threads: int | None = 1,
) -> TrainResult:
    """Select, fit, evaluate, register (candidate) and promote (on ROC AUC) a churn model.

    Raises :class:`TrainingDataError` (nothing registered) when the mart cannot make a model.
    ``n_threads`` bounds the OpenMP/BLAS threads of the fits (``None``: library default);
    one thread is the fastest on a small shared machine (no spinning threads).
    """
    with threadpool_limits(limits=n_threads):
        return _train_churn(
            warehouse,
            registry,
            horizon_days=horizon_days,
            random_state=random_state,
            progress=progress,
            test_fraction=test_fraction,
            cv_folds=cv_folds,
            min_rows=min_rows,
            margin=margin,
            manifest_sha256=manifest_sha256,
            model_name=model_name,
        )


def _train_churn(
    warehouse: Warehouse,
    registry: ModelRegistry,
    *,
    horizon_days: int,
    random_state: int,
    progress: Progress | None,
    test_fraction: float,
    cv_folds: int,
    min_rows: int,
    margin: float,
    manifest_sha256: str | None,
    model_name: str,
) -> TrainResult:
    started = time.perf_counter()
    report(progress, f"reading {CHURN_TRAINING_TABLE}")
    sql, data = read_table(warehouse, CHURN_TRAINING_TABLE, CHURN_COLUMNS, what="churn training")
    validate_training_data(data, min_rows=min_rows)
    data = data.sort_by([(k, "ascending") for k in SORT_KEYS])
    content_sha256 = table_sha256(data, SORT_KEYS)

    cutoffs = data.column(CUTOFF).to_numpy().astype("datetime64[D]")
    y_all = data.column(LABEL).to_numpy(zero_copy_only=False).astype(np.int64)
    train_mask, test_mask = holdout_split(
        cutoffs, test_fraction=test_fraction, gap_days=horizon_days
    )
    _require_both_classes(y_all[train_mask], "training", cutoffs[train_mask])
    _require_both_classes(y_all[test_mask], "held-out", cutoffs[test_mask])

    frame = feature_frame(data)
    x_train, y_train = frame[train_mask].reset_index(drop=True), y_all[train_mask]
    x_test, y_test = frame[test_mask].reset_index(drop=True), y_all[test_mask]
    train_cutoffs = cutoffs[train_mask]
    report(progress, f"{x_train.shape[0]} training rows, {x_test.shape[0]} held-out rows")

    # -- model selection over time-ordered folds of the training cutoffs
    folds = [
        (tr, va)
        for tr, va in cutoff_folds(train_cutoffs, n_splits=cv_folds, gap_days=horizon_days)
        if np.unique(y_train[tr]).size == 2 and np.unique(y_train[va]).size == 2
    ]
    candidates = candidate_grid(random_state)
    selection: list[dict[str, Any]] = []
    out_of_fold: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for candidate in candidates:
        aucs, ys, scores = [], [], []
        for tr, va in folds:
            model = build_pipeline(candidate.make()).fit(x_train.iloc[tr], y_train[tr])
            score = positive_scores(model, x_train.iloc[va])
            aucs.append(float(roc_auc_score(y_train[va], score)))
            ys.append(y_train[va])
            scores.append(score)
        mean_auc = float(np.mean(aucs)) if aucs else None
        selection.append(
            {"name": candidate.name, "params": candidate.params, "cv_roc_auc": mean_auc,
             "fold_roc_auc": aucs}
        )  # fmt: skip
        if ys:
            out_of_fold[candidate.name] = (np.concatenate(ys), np.concatenate(scores))
        report(progress, f"candidate {candidate.name}: cv roc_auc {mean_auc}")
    if folds:
        best = max(
            candidates, key=lambda c: next(s["cv_roc_auc"] for s in selection if s["name"] == c.name)
        )  # fmt: skip
        threshold = best_f1_threshold(*out_of_fold[best.name])
    else:
        best, threshold = candidates[0], 0.5
    report(progress, f"selected {best.name}; fitting on all training rows")

    # -- final fit on the training rows, evaluation on the held-out rows
    pipeline = build_pipeline(best.make()).fit(x_train, y_train)
    test_scores = positive_scores(pipeline, x_test)
    metrics: dict[str, Any] = classification_metrics(y_test, test_scores, threshold)
    metrics["baseline_recency_roc_auc"] = recency_baseline_auc(
        x_test["recency_days"].to_numpy(), y_test
    )
    test_table = data.filter(pa.array(test_mask))
    metrics["holdout"] = {
        "sha256": table_sha256(test_table, SORT_KEYS),
        "rows": int(test_mask.sum()),
        "positive_rate": float(y_test.mean()),
        "cutoff_dates": sorted({str(c) for c in cutoffs[test_mask]}),
    }
    metrics["train"] = {
        "rows": int(train_mask.sum()),
        "positive_rate": float(y_train.mean()),
        "first_cutoff": str(train_cutoffs.min()),
        "last_cutoff": str(train_cutoffs.max()),
    }
    metrics["selection"] = {
        "folds": len(folds),
        "candidates": selection,
        "selected": best.name,
        "note": None if folds else "no usable time-ordered folds: first candidate used",
    }
    metrics["champion_evaluations"] = _evaluate_champion(registry, model_name, x_test, y_test)

    params = {
        "estimator": best.name,
        "estimator_params": best.params,
        "horizon_days": horizon_days,
        "random_state": random_state,
        "test_fraction": test_fraction,
        "cv_folds": cv_folds,
        "numeric_features": list(NUMERIC_FEATURES),
        "categorical_features": list(CATEGORICAL_FEATURES),
        "grid": [c.name for c in candidates],
    }
    fingerprint = {
        "table": CHURN_TRAINING_TABLE,
        "query": sql,
        "row_count": data.num_rows,
        "content_sha256": content_sha256,
        "dbt_manifest_sha256": manifest_sha256,
        "first_cutoff": str(cutoffs.min()),
        "last_cutoff": str(cutoffs.max()),
        # Typical training values (serving's explanations compare against these).
        FEATURE_REFERENCE_KEY: feature_reference(x_train),
    }

    report(progress, f"registering {model_name} (held-out roc_auc {metrics['roc_auc']:.4f})")
    version = registry.register(
        model_name, pipeline, kind="sklearn", params=params, metrics=metrics,
        fingerprint=fingerprint,
    )  # fmt: skip
    # Drift reference: the latest snapshot of the mart (comparable to the scored snapshot).
    latest = data.filter(pc.equal(data.column(CUTOFF), pa.scalar(_as_date(cutoffs.max()))))
    write_drift_reference(warehouse, model_name, version.version, build_reference(latest))
    decision = registry.promote(
        model_name, version.version, metric=PROMOTION_METRIC, higher_is_better=True, margin=margin
    )
    report(progress, decision.reason)
    return TrainResult(
        model_name=model_name,
        version=registry.get(model_name, version.version),
        promotion=decision,
        metrics=metrics,
        rows=data.num_rows,
        seconds=time.perf_counter() - started,
    )


def feature_reference(frame: pd.DataFrame) -> dict[str, Any]:
    """Median of each numeric feature and most frequent value of each categorical one."""
    reference: dict[str, Any] = {}
    for name in NUMERIC_FEATURES:
        median = frame[name].median()
        reference[name] = None if pd.isna(median) else float(median)
    for name in CATEGORICAL_FEATURES:
        counts = frame[name].dropna().value_counts()
        reference[name] = None if counts.empty else str(counts.index[0])
    return reference


def _evaluate_champion(
    registry: ModelRegistry, model_name: str, x_test: pd.DataFrame, y_test: np.ndarray
) -> dict[str, dict[str, float]]:
    """The production model's metrics on this run's held-out rows (for the promotion gate)."""
    try:
        champion = registry.load(model_name, "production")
    except ModelNotFoundError:
        return {}
    threshold = champion.version.metrics.get("threshold") or 0.5
    scores = positive_scores(champion.model, x_test)
    return {str(champion.version.version): classification_metrics(y_test, scores, threshold)}


def _as_date(value: np.datetime64) -> date:
    return date(1970, 1, 1) + timedelta(days=int(value.astype("datetime64[D]").astype(np.int64)))
