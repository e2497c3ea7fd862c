"""The fast inference path: a fitted churn pipeline compiled into numpy operations.

``Pipeline(ColumnTransformer, estimator)`` costs milliseconds per request on a one-row
DataFrame, most of it pandas plumbing in the ColumnTransformer and per-tree Python calls
in the ensembles, not arithmetic. :func:`compile_pipeline` reads the fitted parameters
once and scores feature records (plain dicts) with the same arithmetic:

- ``SimpleImputer`` (mean, median, most frequent, constant; missing = NaN or ``None``),
  ``StandardScaler`` and ``OneHotEncoder`` (dense, ``handle_unknown`` ignore or error, no
  dropped or infrequent categories) write into one float64 matrix at the
  ColumnTransformer's own output positions;
- ``LogisticRegression``: ``expit(X @ coef_.T + intercept_)`` as scikit-learn computes it;
- ``RandomForestClassifier`` and ``HistGradientBoostingClassifier``: every tree as bit
  masks over its leaves (QuickScorer), all splits of all trees tested at once, no walk;
  leaf values summed in the estimator's own order (``cumsum``, like its ``+=`` loop);
  forest inputs rounded to float32 first, as scikit-learn's trees compare them.

For larger batches (more than :data:`TREE_WALK_MAX_ROWS` rows) the estimator's own
``predict_proba`` runs on the prepared matrix instead (still no pandas). Anything not
recognised raises :class:`Unsupported` at compile time and the pipeline serves; a record
the compiled form cannot encode (an unhashable category, a missing value where the
estimator takes none, an unknown category with ``handle_unknown="error"``) raises
:class:`Delegate` at scoring time and that call goes to the pipeline, whose own behaviour
(including its errors) then applies. :meth:`CompiledPipeline.verify` compares both on
probe records when a model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

TREE_WALK_MAX_ROWS = 64
VERIFY_TOLERANCE = 1e-9


class Unsupported(Exception):
    """The pipeline has a step or setting the compiled path does not reproduce."""


class Delegate(Exception):
    """This call's records need the pipeline (the compiled path cannot encode them)."""


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def _to_float(value: Any) -> float:
    """A record value as the float ``pd.to_numeric(errors="coerce")`` makes of it."""
    if value is None:
        return math.nan
    if isinstance(value, float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


# -- preprocessing -------------------------------------------------------------------------
@dataclass(frozen=True)
class _NumericBranch:
    """Numeric columns -> impute (NaN -> statistic) -> scale, into ``out[:, start:stop]``."""

    columns: tuple[str, ...]
    start: int
    stop: int
    fill: np.ndarray | None  # per-column statistic, None: no imputer
    mean: np.ndarray | None
    scale: np.ndarray | None

    def write(self, records: Sequence[Mapping[str, Any]], out: np.ndarray) -> None:
        block = np.array([[_to_float(r.get(c)) for c in self.columns] for r in records])
        if self.fill is not None:
            missing = np.isnan(block)
            if missing.any():
                block = np.where(missing, self.fill, block)
        with np.errstate(over="ignore", invalid="ignore"):  # extreme inputs: inf, as sklearn
            if self.mean is not None:
                block -= self.mean
            if self.scale is not None:
                block /= self.scale
        out[:, self.start : self.stop] = block


@dataclass(frozen=True)
class _CategoryColumn:
    name: str
    imputers: tuple[tuple[str, Any], ...]  # ("nan" | "none", fill value), in order
    index: dict[Any, int]  # category -> output offset within the column's block
    nan_index: int | None  # offset of a NaN category, if the encoder learnt one
    offset: int  # first output column of this feature
    ignore_unknown: bool

    def position(self, value: Any) -> int | None:
        for missing, fill in self.imputers:
            if (missing == "nan" and _is_nan(value)) or (missing == "none" and value is None):
                value = fill
        if _is_nan(value):
            found = self.nan_index
        else:
            try:
                found = self.index.get(value)
            except TypeError:  # unhashable: let the pipeline say what it makes of it
                raise Delegate(f"{self.name}: unhashable value") from None
        if found is None:
            if not self.ignore_unknown:
                raise Delegate(f"{self.name}: unknown category")
            return None
        return self.offset + found


@dataclass(frozen=True)
class _CategoricalBranch:
    """Categorical columns -> imputers -> one-hot, into ``out[:, start:stop]``."""

    columns: tuple[_CategoryColumn, ...]

    def write(self, records: Sequence[Mapping[str, Any]], out: np.ndarray) -> None:
        for i, record in enumerate(records):
            for column in self.columns:
                position = column.position(record.get(column.name))
                if position is not None:
                    out[i, position] = 1.0


def _imputer(step: Any, n_columns: int) -> tuple[str, np.ndarray]:
    """(missing kind, per-column fill values) of a fitted ``SimpleImputer``."""
    from sklearn.impute import SimpleImputer

    if type(step) is not SimpleImputer:
        raise Unsupported(f"{type(step).__name__} is not a SimpleImputer")
    if step.add_indicator:
        raise Unsupported("SimpleImputer(add_indicator=True)")
    if step.missing_values is None:
        missing = "none"
    elif _is_nan(step.missing_values):
        missing = "nan"
    else:
        raise Unsupported(f"SimpleImputer(missing_values={step.missing_values!r})")
    stats = np.asarray(step.statistics_)
    if stats.shape != (n_columns,):
        raise Unsupported("SimpleImputer statistics do not match its columns")
    if step.strategy != "constant" and any(_is_nan(v) or v is None for v in stats.tolist()):
        # scikit-learn drops such all-missing columns unless keep_empty_features is set
        raise Unsupported("SimpleImputer with an empty (all-missing) training column")
    return missing, stats


def _steps(transformer: Any) -> list[Any]:
    from sklearn.pipeline import Pipeline

    if type(transformer) is Pipeline:
        steps = [s for _, s in transformer.steps]
        if any(s is None or s == "passthrough" for s in steps):
            raise Unsupported("a passthrough step inside a ColumnTransformer branch")
        return steps
    return [transformer]


def _numeric_branch(
    transformer: Any, columns: tuple[str, ...], start: int, stop: int
) -> _NumericBranch:
    from sklearn.preprocessing import StandardScaler

    fill = mean = scale = None
    steps = [] if transformer == "passthrough" else _steps(transformer)
    for step in steps:
        if type(step) is StandardScaler:
            if mean is not None or scale is not None:
                raise Unsupported("two scalers in one branch")
            if step.with_mean and step.mean_ is not None:
                mean = np.asarray(step.mean_, dtype="float64")
            if step.with_std and step.scale_ is not None:
                scale = np.asarray(step.scale_, dtype="float64")
        else:
            if fill is not None or mean is not None or scale is not None:
                raise Unsupported("numeric imputation must come first and once")
            missing, stats = _imputer(step, len(columns))
            if missing != "nan":
                continue  # float columns never hold None: such an imputer changes nothing
            try:
                fill = stats.astype("float64")
            except (TypeError, ValueError):
                raise Unsupported("non-numeric fill value for numeric columns") from None
    if stop - start != len(columns):
        raise Unsupported("numeric branch output width differs from its columns")
    return _NumericBranch(columns, start, stop, fill, mean, scale)


def _categorical_branch(
    transformer: Any, columns: tuple[str, ...], start: int, stop: int
) -> _CategoricalBranch:
    from sklearn.preprocessing import OneHotEncoder

    steps = _steps(transformer)
    encoder = steps[-1]
    if type(encoder) is not OneHotEncoder:
        raise Unsupported(f"categorical branch ends with {type(encoder).__name__}")
    if encoder.drop_idx_ is not None or getattr(encoder, "_infrequent_enabled", False):
        raise Unsupported("OneHotEncoder with dropped or infrequent categories")
    if encoder.handle_unknown not in ("ignore", "error"):
        raise Unsupported(f"OneHotEncoder(handle_unknown={encoder.handle_unknown!r})")
    imputers = [_imputer(step, len(columns)) for step in steps[:-1]]
    widths = [len(c) for c in encoder.categories_]
    if len(widths) != len(columns) or sum(widths) != stop - start:
        raise Unsupported("one-hot output width differs from its categories")
    out, offset = [], start
    for j, name in enumerate(columns):
        index: dict[Any, int] = {}
        nan_index = None
        for k, category in enumerate(encoder.categories_[j].tolist()):
            if _is_nan(category):
                nan_index = k
            else:
                index[category] = k
        chain = tuple((missing, stats[j]) for missing, stats in imputers)
        out.append(
            _CategoryColumn(
                name, chain, index, nan_index, offset, encoder.handle_unknown == "ignore"
            )
        )
        offset += widths[j]
    return _CategoricalBranch(tuple(out))


def _preprocessing(preprocess: Any, numeric: set[str], categorical: set[str]) -> tuple[Any, int]:
    """The branches of a fitted ``ColumnTransformer`` and its output width."""
    from sklearn.compose import ColumnTransformer

    if type(preprocess) is not ColumnTransformer:
        raise Unsupported(f"first step is {type(preprocess).__name__}, not a ColumnTransformer")
    if getattr(preprocess, "sparse_output_", False):
        raise Unsupported("ColumnTransformer with sparse output")
    names_in = [str(c) for c in getattr(preprocess, "feature_names_in_", [])]
    if not names_in or not set(names_in) <= numeric | categorical:
        raise Unsupported("ColumnTransformer was not fitted on the feature contract's columns")
    slices = preprocess.output_indices_
    width = max((s.stop for s in slices.values()), default=0)
    branches: list[Any] = []
    for name, transformer, selected in preprocess.transformers_:
        sl = slices.get(name, slice(0, 0))
        if transformer == "drop" or sl.stop == sl.start:
            continue
        if isinstance(selected, str):
            selected = [selected]
        selected = list(selected)
        if selected and all(isinstance(c, int | np.integer) for c in selected):
            selected = [names_in[int(c)] for c in selected]
        if not selected or not all(isinstance(c, str) for c in selected):
            raise Unsupported(f"branch {name!r} selects columns by something other than names")
        cols = tuple(selected)
        if set(cols) <= numeric:
            branches.append(_numeric_branch(transformer, cols, sl.start, sl.stop))
        elif set(cols) <= categorical and transformer != "passthrough":
            branches.append(_categorical_branch(transformer, cols, sl.start, sl.stop))
        else:
            raise Unsupported(f"branch {name!r} mixes or passes through categorical columns")
    return tuple(branches), width


# -- estimators ------------------------------------------------------------------------------
class _Forest:
    """Every tree of an ensemble as bit masks over its leaves, scored without walking.

    QuickScorer (Lucchese et al., SIGIR 2015): number each tree's leaves left to right.
    A node whose test sends a row right rules out every leaf of its left subtree, a
    contiguous range of leaf numbers; the row's leaf is the leftmost one no such node
    rules out. So a row is scored with a fixed handful of array operations whatever the
    depth: evaluate every split at once, AND the masks of the nodes that go right per
    tree, take the lowest set bit. Missing values go where the node's
    ``missing_go_to_left`` says, as in scikit-learn.

    Trees with more than 64 leaves (deep forests) need several words per mask, and there
    walking every tree one level per step (``node = child[2 * node + go_right[node]]``)
    is cheaper; both give the same leaf.
    """

    WORD = 64

    def __init__(
        self,
        trees: Sequence[tuple[np.ndarray, ...]],
        n_features: int,
    ) -> None:
        # per tree: (feature, threshold, left, right, missing_left, is_leaf, value)
        n_leaves = [int(np.count_nonzero(t[5])) for t in trees]
        words = max(1, -(-max(n_leaves, default=1) // self.WORD))
        full = np.uint64(0xFFFFFFFFFFFFFFFF)
        feature, threshold, missing_left, masks, starts = [], [], [], [], []
        values: list[np.ndarray] = []
        total = 0
        # the level walk's arrays (all nodes of all trees, leaves pointing at themselves)
        w_feature, w_threshold, w_missing, w_child, w_value, w_roots = [], [], [], [], [], []
        base = depth = 0
        for f, t, left, right, ml, leaf, v in trees:
            nodes = np.arange(len(f))
            w_roots.append(base)
            w_child.append(
                np.stack(
                    [np.where(leaf, nodes, left), np.where(leaf, nodes, right)], axis=1
                ).ravel()
                + base
            )
            w_feature.append(np.where(leaf, 0, f))
            w_threshold.append(np.where(leaf, np.inf, t))
            w_missing.append(np.where(leaf, True, ml))
            w_value.append(np.asarray(v))
            base += len(f)
            leaf_number = np.full(len(f), -1)
            first_leaf = np.zeros(len(f), dtype=np.int64)  # of each node's subtree
            end_leaf = np.zeros(len(f), dtype=np.int64)
            order: list[int] = []
            stack: list[tuple[int, bool]] = [(0, False)]
            level = np.zeros(len(f), dtype=np.int64)
            while stack:  # post-order over an explicit stack: left subtree first
                node, done = stack.pop()
                depth = max(depth, int(level[node]))
                if not leaf[node] and not done:
                    level[left[node]] = level[right[node]] = level[node] + 1
                if leaf[node]:
                    leaf_number[node] = len(order)
                    order.append(node)
                    first_leaf[node], end_leaf[node] = leaf_number[node], leaf_number[node] + 1
                elif done:
                    first_leaf[node] = first_leaf[left[node]]
                    end_leaf[node] = end_leaf[right[node]]
                else:
                    stack += [(node, True), (int(right[node]), False), (int(left[node]), False)]
            internal = np.flatnonzero(~leaf)
            starts.append(total)
            # a first, always-left entry per tree keeps every tree's segment non-empty
            feature.append(np.concatenate([[0], f[internal]]))
            threshold.append(np.concatenate([[np.inf], t[internal]]))
            missing_left.append(np.concatenate([[True], ml[internal]]))
            lo = first_leaf[left[internal]][:, None]
            hi = end_leaf[left[internal]][:, None]
            positions = np.arange(words * self.WORD)
            cleared = (positions >= lo) & (positions < hi)  # the left subtree's leaves
            packed = np.packbits(cleared, axis=1, bitorder="little").view("<u8")
            masks.append(np.concatenate([np.full((1, words), full), ~packed]).astype(np.uint64))
            values.append(np.asarray(v)[order])
            total += len(internal) + 1
        self.feature = np.concatenate(feature).astype(np.intp)
        if self.feature.size and self.feature.max() >= n_features:
            raise Unsupported("a tree splits on a feature outside the prepared matrix")
        self.threshold = np.concatenate(threshold).astype("float64")
        self.missing_left = np.concatenate(missing_left).astype(bool)
        self.masks = np.concatenate(masks)
        self.starts = np.asarray(starts, dtype=np.intp)
        self.full = full
        width = max(len(v) for v in values)
        shape = (len(values), width, *values[0].shape[1:])
        self.values = np.zeros(shape, dtype="float64")  # (trees, leaves[, classes])
        for i, v in enumerate(values):
            self.values[i, : len(v)] = v
        self.tree_index = np.arange(len(values))
        self.words = words
        self.walk_feature = np.concatenate(w_feature).astype(np.intp)
        self.walk_threshold = np.concatenate(w_threshold).astype("float64")
        self.walk_missing_left = np.concatenate(w_missing).astype(bool)
        self.walk_child = np.concatenate(w_child).astype(np.intp)
        self.walk_value = np.concatenate(w_value).astype("float64")
        self.walk_roots = np.asarray(w_roots, dtype=np.intp)
        self.depth = depth

    def leaf_values(self, x: np.ndarray) -> np.ndarray:
        """(rows, trees[, ...]) leaf values for the float64 matrix ``x``."""
        if self.words > 1:
            return self.walk(x)
        v = x[:, self.feature]  # (rows, splits): the value each split tests
        with np.errstate(invalid="ignore"):
            go_right = v > self.threshold
        if np.isnan(x).any():
            go_right = np.where(np.isnan(v), ~self.missing_left, go_right)
        kept = np.where(go_right, self.masks[:, 0], self.full)
        alive = np.bitwise_and.reduceat(kept, self.starts, axis=1)  # (rows, trees)
        lowest = alive & (~alive + np.uint64(1))  # the lowest set bit: the exit leaf
        leaf = np.frexp(lowest.astype(np.float64))[1] - 1  # exact: a power of two
        return self.values[self.tree_index, leaf]

    def walk(self, x: np.ndarray) -> np.ndarray:
        """The same leaves by walking all trees together, one level per step."""
        n = x.shape[0]
        v = x[:, self.walk_feature]  # (rows, nodes)
        with np.errstate(invalid="ignore"):
            go_right = v > self.walk_threshold
        if np.isnan(x).any():
            go_right = np.where(np.isnan(v), ~self.walk_missing_left, go_right)
        right = go_right.view(np.uint8).ravel()
        if n == 1:
            node = self.walk_roots
            for _ in range(self.depth):
                node = self.walk_child[2 * node + right[node]]
            return self.walk_value[node][None]
        offsets = (np.arange(n, dtype=np.intp) * len(self.walk_feature))[:, None]
        node = np.broadcast_to(self.walk_roots, (n, len(self.walk_roots)))
        for _ in range(self.depth):
            node = self.walk_child[2 * node + right[offsets + node]]
        return self.walk_value[node]


def _forest_estimator(est: Any, n_features: int) -> Callable[[np.ndarray], np.ndarray]:
    if est.n_outputs_ != 1:
        raise Unsupported("multi-output forest")
    trees = []
    for tree_est in est.estimators_:
        tree = tree_est.tree_
        if tree.n_outputs != 1:
            raise Unsupported("multi-output tree")
        leaf = tree.children_left == -1
        value = tree.value[:, 0, : est.n_classes_]
        trees.append(
            (
                tree.feature,
                tree.threshold,
                tree.children_left,
                tree.children_right,
                tree.missing_go_to_left.astype(bool),
                leaf,
                value,
            )
        )
    forest = _Forest(trees, n_features)
    n_trees = len(est.estimators_)

    def proba(x: np.ndarray) -> np.ndarray:
        # scikit-learn's trees take float32 input (thresholds stay float64)
        x32 = x.astype(np.float32)
        if np.isinf(x32).any():
            raise Delegate("a value beyond the float32 range the trees take")
        values = forest.leaf_values(x32.astype(np.float64))
        total = np.cumsum(values, axis=1)[:, -1, :]  # 0 + t1 + t2 + ... in tree order
        return total / n_trees

    proba.forest = forest  # type: ignore[attr-defined]
    return proba


def _hgb_estimator(est: Any, n_features: int) -> Callable[[np.ndarray], np.ndarray]:
    if est.n_trees_per_iteration_ != 1 or len(est.classes_) != 2:
        raise Unsupported("HistGradientBoosting with more than two classes")
    if getattr(est, "_preprocessor", None) is not None or est.is_categorical_ is not None:
        raise Unsupported("HistGradientBoosting with native categorical features")
    if type(est._loss).__name__ != "HalfBinomialLoss":
        raise Unsupported(f"HistGradientBoosting loss {type(est._loss).__name__}")
    trees = []
    for (predictor,) in est._predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise Unsupported("HistGradientBoosting tree with a categorical split")
        leaf = nodes["is_leaf"].astype(bool)
        trees.append(
            (
                nodes["feature_idx"],
                nodes["num_threshold"],
                nodes["left"].astype(np.intp),
                nodes["right"].astype(np.intp),
                nodes["missing_go_to_left"].astype(bool),
                leaf,
                nodes["value"],
            )
        )
    forest = _Forest(trees, n_features)
    baseline = float(np.asarray(est._baseline_prediction).ravel()[0])

    def proba(x: np.ndarray) -> np.ndarray:
        values = forest.leaf_values(x)
        n = values.shape[0]
        # raw = baseline; raw += tree_1; raw += tree_2 ... (the estimator's order)
        raw = np.cumsum(np.concatenate([np.full((n, 1), baseline), values], axis=1), axis=1)
        p = expit(raw[:, -1])
        return np.stack([1 - p, p], axis=1)

    proba.forest = forest  # type: ignore[attr-defined]
    return proba


def _logistic_estimator(est: Any, n_features: int) -> Callable[[np.ndarray], np.ndarray]:
    coef = np.asarray(est.coef_, dtype="float64")
    if coef.shape != (1, n_features) or len(est.classes_) != 2:
        raise Unsupported("LogisticRegression that is not binary on the prepared matrix")
    coef_t = coef.T
    intercept = np.asarray(est.intercept_, dtype="float64")

    def proba(x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            p = expit((x @ coef_t + intercept).ravel())
        return np.stack([1 - p, p], axis=1)

    return proba


# -- the compiled pipeline -------------------------------------------------------------------
@dataclass
class CompiledPipeline:
    """Scores feature records like ``pipeline.predict_proba(to_frame(records))``."""

    pipeline: Any
    estimator_name: str
    branches: tuple[Any, ...]
    width: int
    small: Callable[[np.ndarray], np.ndarray]  # the compiled estimator (few rows)
    takes_nan: bool  # whether the estimator accepts NaN in its input

    def prepare(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The ColumnTransformer's output for ``records`` (float64, rows x width)."""
        out = np.zeros((len(records), self.width))
        for branch in self.branches:
            branch.write(records, out)
        if not self.takes_nan and not np.isfinite(out).all():
            raise Delegate("missing or infinite values reach an estimator that takes none")
        return out

    def predict_proba(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        x = self.prepare(records)
        if len(records) <= TREE_WALK_MAX_ROWS:
            return self.small(x)
        return np.asarray(self.pipeline[-1].predict_proba(x), dtype="float64")

    def verify(
        self, probes: Sequence[Mapping[str, Any]], frame: Callable[[Sequence[Any]], Any]
    ) -> float:
        """Largest |compiled - pipeline| probability over ``probes`` (one row and all)."""
        expected = np.asarray(self.pipeline.predict_proba(frame(probes)), dtype="float64")
        worst = 0.0
        for start in range(0, len(probes), TREE_WALK_MAX_ROWS):
            chunk = probes[start : start + TREE_WALK_MAX_ROWS]
            got = self.predict_proba(chunk)
            worst = max(worst, float(np.max(np.abs(got - expected[start : start + len(chunk)]))))
        for i in range(min(len(probes), 8)):
            got = self.predict_proba(probes[i : i + 1])
            worst = max(worst, float(np.max(np.abs(got - expected[i : i + 1]))))
        if len(probes) > TREE_WALK_MAX_ROWS:
            got = self.predict_proba(probes)
            worst = max(worst, float(np.max(np.abs(got - expected))))
        return worst


def compile_pipeline(
    pipeline: Any, numeric: Sequence[str], categorical: Sequence[str]
) -> CompiledPipeline:
    """Compile a fitted ``Pipeline(ColumnTransformer, estimator)``; :class:`Unsupported`
    names what is not reproduced."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    if type(pipeline) is not Pipeline or len(pipeline.steps) != 2:
        raise Unsupported("not a two-step Pipeline(ColumnTransformer, estimator)")
    preprocess, est = pipeline.steps[0][1], pipeline.steps[1][1]
    branches, width = _preprocessing(preprocess, set(numeric), set(categorical))
    if getattr(est, "feature_names_in_", None) is not None:
        raise Unsupported("the estimator was fitted on a DataFrame (set_output pandas)")
    if list(getattr(est, "classes_", [])) != list(getattr(pipeline, "classes_", [])):
        raise Unsupported("estimator classes differ from the pipeline's")
    builders: dict[type, tuple[Callable[[Any, int], Any], bool]] = {
        LogisticRegression: (_logistic_estimator, False),
        RandomForestClassifier: (_forest_estimator, True),
        HistGradientBoostingClassifier: (_hgb_estimator, True),
    }
    if type(est) not in builders:
        raise Unsupported(f"estimator {type(est).__name__} is not compiled")
    if getattr(est, "n_features_in_", width) != width:
        raise Unsupported("estimator input width differs from the ColumnTransformer output")
    build, takes_nan = builders[type(est)]
    small = build(est, width)
    return CompiledPipeline(pipeline, type(est).__name__, branches, width, small, takes_nan)


def probe_records(
    pipeline: Any,
    numeric: Sequence[str],
    categorical: Sequence[str],
    reference: Mapping[str, Any],
    *,
    n: int = 96,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Feature records around what the pipeline learnt: near the scaler's mean +- a few
    standard deviations, at tree thresholds, missing values, every known category, an
    unknown one and ``None``. Used to check the compiled path against the pipeline."""
    rng = np.random.default_rng(seed)
    centre: dict[str, float] = {}
    spread: dict[str, float] = {}
    thresholds: dict[str, list[float]] = {}
    categories: dict[str, list[Any]] = {c: [] for c in categorical}
    preprocess = pipeline.steps[0][1] if hasattr(pipeline, "steps") else None
    for _, transformer, columns in getattr(preprocess, "transformers_", []):
        if not isinstance(columns, list | tuple):
            continue
        for step in _steps_or_empty(transformer):
            mean = getattr(step, "mean_", None)
            scale = getattr(step, "scale_", None)
            cats = getattr(step, "categories_", None)
            for j, col in enumerate(columns):
                if mean is not None and len(mean) == len(columns):
                    centre[col] = float(mean[j])
                if scale is not None and len(scale) == len(columns):
                    spread[col] = float(scale[j])
                if cats is not None and len(cats) == len(columns) and col in categories:
                    categories[col] = [c for c in cats[j].tolist() if isinstance(c, str)]
            # thresholds of the estimator's splits on this numeric column (mapped back)
            if mean is not None and scale is not None:
                est = pipeline.steps[-1][1]
                for j, col in enumerate(columns):
                    thresholds[col] = _raw_thresholds(est, columns, j, mean, scale, preprocess)
    records = []
    for i in range(n):
        record: dict[str, Any] = {}
        for col in numeric:
            mu = centre.get(col, _as_float(reference.get(col), 0.0))
            sd = spread.get(col, 1.0) or 1.0
            kind = i % 6
            if kind == 5 and i > 0:
                value: Any = None
            elif kind == 4 and thresholds.get(col):
                value = float(rng.choice(thresholds[col]))
            else:
                value = float(mu + sd * rng.normal(0.0, 1.5))
            record[col] = value
        for col in categorical:
            known = categories.get(col) or []
            options = [*known, "__probe_unknown__", None]
            record[col] = options[int(rng.integers(len(options)))]
        records.append(record)
    return records


def _as_float(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _steps_or_empty(transformer: Any) -> list[Any]:
    steps = getattr(transformer, "steps", None)
    if steps is not None:
        return [s for _, s in steps]
    return [] if isinstance(transformer, str) else [transformer]


def _raw_thresholds(
    est: Any, columns: Sequence[str], j: int, mean: np.ndarray, scale: np.ndarray, preprocess: Any
) -> list[float]:
    """Split thresholds of the estimator on input column ``j``, in raw (unscaled) units."""
    names = [str(c) for c in columns]
    try:
        out_names = list(preprocess.get_feature_names_out())
    except Exception:
        return []
    wanted = [k for k, name in enumerate(out_names) if name.endswith("__" + names[j])]
    if not wanted:
        return []
    position = wanted[0]
    found: list[float] = []
    for tree_est in getattr(est, "estimators_", [])[:5]:
        tree = tree_est.tree_
        mask = tree.feature == position
        found.extend((tree.threshold[mask] * scale[j] + mean[j]).tolist())
    for (predictor,) in getattr(est, "_predictors", [])[:5]:
        nodes = predictor.nodes
        mask = (nodes["feature_idx"] == position) & (nodes["is_leaf"] == 0)
        found.extend((nodes["num_threshold"][mask] * scale[j] + mean[j]).tolist())
    return found[:50]
