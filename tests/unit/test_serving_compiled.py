"""The compiled inference path scores exactly like the trained pipeline, for every candidate
the trainer's search can produce, and the pipeline serves whatever is not reproduced."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from retailml.features.spec import CATEGORICAL_FEATURES, FEATURES, LABEL, NUMERIC_FEATURES
from retailml.serving import compiled as compiled_module
from retailml.serving.compiled import TREE_WALK_MAX_ROWS, Unsupported, compile_pipeline
from retailml.serving.model import ServedModel, compile_verified, reference_values, to_frame
from retailml.training.churn import build_pipeline, candidate_grid, feature_reference
from retailml.training.common import feature_frame
from retailml.training.synthetic import make_churn_training, make_customer_features
from tests.serving_support import FakeLoadedModel, FakeModelVersion

# Bit-for-bit in practice (the trees agree exactly; logistic regression to an ulp); the
# bound leaves room for BLAS summing a matrix product in another order.
TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def training() -> tuple[Any, np.ndarray]:
    data = make_churn_training(1_000, 5, seed=3)
    x = feature_frame(data)
    return x, data.column(LABEL).to_numpy(zero_copy_only=False).astype(np.int64)


@pytest.fixture(scope="module")
def trainer_pipelines(training) -> dict[str, Pipeline]:
    """Every candidate of the trainer's randomized search, fitted like the trainer fits."""
    x, y = training
    with threadpool_limits(1):
        return {c.name: build_pipeline(c.make()).fit(x, y) for c in candidate_grid(0, n_iter=2)}


def _records() -> list[dict[str, Any]]:
    """Customers like the online store holds, a drifted population (an unseen country,
    longer absences), missing values of every kind, extreme and integer values."""
    normal = feature_frame(make_customer_features(1_500, seed=7)).to_dict("records")
    drifted = feature_frame(make_customer_features(500, seed=8, drift=True)).to_dict("records")
    base = dict(normal[0])
    edge: list[dict[str, Any]] = [
        {f: None for f in FEATURES},
        {**base, **{f: None for f in CATEGORICAL_FEATURES}},
        {**base, **{f: math.nan for f in NUMERIC_FEATURES}},
        {**base, "country": "ZZ", "loyalty_tier": "platinum", "signup_channel": ""},
        {**base, **{f: 0 for f in NUMERIC_FEATURES}},
        {**base, **{f: 10**12 for f in NUMERIC_FEATURES}},
        {**base, **{f: -1e12 for f in NUMERIC_FEATURES}},
        {**base, "recency_days": 3, "tenure_days": 400},
    ]
    return normal + drifted + edge


RECORDS = _records()


def _compiled(pipeline: Pipeline):
    compiled, info = compile_verified(pipeline, reference_values(pipeline, {}))
    assert compiled is not None, info
    assert info["path"] == "compiled"
    return compiled


def test_the_search_produces_every_family(trainer_pipelines):
    families = {type(p[-1]).__name__ for p in trainer_pipelines.values()}
    assert families == {
        "LogisticRegression",
        "RandomForestClassifier",
        "HistGradientBoostingClassifier",
    }


@pytest.mark.parametrize("name", [c.name for c in candidate_grid(0, n_iter=2)])
def test_compiled_scores_equal_the_pipeline(trainer_pipelines, name):
    pipeline = trainer_pipelines[name]
    compiled = _compiled(pipeline)
    expected = pipeline.predict_proba(to_frame(RECORDS))
    # one row at a time (the request path), small batches (explanations), a large batch
    single = np.concatenate([compiled.predict_proba([r]) for r in RECORDS[:300]])
    small = np.concatenate(
        [compiled.predict_proba(RECORDS[i : i + 13]) for i in range(0, len(RECORDS), 13)]
    )
    large = compiled.predict_proba(RECORDS)
    assert np.max(np.abs(single - expected[:300])) <= TOLERANCE
    assert np.max(np.abs(small - expected)) <= TOLERANCE
    assert np.max(np.abs(large - expected)) <= TOLERANCE
    assert len(RECORDS) > TREE_WALK_MAX_ROWS  # the large batch took the estimator's own path


@pytest.mark.parametrize("name", ["logistic_1", "random_forest_1", "hist_gradient_boosting_1"])
def test_scores_and_explanations_of_the_served_model_are_unchanged(
    trainer_pipelines, training, name
):
    pipeline = trainer_pipelines[name]
    x, _ = training
    version = FakeModelVersion(
        name="churn",
        version=1,
        metrics={},
        training_fingerprint={"feature_reference": feature_reference(x)},
        created_at=None,
        artifact_sha256="0" * 64,
    )
    fast = ServedModel.from_loaded(FakeLoadedModel(version, pipeline))
    slow = ServedModel.from_loaded(FakeLoadedModel(version, pipeline), fast_path=False)
    assert fast.inference["path"] == "compiled" and fast.compiled is not None
    assert slow.inference["path"] == "pipeline" and slow.compiled is None
    records = RECORDS[::40]
    assert fast.score(records) == pytest.approx(slow.score(records), abs=TOLERANCE)
    fast_explained = fast.explain(records, top=len(FEATURES))
    slow_explained = slow.explain(records, top=len(FEATURES))
    for got, want in zip(fast_explained, slow_explained, strict=True):
        assert [c["feature"] for c in got] == [c["feature"] for c in want] or all(
            # ties in magnitude may order differently; the values must still agree
            math.isclose(a["contribution"], b["contribution"], abs_tol=TOLERANCE)
            for a, b in zip(got, want, strict=True)
        )
        by_feature = {c["feature"]: c["contribution"] for c in want}
        for c in got:
            assert c["contribution"] == pytest.approx(by_feature[c["feature"]], abs=TOLERANCE)
    described = fast.describe()["inference"]
    assert described["estimator"] == type(pipeline[-1]).__name__
    assert described["verified_max_abs_diff"] <= TOLERANCE


def _pipeline(preprocess: ColumnTransformer, estimator: Any, training) -> Pipeline:
    x, y = training
    return Pipeline([("preprocess", preprocess), ("model", estimator)]).fit(x, y)


def _numeric_then(*steps: Any) -> Pipeline:
    return Pipeline([(f"s{i}", s) for i, s in enumerate(steps)])


def _onehot() -> Pipeline:
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda: (
                ColumnTransformer(
                    [
                        (
                            "n",
                            _numeric_then(SimpleImputer(add_indicator=True), StandardScaler()),
                            list(NUMERIC_FEATURES),
                        ),
                        ("c", _onehot(), list(CATEGORICAL_FEATURES)),
                    ]
                ),
                LogisticRegression(max_iter=500),
            ),
            "add_indicator",
        ),
        (
            lambda: (
                ColumnTransformer(
                    [
                        ("n", SimpleImputer(strategy="median"), list(NUMERIC_FEATURES)),
                        ("c", _onehot(), list(CATEGORICAL_FEATURES)),
                    ]
                ),
                GradientBoostingClassifier(n_estimators=10, random_state=0),
            ),
            "GradientBoostingClassifier",
        ),
        (
            lambda: (
                ColumnTransformer(
                    [
                        (
                            "n",
                            _numeric_then(SimpleImputer(strategy="median"), StandardScaler()),
                            list(NUMERIC_FEATURES),
                        ),
                        (
                            "c",
                            Pipeline(
                                [
                                    ("i", SimpleImputer(strategy="constant", fill_value="x")),
                                    ("o", OneHotEncoder(min_frequency=50, sparse_output=False)),
                                ]
                            ),
                            list(CATEGORICAL_FEATURES),
                        ),
                    ]
                ),
                LogisticRegression(max_iter=500),
            ),
            "infrequent",
        ),
    ],
    ids=["imputer-indicator", "other-estimator", "infrequent-categories"],
)
def test_what_is_not_reproduced_is_served_by_the_pipeline(training, make, reason):
    preprocess, estimator = make()
    pipeline = _pipeline(preprocess, estimator, training)
    with pytest.raises(Unsupported, match=reason):
        compile_pipeline(pipeline, NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    version = FakeModelVersion("churn", 1, {}, {}, None, "0" * 64)
    served = ServedModel.from_loaded(FakeLoadedModel(version, pipeline))
    assert served.compiled is None
    assert served.inference["path"] == "pipeline"
    assert reason in served.inference["reason"]
    records = RECORDS[:50]
    expected = pipeline.predict_proba(to_frame(records))[:, 1]
    assert served.score(records) == pytest.approx(list(expected), abs=TOLERANCE)


def test_records_the_compiled_path_cannot_encode_go_to_the_pipeline(training):
    """No numeric imputer: a missing value reaches logistic regression, which refuses it.
    The compiled path hands such a call to the pipeline, so the error is the pipeline's."""
    preprocess = ColumnTransformer(
        [
            ("n", StandardScaler(), list(NUMERIC_FEATURES)),
            ("c", _onehot(), list(CATEGORICAL_FEATURES)),
        ]
    )
    x, y = training
    complete = x.dropna()
    pipeline = Pipeline([("preprocess", preprocess), ("model", LogisticRegression())])
    pipeline.fit(complete, y[complete.index])
    version = FakeModelVersion("churn", 1, {}, {}, None, "0" * 64)
    served = ServedModel.from_loaded(FakeLoadedModel(version, pipeline))
    assert served.inference["path"] == "compiled"
    ok = [r for r in RECORDS[:200] if not any(_missing(r[f]) for f in NUMERIC_FEATURES)]
    expected = pipeline.predict_proba(to_frame(ok))[:, 1]
    assert served.score(ok) == pytest.approx(list(expected), abs=TOLERANCE)
    with pytest.raises(Exception, match="could not score"):
        served.score([{**ok[0], "recency_days": None}])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def test_a_compiled_path_that_disagrees_is_not_served(trainer_pipelines, monkeypatch):
    """The load-time check can fail: a wrong scaler in the compiled form is caught."""
    pipeline = trainer_pipelines["hist_gradient_boosting_1"]
    real = compiled_module._numeric_branch

    def skewed(*args: Any, **kwargs: Any):
        branch = real(*args, **kwargs)
        return compiled_module._NumericBranch(
            branch.columns, branch.start, branch.stop, branch.fill, branch.mean, branch.scale * 1.5
        )

    monkeypatch.setattr(compiled_module, "_numeric_branch", skewed)
    compiled, info = compile_verified(pipeline, reference_values(pipeline, {}))
    assert compiled is None
    assert info["path"] == "pipeline"
    assert "differ" in info["reason"]


def test_both_tree_strategies_find_the_same_leaves(trainer_pipelines):
    """Leaf bit masks (trees of up to 64 leaves) and the level walk (deeper trees) agree,
    and the trainer's search produces forests for both."""
    words = set()
    for name, pipeline in trainer_pipelines.items():
        compiled = _compiled(pipeline)
        forest = getattr(compiled.small, "forest", None)
        if forest is None:
            continue
        words.add(forest.words > 1)
        x = compiled.prepare(RECORDS[:64])
        if type(pipeline[-1]).__name__ == "RandomForestClassifier":
            x = x.astype(np.float32).astype(np.float64)
        if forest.words == 1:
            np.testing.assert_array_equal(forest.leaf_values(x), forest.walk(x), err_msg=name)
            np.testing.assert_array_equal(
                forest.leaf_values(x[:1]), forest.walk(x[:1]), err_msg=name
            )
    assert words == {False, True}
