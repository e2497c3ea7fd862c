"""Churn model: a scikit-learn ``Pipeline(ColumnTransformer, estimator)`` on
``marts.ml_churn_training``, chosen by a randomized search over logistic regression, random
forest and histogram gradient boosting on time-ordered folds, gated by the registry.

Splits are by cutoff date, never shuffled. The latest cutoffs are the held-out test set.
Training rows must be at least ``horizon_days`` older than the first held-out cutoff: a
row's label looks ``horizon_days`` past its cutoff, so a newer row would have seen the
held-out period (the same gap applies to the cross-validation folds). The registered model
is the one evaluated on the held-out set (fit on the training rows only), so its recorded
metrics describe exactly the artifact the registry serves: ROC and PR AUC, precision, recall
and F1 at the threshold chosen on the out-of-fold predictions, Brier score and a calibration
table, the recency rule next to them, permutation importance, and the same metrics sliced by
country, signup channel and loyalty tier (:mod:`.fairness`). :func:`fit_churn` is the pure
part; :func:`train_churn` reads the mart, registers, records lineage and gates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import loguniform
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
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
from sklearn.model_selection import ParameterSampler, TimeSeriesSplit
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
from ..monitoring.drift import DEFAULT_BINS, build_reference, write_drift_reference
from ..registry import ModelNotFoundError, ModelRegistry, record_training_batches, training_lineage
from ..warehouse.base import Warehouse
from . import reports
from .common import (
    FEATURE_TYPES,
    Progress,
    TrainingDataError,
    TrainResult,
    cast_table,
    feature_frame,
    read_table,
    report,
    table_sha256,
)
from .fairness import DEFAULT_FAIRNESS_METRIC, DEFAULT_MAX_FAIRNESS_GAP, fairness_report

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


# Randomized search: per family, ``n_iter`` settings drawn from these distributions (seeded),
# each scored on the same time-ordered folds. Fixed settings keep one fit to about a second
# on 20,000 rows with one thread (bounded forests: 60 trees on 20% bootstrap samples).
SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "logistic": {"C": loguniform(1e-3, 10.0)},
    "random_forest": {
        "max_depth": [8, 12, 16],
        "min_samples_leaf": [10, 30, 100],
        "max_features": ["sqrt", 0.5],
    },
    "hist_gradient_boosting": {
        "learning_rate": loguniform(0.03, 0.2),
        "max_leaf_nodes": [15, 31],
        "min_samples_leaf": [20, 50, 200],
        "l2_regularization": [0.0, 0.1, 1.0],
        "max_iter": [100, 150],
    },
}
FIXED_PARAMS: dict[str, dict[str, Any]] = {
    "logistic": {"max_iter": 2_000},
    "random_forest": {"n_estimators": 60, "max_samples": 0.2, "n_jobs": 1},
    "hist_gradient_boosting": {"early_stopping": False},
}
_ESTIMATORS: dict[str, type[BaseEstimator]] = {
    "logistic": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
}


@dataclass(frozen=True)
class Candidate:
    name: str
    family: str
    params: dict[str, Any]
    random_state: int = 0

    def make(self) -> BaseEstimator:
        """A new, unfitted estimator with this candidate's settings."""
        kwargs = {**FIXED_PARAMS[self.family], **self.params}
        if self.family != "logistic":
            kwargs["random_state"] = self.random_state
        return _ESTIMATORS[self.family](**kwargs)


def _plain(value: Any) -> Any:
    """A sampled parameter as a short JSON-friendly value (4 significant digits)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


def candidate_grid(random_state: int, n_iter: int = 2) -> list[Candidate]:
    """The randomized search: ``n_iter`` seeded draws per family from :data:`SEARCH_SPACE`."""
    candidates = []
    for offset, (family, space) in enumerate(SEARCH_SPACE.items()):
        sampler = ParameterSampler(space, n_iter=n_iter, random_state=random_state + offset)
        for i, params in enumerate(sampler):
            plain = {k: _plain(v) for k, v in sorted(params.items())}
            candidates.append(Candidate(f"{family}_{i + 1}", family, plain, random_state))
    return candidates


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


def recency_scores(recency_days: np.ndarray) -> np.ndarray:
    """The recency rule as a score: days since the last order (missing: the most churned)."""
    recency = np.asarray(recency_days, dtype=float)
    fill = np.nanmax(recency) + 1 if np.isfinite(recency).any() else 0.0
    return np.where(np.isnan(recency), fill, recency)


def recency_baseline_auc(recency_days: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC of scoring by recency alone (missing recency ranks as the most churned)."""
    return float(roc_auc_score(y, recency_scores(recency_days)))


def recency_baseline(
    train_recency: np.ndarray, y_train: np.ndarray, test_recency: np.ndarray, y_test: np.ndarray
) -> dict[str, Any]:
    """The rule "churned if no order for at least T days", T chosen by F1 on the training
    rows, evaluated on the held-out rows."""
    days = best_f1_threshold(y_train, recency_scores(train_recency))
    score = recency_scores(test_recency)
    predicted = score >= days
    return {
        "rule": f"recency_days >= {days:g}",
        "threshold_days": float(days),
        "roc_auc": float(roc_auc_score(y_test, score)),
        "pr_auc": float(average_precision_score(y_test, score)),
        "precision": float(precision_score(y_test, predicted, zero_division=0)),
        "recall": float(recall_score(y_test, predicted, zero_division=0)),
        "f1": float(f1_score(y_test, predicted, zero_division=0)),
    }


def calibration_table(y: np.ndarray, score: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Observed rate against mean prediction in ``bins`` equal-count bins of the score."""
    order = np.argsort(score, kind="stable")
    rows = []
    for part in np.array_split(order, min(bins, len(order))):
        if part.size == 0:
            continue
        rows.append(
            {
                "rows": int(part.size),
                "min_predicted": float(score[part].min()),
                "max_predicted": float(score[part].max()),
                "mean_predicted": float(score[part].mean()),
                "observed_rate": float(np.mean(y[part])),
            }
        )
    return rows


def expected_calibration_error(table: Sequence[dict[str, Any]]) -> float:
    """Row-weighted mean |observed - predicted| over the calibration bins."""
    total = sum(r["rows"] for r in table)
    return float(
        sum(r["rows"] * abs(r["observed_rate"] - r["mean_predicted"]) for r in table) / total
    )


def global_importance(
    pipeline: Any,
    x: pd.DataFrame,
    y: np.ndarray,
    *,
    random_state: int,
    n_repeats: int = 3,
    max_rows: int = 5_000,
) -> dict[str, dict[str, float]]:
    """Permutation importance of each input feature on held-out rows: the mean (and std)
    drop in ROC AUC when that column is shuffled. Sorted, most important first."""
    if len(x) > max_rows:
        keep = np.sort(np.random.default_rng(random_state).choice(len(x), max_rows, replace=False))
        x, y = x.iloc[keep], y[keep]
    result = permutation_importance(
        pipeline, x, y, scoring="roc_auc", n_repeats=n_repeats, random_state=random_state, n_jobs=1
    )
    ranked = sorted(
        zip(x.columns, result.importances_mean, result.importances_std, strict=True),
        key=lambda item: -item[1],
    )
    return {str(name): {"mean": float(m), "std": float(sd)} for name, m, sd in ranked}


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


# -- fitting (pure) ------------------------------------------------------------------------
@dataclass(frozen=True)
class ChurnFit:
    """A fitted churn pipeline with its held-out evaluation (no I/O done)."""

    pipeline: Pipeline
    metrics: dict[str, Any]
    params: dict[str, Any]
    data: pa.Table  # the training table sorted by (cutoff_date, customer_id)
    content_sha256: str
    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_test: np.ndarray
    test_scores: np.ndarray
    baseline_scores: np.ndarray


def fit_churn(
    data: pa.Table,
    *,
    horizon_days: int,
    random_state: int = 0,
    progress: Progress | None = None,
    test_fraction: float = 0.2,
    cv_folds: int = 3,
    n_iter: int = 2,
    cv_max_rows: int = 20_000,
    min_rows: int = 200,
    fairness_metric: str = DEFAULT_FAIRNESS_METRIC,
    max_fairness_gap: float | None = DEFAULT_MAX_FAIRNESS_GAP,
    importance_repeats: int = 3,
) -> ChurnFit:
    """Select (randomized search on time-ordered folds), fit and evaluate a churn pipeline
    on ``marts.ml_churn_training`` rows. Raises :class:`TrainingDataError`."""
    data = cast_table(data, CHURN_COLUMNS, what="churn training")
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

    # -- model selection: randomized search over time-ordered folds of the training cutoffs
    rng = np.random.default_rng(random_state)
    folds = []
    for tr, va in cutoff_folds(train_cutoffs, n_splits=cv_folds, gap_days=horizon_days):
        if np.unique(y_train[tr]).size < 2 or np.unique(y_train[va]).size < 2:
            continue
        if tr.size > cv_max_rows:  # a seeded subsample keeps each fold fit to ~a second
            tr = np.sort(rng.choice(tr, cv_max_rows, replace=False))
        folds.append((tr, va))
    candidates = candidate_grid(random_state, n_iter)
    selection: list[dict[str, Any]] = []
    out_of_fold: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for candidate in candidates:
        started = time.perf_counter()
        aucs, ys, scores = [], [], []
        for tr, va in folds:
            model = build_pipeline(candidate.make()).fit(x_train.iloc[tr], y_train[tr])
            score = positive_scores(model, x_train.iloc[va])
            aucs.append(float(roc_auc_score(y_train[va], score)))
            ys.append(y_train[va])
            scores.append(score)
        mean_auc = float(np.mean(aucs)) if aucs else None
        selection.append(
            {"name": candidate.name, "family": candidate.family, "params": candidate.params,
             "cv_roc_auc": mean_auc, "fold_roc_auc": aucs,
             "seconds": round(time.perf_counter() - started, 2)}
        )  # fmt: skip
        if ys:
            out_of_fold[candidate.name] = (np.concatenate(ys), np.concatenate(scores))
        report(progress, f"candidate {candidate.name} {candidate.params}: cv roc_auc {mean_auc}")
    if folds:
        cv_auc = {s["name"]: s["cv_roc_auc"] for s in selection}
        best = max(candidates, key=lambda c: cv_auc[c.name])
        threshold = best_f1_threshold(*out_of_fold[best.name])
    else:
        best, threshold = next(c for c in candidates if c.family == "logistic"), 0.5
    report(progress, f"selected {best.name}; fitting on all {len(x_train)} training rows")

    # -- final fit on the training rows, evaluation on the held-out rows
    pipeline = build_pipeline(best.make()).fit(x_train, y_train)
    test_scores = positive_scores(pipeline, x_test)
    metrics: dict[str, Any] = classification_metrics(y_test, test_scores, threshold)
    metrics["threshold_source"] = "F1-optimal on the out-of-fold predictions of the selection"
    baseline = recency_baseline(
        x_train["recency_days"].to_numpy(), y_train, x_test["recency_days"].to_numpy(), y_test
    )
    metrics["baseline_recency_roc_auc"] = baseline["roc_auc"]
    metrics["baseline"] = baseline
    metrics["brier_base_rate"] = float(
        brier_score_loss(y_test, np.full(len(y_test), y_train.mean()))
    )
    calibration = calibration_table(y_test, test_scores)
    metrics["calibration"] = calibration
    metrics["expected_calibration_error"] = expected_calibration_error(calibration)
    report(progress, "permutation importance on the held-out rows")
    metrics["permutation_importance"] = global_importance(
        pipeline, x_test, y_test, random_state=random_state, n_repeats=importance_repeats
    )
    metrics["fairness"] = fairness_report(
        x_test, y_test, test_scores, threshold, metric=fairness_metric, max_gap=max_fairness_gap
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
        "method": f"randomized search, {n_iter} draws per family, time-ordered folds",
        "folds": len(folds),
        "fold_max_training_rows": cv_max_rows,
        "candidates": selection,
        "selected": best.name,
        "note": None if folds else "no usable time-ordered folds: a logistic regression used",
    }
    params = {
        "estimator": best.name,
        "family": best.family,
        "estimator_params": {**FIXED_PARAMS[best.family], **best.params},
        "horizon_days": horizon_days,
        "random_state": random_state,
        "test_fraction": test_fraction,
        "cv_folds": cv_folds,
        "n_iter": n_iter,
        "numeric_features": list(NUMERIC_FEATURES),
        "categorical_features": list(CATEGORICAL_FEATURES),
        "search_space": {
            family: {k: (list(v) if isinstance(v, list) else repr(v)) for k, v in space.items()}
            for family, space in SEARCH_SPACE.items()
        },
    }
    return ChurnFit(
        pipeline=pipeline,
        metrics=metrics,
        params=params,
        data=data,
        content_sha256=content_sha256,
        x_train=x_train,
        x_test=x_test,
        y_test=y_test,
        test_scores=test_scores,
        baseline_scores=recency_scores(x_test["recency_days"].to_numpy()),
    )


def churn_reports(fit: ChurnFit, title: str) -> dict[str, bytes]:
    """ROC, precision-recall, calibration and importance charts of a fit (PNG bytes)."""
    m = fit.metrics
    return {
        reports.ROC: reports.roc_png(
            fit.y_test, fit.test_scores, fit.baseline_scores,
            title=f"{title}: ROC AUC {m['roc_auc']:.3f} (recency {m['baseline_recency_roc_auc']:.3f})",
        ),
        reports.PRECISION_RECALL: reports.precision_recall_png(
            fit.y_test, fit.test_scores, fit.baseline_scores, threshold=m["threshold"],
            title=f"{title}: PR AUC {m['pr_auc']:.3f}, F1 {m['f1']:.3f}",
        ),
        reports.CALIBRATION: reports.calibration_png(
            m["calibration"], title=f"{title}: Brier {m['brier']:.3f}"
        ),
        reports.IMPORTANCE: reports.importance_png(
            m["permutation_importance"], title=f"{title}: permutation importance"
        ),
    }  # fmt: skip


# -- training (I/O) -------------------------------------------------------------------------
def train_churn(
    warehouse: Warehouse,
    registry: ModelRegistry,
    *,
    horizon_days: int,
    random_state: int = 0,
    progress: Progress | None = None,
    test_fraction: float = 0.2,
    cv_folds: int = 3,
    n_iter: int = 2,
    min_rows: int = 200,
    margin: float = 0.0,
    max_fairness_gap: float | None = DEFAULT_MAX_FAIRNESS_GAP,
    fairness_metric: str = DEFAULT_FAIRNESS_METRIC,
    manifest_sha256: str | None = None,
    dbt_manifest: Path | None = None,
    model_name: str = CHURN_MODEL_NAME,
    n_threads: int | None = 1,
    with_reports: bool = True,
    drift_bins: int = DEFAULT_BINS,
) -> TrainResult:
    """Select, fit, evaluate, register (candidate) and gate a churn model: promoted on ROC
    AUC against production on the same held-out rows, only within the fairness limit.

    ``dbt_manifest`` (dbt's ``target/manifest.json``) adds the dbt lineage and the raw
    batches to the training fingerprint; ``manifest_sha256`` alone records just the hash.
    Raises :class:`TrainingDataError` (nothing registered) when the mart cannot make a model.
    ``n_threads`` bounds the OpenMP/BLAS threads of the fits (``None``: library default);
    one thread is the fastest on a small shared machine (no spinning threads).
    ``drift_bins``: quantile bins of the drift reference stored with the version.
    """
    started = time.perf_counter()
    with threadpool_limits(limits=n_threads):
        report(progress, f"reading {CHURN_TRAINING_TABLE}")
        sql, data = read_table(
            warehouse, CHURN_TRAINING_TABLE, CHURN_COLUMNS, what="churn training"
        )
        fit = fit_churn(
            data,
            horizon_days=horizon_days,
            random_state=random_state,
            progress=progress,
            test_fraction=test_fraction,
            cv_folds=cv_folds,
            n_iter=n_iter,
            min_rows=min_rows,
            fairness_metric=fairness_metric,
            max_fairness_gap=max_fairness_gap,
        )
        metrics = dict(fit.metrics)
        metrics["champion_evaluations"] = _evaluate_champion(
            registry, model_name, fit.x_test, fit.y_test
        )
    lineage, batches = training_lineage(warehouse, CHURN_TRAINING_TABLE, dbt_manifest)
    cutoffs = fit.data.column(CUTOFF)
    fingerprint = {
        "table": CHURN_TRAINING_TABLE,
        "query": sql,
        "row_count": fit.data.num_rows,
        "content_sha256": fit.content_sha256,
        **lineage,
        "dbt_manifest_sha256": lineage["dbt_manifest_sha256"] or manifest_sha256,
        "first_cutoff": str(pc.min(cutoffs).as_py()),
        "last_cutoff": str(pc.max(cutoffs).as_py()),
        # Typical training values (serving's explanations compare against these).
        FEATURE_REFERENCE_KEY: feature_reference(fit.x_train),
    }
    charts = churn_reports(fit, model_name) if with_reports else {}

    report(progress, f"registering {model_name} (held-out roc_auc {metrics['roc_auc']:.4f})")
    version = registry.register(
        model_name, fit.pipeline, kind="sklearn", params=fit.params, metrics=metrics,
        fingerprint=fingerprint, reports=charts,
    )  # fmt: skip
    record_training_batches(warehouse, model_name, version.version, batches)
    # Drift reference: the latest snapshot of the mart (comparable to the scored snapshot).
    # and the model's scores on it (the reference of prediction drift).
    latest = fit.data.filter(pc.equal(cutoffs, pc.max(cutoffs)))
    latest_scores = positive_scores(fit.pipeline, feature_frame(latest))
    write_drift_reference(
        warehouse, model_name, version.version,
        build_reference(latest, n_bins=drift_bins, scores=latest_scores),
    )  # fmt: skip
    decision = registry.promote(
        model_name, version.version, metric=PROMOTION_METRIC, higher_is_better=True,
        margin=margin, max_fairness_gap=max_fairness_gap,
    )  # fmt: skip
    report(progress, decision.reason)
    return TrainResult(
        model_name=model_name,
        version=registry.get(model_name, version.version),
        promotion=decision,
        metrics=metrics,
        rows=fit.data.num_rows,
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
