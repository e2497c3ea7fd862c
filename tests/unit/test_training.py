"""Training logic: time-ordered splits, fingerprints, the feature frame, data errors, the
demand backtest arithmetic. The warehouse, where needed, is an embedded DuckDB file."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from threadpoolctl import threadpool_limits

from retailml.features.spec import CHURN_TRAINING_TABLE, FEATURES
from retailml.registry import LocalArtifactStore, ModelRegistry
from retailml.registry.serialization import dump_sklearn, load_sklearn
from retailml.training import reports
from retailml.training.churn import (
    CHURN_COLUMNS,
    SEARCH_SPACE,
    best_f1_threshold,
    build_pipeline,
    calibration_table,
    candidate_grid,
    cutoff_folds,
    expected_calibration_error,
    holdout_split,
    positive_scores,
    recency_baseline,
    recency_baseline_auc,
    train_churn,
)
from retailml.training.common import (
    TrainingDataError,
    cast_table,
    feature_frame,
    table_sha256,
)
from retailml.training.demand import (
    DemandConfig,
    backtest,
    backtest_scores,
    day_of_year,
    fourier_terms,
    mase,
    seasonal_naive,
    yearly_component,
    yearly_factor,
    yearly_index,
)
from retailml.training.fairness import describe_gap, fairness_report
from retailml.training.synthetic import make_churn_training
from retailml.warehouse.duckdb import DuckDBWarehouse


def _dates(n: int, step: int = 14) -> np.ndarray:
    first = np.datetime64("2024-01-07")
    return np.array([first + np.timedelta64(step * i, "D") for i in range(n)])


# -- splits -------------------------------------------------------------------------------
def test_holdout_is_the_latest_cutoffs_with_a_horizon_gap() -> None:
    cutoffs = np.repeat(_dates(10), 5)
    train, test = holdout_split(cutoffs, test_fraction=0.2, gap_days=30)
    test_dates, train_dates = np.unique(cutoffs[test]), np.unique(cutoffs[train])
    assert test_dates.tolist() == _dates(10)[-2:].tolist()
    assert train_dates.max() <= test_dates.min() - np.timedelta64(30, "D")
    assert train_dates.tolist() == _dates(10)[:6].tolist()  # 2 cutoffs fall in the gap
    assert not (train & test).any()


def test_holdout_without_enough_history_names_the_problem() -> None:
    with pytest.raises(TrainingDataError, match="too short"):
        holdout_split(np.repeat(_dates(3, step=7), 4), test_fraction=0.3, gap_days=30)
    with pytest.raises(TrainingDataError, match="at least 2"):
        holdout_split(np.repeat(_dates(1), 4), test_fraction=0.2, gap_days=0)


def test_cutoff_folds_expand_forward_with_the_gap() -> None:
    cutoffs = np.repeat(_dates(8), 3)
    folds = cutoff_folds(cutoffs, n_splits=3, gap_days=20)
    assert len(folds) == 3
    previous_train = 0
    for train_idx, val_idx in folds:
        gap = cutoffs[val_idx].min() - cutoffs[train_idx].max()
        assert gap >= np.timedelta64(20, "D")
        assert len(train_idx) > previous_train  # expanding window
        previous_train = len(train_idx)


# -- fingerprints and frames --------------------------------------------------------------
def test_content_hash_ignores_row_order_and_chunking_but_not_values() -> None:
    data = cast_table(make_churn_training(50, 3, seed=5), CHURN_COLUMNS, what="t")
    keys = ("cutoff_date", "customer_id")
    reference = table_sha256(data, keys)
    shuffled = data.take(np.random.default_rng(0).permutation(data.num_rows))
    rechunked = pa.Table.from_batches(shuffled.to_batches(max_chunksize=7))
    assert table_sha256(rechunked, keys) == reference
    changed = data.set_column(
        data.schema.get_field_index("recency_days"),
        "recency_days",
        pc.add(data.column("recency_days"), 1.0),
    )
    assert table_sha256(changed, keys) != reference


def test_feature_frame_from_records_matches_frame_from_arrow() -> None:
    table = make_churn_training(20, 1, seed=2).slice(0, 5)
    from_arrow = feature_frame(table)
    records = table.select(list(FEATURES)).to_pylist()
    records[0]["country"] = None
    records[1]["recency_days"] = None
    from_records = feature_frame(pd.DataFrame(records))
    assert list(from_records.columns) == list(FEATURES)
    assert (from_records.dtypes == from_arrow.dtypes).all()
    assert pd.isna(from_records.loc[0, "country"]) and pd.isna(from_records.loc[1, "recency_days"])


def test_missing_categorical_scores_the_same_as_none_or_nan() -> None:
    """Serving passes None in object columns, training saw NaN: no skew."""
    data = make_churn_training(300, 2, seed=3)
    frame = feature_frame(data)
    y = data.column("is_churned").to_numpy(zero_copy_only=False).astype(int)
    frame.loc[frame.index[:30], "loyalty_tier"] = np.nan  # a trained "missing" category
    model = build_pipeline(candidate_grid(0)[0].make()).fit(frame, y)
    row = frame.iloc[[0]].copy()
    with_nan = row.astype({"loyalty_tier": object})
    with_nan["loyalty_tier"] = np.nan
    with_none = row.astype({"loyalty_tier": object})
    with_none["loyalty_tier"] = None
    assert positive_scores(model, with_none) == pytest.approx(positive_scores(model, with_nan))
    # ... and "missing" is its own category, not silently "unknown" (all zeros).
    with_unseen = row.astype({"loyalty_tier": object})
    with_unseen["loyalty_tier"] = "platinum"
    assert positive_scores(model, with_none) != pytest.approx(positive_scores(model, with_unseen))


@pytest.mark.parametrize("candidate", candidate_grid(0), ids=lambda c: c.name)
def test_every_candidate_pipeline_loads_under_the_skops_allow_list(candidate) -> None:
    data = make_churn_training(200, 1, seed=4)
    frame = feature_frame(data)
    y = data.column("is_churned").to_numpy(zero_copy_only=False).astype(int)
    with threadpool_limits(limits=1):  # OpenMP threads spin on a busy 2-core machine
        model = build_pipeline(candidate.make()).fit(frame, y)
    loaded = load_sklearn(dump_sklearn(model))
    np.testing.assert_allclose(positive_scores(loaded, frame), positive_scores(model, frame))


# -- metrics --------------------------------------------------------------------------------
def test_best_f1_threshold_separates_a_separable_problem() -> None:
    y = np.array([0, 0, 0, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    threshold = best_f1_threshold(y, score)
    assert 0.3 < threshold <= 0.7


def test_recency_baseline_ranks_missing_recency_as_churned() -> None:
    y = np.array([0, 0, 1, 1])
    assert recency_baseline_auc(np.array([1.0, 5.0, 50.0, np.nan]), y) == pytest.approx(1.0)


# -- demand arithmetic --------------------------------------------------------------------
def test_mase_of_a_perfect_forecast_is_zero_and_of_seasonal_naive_on_a_cycle_too() -> None:
    cycle = np.tile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 9.0], 6)
    train, actual = cycle[:35], cycle[35:]
    assert mase(actual, actual, train + np.arange(35)) == 0.0
    assert seasonal_naive(train, 7).tolist() == actual.tolist()
    assert np.isnan(mase(actual, actual, cycle[:35]))  # zero naive error: undefined, not inf


def test_fourier_terms_are_yearly_periodic_on_absolute_dates() -> None:
    first = pd.date_range("2023-01-01", periods=10, freq="D")
    a_year_later = pd.date_range("2024-01-01", periods=10, freq="D")
    coef = [0.5, -1.0, 0.25, 0.0]
    shift = yearly_component(first, coef) - yearly_component(a_year_later, coef)
    assert np.abs(shift).max() < 0.05  # 365 vs 365.25 days
    assert fourier_terms(first, 2).shape == (10, 4)
    assert yearly_component(first, None).tolist() == [0.0] * 10


# -- training data errors: clear, and nothing registered ------------------------------------
def _registry(tmp_path: Path) -> tuple[DuckDBWarehouse, ModelRegistry]:
    warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb")
    return warehouse, ModelRegistry(
        warehouse, LocalArtifactStore(tmp_path / "models"), code_version="test"
    )


def _with_label(table: pa.Table, value: bool) -> pa.Table:
    index = table.schema.get_field_index("is_churned")
    return table.set_column(index, "is_churned", pa.array([value] * table.num_rows))


@pytest.mark.parametrize(
    ("make_table", "message"),
    [
        (lambda: None, "does not exist"),
        (lambda: make_churn_training(10, 4).slice(0, 0), "has no rows"),
        (lambda: make_churn_training(10, 4), "at least 200"),
        (lambda: _with_label(make_churn_training(100, 6), False), "is false for all"),
        (lambda: make_churn_training(100, 6).drop_columns(["tenure_days"]), "tenure_days"),
        (lambda: make_churn_training(300, 2, cutoff_step_days=7), "too short"),
    ],
    ids=["missing-table", "empty", "too-small", "single-class", "missing-column", "short"],
)
def test_unusable_training_data_raises_and_registers_nothing(
    tmp_path: Path, make_table, message: str
) -> None:
    warehouse, registry = _registry(tmp_path)
    table = make_table()
    if table is not None:
        warehouse.replace_arrow(CHURN_TRAINING_TABLE, table)
    with pytest.raises(TrainingDataError, match=message):
        train_churn(warehouse, registry, horizon_days=30)
    assert registry.list_versions("churn") == []


def test_single_class_in_the_held_out_cutoffs_is_reported(tmp_path: Path) -> None:
    warehouse, registry = _registry(tmp_path)
    data = make_churn_training(100, 6)
    last = max(data.column("cutoff_date").to_pylist())
    label = pc.if_else(
        pc.equal(data.column("cutoff_date"), pa.scalar(last, pa.date32())),
        False,
        data.column("is_churned"),
    )
    warehouse.replace_arrow(
        CHURN_TRAINING_TABLE, data.set_column(data.num_columns - 1, "is_churned", label)
    )
    with pytest.raises(TrainingDataError, match="held-out rows"):
        train_churn(warehouse, registry, horizon_days=14, test_fraction=0.1)
    assert registry.list_versions("churn") == []


def test_synthetic_cutoffs_are_spaced_as_asked() -> None:
    data = make_churn_training(5, 3, first_cutoff=date(2024, 1, 1), cutoff_step_days=10)
    assert sorted(set(data.column("cutoff_date").to_pylist())) == [
        date(2024, 1, 1) + timedelta(days=10 * k) for k in range(3)
    ]


# -- model selection ------------------------------------------------------------------------
def test_randomized_search_covers_every_family_and_is_seeded() -> None:
    grid = candidate_grid(7, n_iter=3)
    assert (
        {c.family for c in grid}
        == set(SEARCH_SPACE)
        == {
            "logistic",
            "random_forest",
            "hist_gradient_boosting",
        }
    )
    assert len(grid) == 3 * len(SEARCH_SPACE)
    assert grid == candidate_grid(7, n_iter=3)  # same seed, same draws
    assert [c.params for c in grid] != [c.params for c in candidate_grid(8, n_iter=3)]
    for candidate in grid:  # parameters are plain JSON values within the search space
        for name, value in candidate.params.items():
            assert isinstance(value, int | float | str), (name, value)
            space = SEARCH_SPACE[candidate.family][name]
            assert value in space if isinstance(space, list) else space.support()[0] <= value
        assert candidate.make().get_params()  # builds


# -- metrics --------------------------------------------------------------------------------
def test_calibration_table_bins_every_row_and_scores_calibration() -> None:
    rng = np.random.default_rng(0)
    score = rng.uniform(0, 1, 20_000)
    y = (rng.uniform(0, 1, score.size) < score).astype(int)  # calibrated by construction
    table = calibration_table(y, score, bins=10)
    assert len(table) == 10 and sum(r["rows"] for r in table) == score.size
    assert [r["mean_predicted"] for r in table] == sorted(r["mean_predicted"] for r in table)
    assert expected_calibration_error(table) < 0.02
    overconfident = np.clip(score * 1.6 - 0.3, 0, 1)
    assert expected_calibration_error(calibration_table(y, overconfident)) > 0.05


def test_recency_baseline_picks_its_threshold_on_training_rows() -> None:
    train = np.array([1.0, 2.0, 3.0, 40.0, 50.0, 60.0])
    y_train = np.array([0, 0, 0, 1, 1, 1])
    baseline = recency_baseline(train, y_train, np.array([5.0, 45.0, 30.0]), np.array([0, 1, 1]))
    assert 3.0 < baseline["threshold_days"] <= 40.0
    assert baseline["rule"].startswith("recency_days >= ")
    assert baseline["roc_auc"] == 1.0 and baseline["precision"] == 1.0
    assert baseline["recall"] == 0.5  # 30 days is below the training threshold


# -- fairness --------------------------------------------------------------------------------
def _fairness_frame() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    n = 3_000
    frame = pd.DataFrame(
        {
            "country": rng.choice(["NL", "DE"], n),
            "signup_channel": rng.choice(["web", "app"], n),
            "loyalty_tier": np.where(np.arange(n) < 50, "gold", "bronze"),  # gold: 50 rows
        }
    )
    y = rng.integers(0, 2, n)
    signal = y + rng.normal(0, 0.5, n)
    noise = rng.normal(0, 1.0, n)
    logit = np.where(frame["country"] == "NL", 3 * (signal - 0.5), noise)  # useless for DE
    return frame, y, 1.0 / (1.0 + np.exp(-logit))


def test_fairness_report_finds_the_largest_gap_and_applies_the_limit() -> None:
    frame, y, score = _fairness_frame()
    report = fairness_report(frame, y, score, 0.5, max_gap=0.1)
    largest = report["largest_gap"]
    assert largest["attribute"] == "country" and largest["metric"] == "roc_auc"
    assert largest["highest"]["group"] == "NL" and largest["lowest"]["group"] == "DE"
    assert largest["value"] > 0.3 and report["passed"] is False
    assert "country" in describe_gap(largest)
    # a slice too small to judge is reported but not compared
    gold = report["slices"]["loyalty_tier"]["gold"]
    assert gold["rows"] == 50 and gold["in_gap"] is False
    assert report["gaps"]["loyalty_tier"]["roc_auc"] is None
    assert fairness_report(frame, y, score, 0.5, max_gap=None)["passed"] is None
    assert fairness_report(frame, y, score, 0.5, max_gap=0.9)["passed"] is True
    with pytest.raises(ValueError, match="fairness metric"):
        fairness_report(frame, y, score, 0.5, metric="accuracy")


def test_missing_group_values_are_a_slice_of_their_own() -> None:
    frame, y, score = _fairness_frame()
    frame.loc[:499, "country"] = None
    report = fairness_report(frame, y, score, 0.5)
    assert report["slices"]["country"]["__missing__"]["rows"] == 500


# -- demand: yearly profile and backtest ----------------------------------------------------
def _seasonal_series(days: int, *, seed: int = 0, start: str = "2023-01-01") -> pd.Series:
    index = pd.date_range(start, periods=days, freq="D")
    doy = index.day_of_year.to_numpy()
    yearly = 1.0 + 0.8 * np.exp(-0.5 * ((doy - 340) / 12.0) ** 2)  # a December peak
    weekly = np.array([1.0, 0.95, 0.95, 1.0, 1.1, 1.2, 0.8])[index.dayofweek.to_numpy()]
    rng = np.random.default_rng(seed)
    return pd.Series(rng.poisson(40.0 * yearly * weekly).astype(float), index=index)


def test_day_of_year_shares_the_leap_day_and_keeps_dates_aligned() -> None:
    leap = pd.DatetimeIndex(["2024-02-28", "2024-02-29", "2024-03-01", "2024-12-31"])
    plain = pd.DatetimeIndex(["2023-02-28", "2023-03-01", "2023-12-31"])
    assert day_of_year(leap).tolist() == [58, 58, 59, 364]
    assert day_of_year(plain).tolist() == [58, 59, 364]


def test_yearly_index_recovers_a_seasonal_peak() -> None:
    assert yearly_index(_seasonal_series(300)) is None  # less than a year
    profile = yearly_index(_seasonal_series(2 * 365))
    assert profile is not None and len(profile) == 365
    assert np.mean(profile) == pytest.approx(1.0)
    assert 330 <= int(np.argmax(profile)) <= 350  # the peak, 0-based around day 339
    assert max(profile) / np.median(profile) > 1.4
    dates = pd.date_range("2030-12-05", periods=3, freq="D")
    assert (
        yearly_factor(dates, profile).min() > 1.3
        and yearly_factor(dates, None).tolist() == [1.0] * 3
    )


def test_backtest_scores_every_origin_and_beats_seasonal_naive_on_a_seasonal_series() -> None:
    y = _seasonal_series(2 * 365 + 60, seed=1)
    config = DemandConfig(backtest_origins=4, backtest_step_days=28)
    with threadpool_limits(limits=1):
        frame = backtest(y, config, 14, category="c")
    assert frame["origin_date"].nunique() == 4 and len(frame) == 4 * 14
    assert (frame["lower_95"] <= frame["units_forecast"]).all()
    assert (frame["units_forecast"] <= frame["upper_95"]).all()
    scores = backtest_scores(frame)
    assert scores["mase"] < scores["mase_seasonal_naive"]
    assert 0.7 < scores["interval_coverage_95"] <= 1.0
    # the arithmetic: MASE is the mean over origins of MAE / the origin's scale
    first = frame[frame["origin_date"] == frame["origin_date"].min()]
    train = y[y.index < pd.Timestamp(first["origin_date"].iloc[0])].to_numpy()
    assert mase(first["actual"], first["units_forecast"], train) == pytest.approx(
        (first["actual"] - first["units_forecast"]).abs().mean() / first["mase_scale"].iloc[0]
    )


# -- reports --------------------------------------------------------------------------------
def test_charts_are_png_images() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    score = np.clip(y * 0.3 + rng.uniform(0, 0.7, 500), 0, 1)
    images = [
        reports.roc_png(y, score, score[::-1], title="t"),
        reports.precision_recall_png(y, score, None, threshold=0.5, title="t"),
        reports.calibration_png(calibration_table(y, score), title="t"),
        reports.importance_png(
            {"a": {"mean": 0.2, "std": 0.01}, "b": {"mean": 0.0, "std": 0.0}}, title="t"
        ),
    ]
    for image in images:
        assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 5_000
