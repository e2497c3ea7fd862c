"""Monitoring charts: valid PNG files at deterministic paths, and the bins/categories behind
them (unseen and vanished categories, empty sides, mismatched counts)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from retailml.monitoring.charts import (
    bin_labels,
    category_shares,
    chart_name,
    distribution_chart,
    metric_over_time_chart,
    metric_series,
    numeric_bins,
    week_ticks,
    write_charts,
)
from retailml.monitoring.drift import DriftReference, NumericReference
from retailml.monitoring.performance import PERFORMANCE_SCHEMA

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_AT = datetime(2024, 5, 1, tzinfo=UTC)


def assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 300


def performance_rows() -> pa.Table:
    rows = []
    for version, weeks, training in ((1, 4, 0.80), (2, 2, 0.85)):
        for k in range(weeks):
            week = date(2024, 3, 4 + 7 * (k + (4 - weeks)))
            value = None if (version, k) == (1, 1) else 0.8 - 0.06 * k  # a single-class week
            rows.append(
                {"run_at": RUN_AT, "model_name": "churn", "model_version": version,
                 "week_start": week, "metric": "roc_auc", "value": value,
                 "training_value": training, "threshold": 0.05,
                 "is_degraded": value is not None and training - value > 0.05}
            )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=PERFORMANCE_SCHEMA)


# -- pure parts ---------------------------------------------------------------------------
def test_bin_labels_follow_the_drift_bins() -> None:
    assert bin_labels((1.0, 2.5, 10.0)) == ["null", "≤ 1", "(1, 2.5]", "(2.5, 10]", "> 10"]
    assert bin_labels(()) == ["null", "all values"]


def test_numeric_bins_are_shares_and_drop_an_empty_null_bin() -> None:
    labels, ref, cur = numeric_bins((1.0,), [0, 30, 10], [0, 5, 15])
    assert labels == ["≤ 1", "> 1"]
    assert ref.tolist() == [0.75, 0.25] and cur.tolist() == [0.25, 0.75]
    labels, ref, _ = numeric_bins((1.0,), [10, 30, 10], [0, 0, 0])
    assert labels[0] == "null" and ref.sum() == pytest.approx(1.0)


def test_numeric_bins_reject_counts_of_another_layout() -> None:
    with pytest.raises(ValueError, match="2 edges need 4 counts"):
        numeric_bins((1.0, 2.0), [1, 2, 3], [1, 2, 3, 4])


def test_categories_are_the_union_with_unseen_and_vanished_at_zero() -> None:
    labels, ref, cur = category_shares({"NL": 60, "DE": 30, "BE": 10}, {"NL": 50, "US": 50})
    assert labels == ["NL", "DE (gone)", "BE (gone)", "US (new)"]
    assert ref.tolist() == [0.6, 0.3, 0.1, 0.0] and cur.tolist() == [0.5, 0.0, 0.0, 0.5]


def test_many_categories_fold_into_other() -> None:
    reference = {f"c{i:02d}": 100 - i for i in range(40)}
    labels, ref, cur = category_shares(reference, {"c00": 1}, max_categories=10)
    assert len(labels) == 10 and labels[-1] == "(other)"
    assert ref.sum() == pytest.approx(1.0) and cur.sum() == pytest.approx(1.0)


def test_chart_names_are_deterministic_and_safe() -> None:
    assert chart_name("drift", "recency_days") == "drift_recency_days.png"
    assert chart_name("performance", "roc_auc") == "performance_roc_auc.png"
    assert chart_name("drift", "../Weird Name!") == "drift_weird_name.png"


def test_metric_series_keeps_the_latest_run_of_each_week() -> None:
    rows = [
        {"run_at": RUN_AT, "model_version": 1, "week_start": date(2024, 3, 4),
         "metric": "roc_auc", "value": 0.7, "training_value": 0.8, "is_degraded": True},
        {"run_at": datetime(2024, 5, 2, tzinfo=UTC), "model_version": 1,
         "week_start": date(2024, 3, 4), "metric": "roc_auc", "value": 0.79,
         "training_value": 0.8, "is_degraded": False},
        {"run_at": RUN_AT, "model_version": 1, "week_start": date(2024, 3, 4),
         "metric": "brier", "value": 0.2, "training_value": 0.15, "is_degraded": False},
    ]  # fmt: skip
    series = metric_series(rows, "roc_auc")
    assert series == {
        1: {"weeks": [date(2024, 3, 4)], "values": [0.79], "training_value": 0.8, "degraded": []}
    }


def test_week_ticks_are_capped() -> None:
    weeks = [date(2024, 1, 1 + 7 * k) for k in range(4)] + [date(2024, 2, 5)]
    assert week_ticks(weeks, max_ticks=12) == weeks
    assert len(week_ticks([date(2023, 1, 2)] * 30, max_ticks=12)) <= 12


# -- PNG files ------------------------------------------------------------------------------
def test_numeric_distribution_chart(tmp_path: Path) -> None:
    path = distribution_chart(
        "recency_days", "numeric", [5, 100, 200, 300, 50], [0, 20, 80, 300, 400],
        tmp_path / "sub" / "drift_recency_days.png", edges=(7.0, 30.0, 90.0),
    )  # fmt: skip
    assert path == tmp_path / "sub" / "drift_recency_days.png"
    assert_png(path)


def test_categorical_chart_with_unseen_and_vanished_categories(tmp_path: Path) -> None:
    path = distribution_chart(
        "country", "categorical", {"NL": 500, "DE": 300, "FR": 200},
        {"NL": 450, "US": 300, "__null__": 10}, tmp_path / "drift_country.png",
    )  # fmt: skip
    assert_png(path)


def test_empty_current_side_does_not_crash(tmp_path: Path) -> None:
    assert_png(distribution_chart("x", "numeric", [0, 5, 5], [0, 0, 0], tmp_path / "a.png",
                                  edges=(1.0,)))  # fmt: skip
    assert_png(distribution_chart("c", "categorical", {"a": 3}, {}, tmp_path / "b.png"))


@pytest.mark.parametrize(
    ("kind", "reference", "current", "error"),
    [
        ("numeric", {"a": 1}, {"a": 1}, TypeError),
        ("categorical", [1, 2], [1, 2], TypeError),
        ("ordinal", [1, 2], [1, 2], ValueError),
    ],
)
def test_distribution_chart_rejects_wrong_input(
    tmp_path: Path, kind: str, reference: object, current: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        distribution_chart("x", kind, reference, current, tmp_path / "x.png")  # type: ignore[arg-type]
    assert not (tmp_path / "x.png").exists()


def test_metric_over_time_chart_with_versions_and_null_values(tmp_path: Path) -> None:
    path = metric_over_time_chart(performance_rows(), "roc_auc", tmp_path / "auc.png")
    assert_png(path)
    assert_png(metric_over_time_chart(performance_rows(), "log_loss", tmp_path / "none.png"))


def test_write_charts_writes_every_chart_at_its_name(tmp_path: Path) -> None:
    reference = DriftReference(
        numeric={"recency_days": NumericReference((7.0, 30.0), (0, 40, 40, 20))},
        categorical={"country": {"NL": 60, "DE": 40}},
        scores=NumericReference((0.2, 0.5), (0, 50, 30, 20)),
    )
    out = tmp_path / "charts"
    paths = write_charts(
        out,
        reference=reference,
        current_numeric={"recency_days": (3, 10, 30, 57)},
        current_categorical={"country": {"NL": 30, "US": 70}},
        current_scores=(0, 20, 30, 50),
        performance=performance_rows(),
        metrics=("roc_auc", "brier"),
    )
    names = [p.name for p in paths]
    assert names == [
        "drift_recency_days.png",
        "drift_country.png",
        "drift_score.png",
        "performance_roc_auc.png",
        "performance_brier.png",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for path in paths:
        assert path.parent == out
        assert_png(path)


def test_write_charts_needs_current_counts_for_every_reference_feature(tmp_path: Path) -> None:
    reference = DriftReference(
        numeric={"recency_days": NumericReference((7.0,), (0, 5, 5))}, categorical={"country": {}}
    )
    with pytest.raises(ValueError, match=r"\['country'\]"):
        write_charts(tmp_path, reference=reference, current_numeric={"recency_days": (0, 1, 1)})
    assert list(tmp_path.iterdir()) == []


def test_write_charts_draws_the_real_drift_counts(tmp_path: Path) -> None:
    from retailml.monitoring.drift import build_reference, numeric_counts
    from retailml.training.synthetic import make_customer_features

    reference = build_reference(make_customer_features(400, seed=1))
    drifted = make_customer_features(300, seed=2, drift=True)  # adds the unseen country "US"
    current_numeric = {
        feature: numeric_counts(
            np.asarray(drifted.column(feature).to_numpy(zero_copy_only=False), dtype=float),
            ref.edges,
        )
        for feature, ref in reference.numeric.items()
    }
    current_categorical = build_reference(drifted).categorical
    assert "US" in current_categorical["country"] and "US" not in reference.categorical["country"]
    paths = write_charts(
        tmp_path,
        reference=reference,
        current_numeric=current_numeric,
        current_categorical=current_categorical,
    )
    assert len(paths) == len(reference.numeric) + len(reference.categorical)
    for path in paths:
        assert_png(path)
