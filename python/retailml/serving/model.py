"""The served model: loaded from the registry, swapped in the background when production moves.

Requests take a reference to the current :class:`ServedModel` once and use it to the end, so
a swap never changes the model under an in-flight request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ..features.spec import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES
from ..filelock import exclusive_lock
from .compiled import (
    VERIFY_TOLERANCE,
    CompiledPipeline,
    Delegate,
    Unsupported,
    compile_pipeline,
    probe_records,
)

log = logging.getLogger(__name__)

REFERENCE_KEY = "feature_reference"


class ModelVersionLike(Protocol):
    name: str
    version: int
    metrics: dict[str, Any]
    training_fingerprint: dict[str, Any]
    created_at: Any
    artifact_sha256: str


class LoadedModelLike(Protocol):
    version: ModelVersionLike
    model: Any


class RegistryLike(Protocol):
    """The part of ``retailml.registry`` serving uses."""

    def load(self, name: str, version_or_alias: str = "production") -> LoadedModelLike: ...

    def get(self, name: str, version_or_alias: str = "production") -> ModelVersionLike: ...


class ShortLivedRegistry:
    """Opens the registry for each call and closes its warehouse right after.

    The API checks the registry rarely; holding no warehouse connection in between matters
    for embedded DuckDB (one process at a time may hold the file) and lets a dropped
    PostgreSQL connection heal by itself.
    """

    def __init__(
        self,
        open_registry: Callable[[], Any],
        *,
        lock_path: Path | None = None,
        attempts: int = 5,
        backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._open = open_registry
        self.lock_path = lock_path
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._sleep = sleep

    def _open_with_retry(self) -> Any:
        """Open, retrying briefly: another process (the pipeline) may hold the file."""
        for attempt in range(1, self.attempts + 1):
            try:
                return self._open()
            except Exception:
                if attempt == self.attempts:
                    raise
                self._sleep(self.backoff_s * attempt)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """With ``lock_path``: the workers of this host take turns instead of colliding."""
        if self.lock_path is None:
            yield
            return
        with exclusive_lock(self.lock_path):
            yield

    def _call(self, method: str, *args: Any) -> Any:
        with self._exclusive():
            registry = self._open_with_retry()
            try:
                return getattr(registry, method)(*args)
            finally:
                warehouse = getattr(registry, "warehouse", None)
                if warehouse is not None:
                    warehouse.close()

    def get(self, name: str, version_or_alias: str = "production") -> ModelVersionLike:
        return self._call("get", name, version_or_alias)

    def load(self, name: str, version_or_alias: str = "production") -> LoadedModelLike:
        return self._call("load", name, version_or_alias)


class PredictionError(RuntimeError):
    """The model rejected the features (the pipeline raised while scoring)."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def reference_values(pipeline: Any, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """Per-feature training reference values for explanations.

    Taken from ``training_fingerprint["feature_reference"]`` when training recorded it
    (median / most frequent value per feature); otherwise read from the fitted pipeline:
    the statistics of a mean/median/most-frequent ``SimpleImputer`` or the mean of a
    ``StandardScaler`` in the ``ColumnTransformer``. Features with no known reference (e.g.
    categoricals behind a constant imputer) are left out of explanations.
    """
    recorded = fingerprint.get(REFERENCE_KEY) if isinstance(fingerprint, Mapping) else None
    if isinstance(recorded, Mapping):
        return {f: recorded[f] for f in FEATURES if f in recorded and recorded[f] is not None}
    found: dict[str, Any] = {}
    for _, step in getattr(pipeline, "steps", None) or []:
        for _, transformer, columns in getattr(step, "transformers_", None) or []:
            if not isinstance(columns, list | tuple) or not all(
                isinstance(c, str) for c in columns
            ):
                continue
            inner_steps = [s for _, s in getattr(transformer, "steps", None) or []] or [transformer]
            for inner in inner_steps:
                stats = getattr(inner, "mean_", None)
                if getattr(inner, "strategy", None) in ("mean", "median", "most_frequent"):
                    stats = getattr(inner, "statistics_", None)  # not a constant fill value
                if stats is None or len(stats) != len(columns):
                    continue
                for col, value in zip(columns, stats, strict=True):
                    if col in FEATURES and col not in found:
                        found[col] = value.item() if isinstance(value, np.generic) else value
                break
    return found


@dataclass
class ServedModel:
    """One loaded, verified model version and what serving derives from it."""

    name: str
    version: int
    pipeline: Any
    metrics: dict[str, Any]
    training_fingerprint: dict[str, Any]
    created_at: Any
    artifact_sha256: str
    loaded_at: str
    reference: dict[str, Any] = field(default_factory=dict)
    positive_index: int = -1
    compiled: CompiledPipeline | None = None
    inference: dict[str, Any] = field(default_factory=lambda: {"path": "pipeline"})

    @classmethod
    def from_loaded(cls, loaded: LoadedModelLike, *, fast_path: bool = True) -> ServedModel:
        mv, pipeline = loaded.version, loaded.model
        if not callable(getattr(pipeline, "predict_proba", None)):
            raise TypeError(f"{mv.name} v{mv.version} is not a classifier with predict_proba")
        classes = list(getattr(pipeline, "classes_", []))
        positive = next((i for i, c in enumerate(classes) if c in (1, True, "1", "true")), -1)
        fingerprint = dict(mv.training_fingerprint or {})
        reference = reference_values(pipeline, fingerprint)
        compiled, inference = (
            compile_verified(pipeline, reference)
            if fast_path
            else (None, {"path": "pipeline", "reason": "compilation disabled"})
        )
        return cls(
            name=mv.name,
            version=int(mv.version),
            pipeline=pipeline,
            metrics=dict(mv.metrics or {}),
            training_fingerprint=fingerprint,
            created_at=mv.created_at,
            artifact_sha256=mv.artifact_sha256,
            loaded_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            reference=reference,
            positive_index=positive,
            compiled=compiled,
            inference=inference,
        )

    def describe(self) -> dict[str, Any]:
        return _jsonable(
            {
                "name": self.name,
                "version": self.version,
                "created_at": self.created_at,
                "artifact_sha256": self.artifact_sha256,
                "loaded_at": self.loaded_at,
                "metrics": self.metrics,
                "training_fingerprint": self.training_fingerprint,
                "inference": self.inference,
            }
        )

    def _proba(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        proba = None
        if self.compiled is not None:
            try:
                proba = self.compiled.predict_proba(records)
            except Delegate:
                proba = None  # this call's records need the pipeline's own handling
            except Exception:  # a defect of the compiled path must not fail the request
                log.exception(
                    "compiled path of %s v%s failed; using the pipeline", self.name, self.version
                )
                proba = None
        try:
            if proba is None:
                proba = self.pipeline.predict_proba(to_frame(records))
        except Exception as exc:  # the pipeline's own validation (e.g. NaN without imputer)
            raise PredictionError(
                f"model {self.name} v{self.version} could not score: {exc}"
            ) from exc
        positive = np.asarray(proba, dtype="float64")[:, self.positive_index]
        if not np.isfinite(positive).all():
            raise PredictionError(f"model {self.name} v{self.version} returned a non-finite score")
        return positive

    def score(self, records: Sequence[Mapping[str, Any]]) -> list[float]:
        """Churn probability per feature record (records hold every feature in FEATURES)."""
        return self._proba(records).tolist()

    def explain(self, records: Sequence[Mapping[str, Any]], top: int = 5) -> list[list[dict]]:
        """Top contributions per record: score minus the score with the feature at its reference.

        One ``predict_proba`` call over ``len(records) * (1 + features)`` rows.
        """
        features = [f for f in FEATURES if f in self.reference]
        if not records or not features:
            return [[] for _ in records]
        rows: list[dict[str, Any]] = []
        for record in records:
            rows.append(dict(record))
            for f in features:
                rows.append({**record, f: self.reference[f]})
        proba = self._proba(rows)
        width = 1 + len(features)
        out: list[list[dict]] = []
        for i, record in enumerate(records):
            base = proba[i * width]
            contributions = [
                {
                    "feature": f,
                    "value": _jsonable(record[f]),
                    "reference": _jsonable(self.reference[f]),
                    "contribution": float(base - proba[i * width + 1 + j]),
                }
                for j, f in enumerate(features)
            ]
            contributions.sort(key=lambda c: abs(c["contribution"]), reverse=True)
            out.append(contributions[:top])
        return out


def compile_verified(
    pipeline: Any, reference: Mapping[str, Any]
) -> tuple[CompiledPipeline | None, dict[str, Any]]:
    """The compiled fast path of ``pipeline`` if it scores probe records like the pipeline
    (within :data:`~retailml.serving.compiled.VERIFY_TOLERANCE`), and what serves and why."""
    estimator = type(getattr(pipeline, "steps", [[None, pipeline]])[-1][1]).__name__
    try:
        compiled = compile_pipeline(pipeline, NUMERIC_FEATURES, CATEGORICAL_FEATURES)
        probes = probe_records(pipeline, NUMERIC_FEATURES, CATEGORICAL_FEATURES, reference)
        try:
            worst = compiled.verify(probes, to_frame)
        except Exception:
            # A pipeline that refuses missing values (no imputer) is checked on complete
            # records; for incomplete ones the compiled path defers to it anyway.
            probes = [p for p in probes if all(v is not None for v in p.values())]
            worst = compiled.verify(probes, to_frame)
    except Unsupported as exc:
        return None, {"path": "pipeline", "estimator": estimator, "reason": str(exc)}
    except Exception as exc:  # a pipeline that cannot score the probes: keep it as it is
        log.warning("compiled path of %s not verified: %s", estimator, exc)
        reason = f"verification failed: {type(exc).__name__}: {exc}"
        return None, {"path": "pipeline", "estimator": estimator, "reason": reason}
    if not worst <= VERIFY_TOLERANCE:
        log.warning("compiled path of %s differs from the pipeline by %g", estimator, worst)
        reason = f"compiled scores differ from the pipeline's by {worst:.3g} on probe records"
        return None, {"path": "pipeline", "estimator": estimator, "reason": reason}
    return compiled, {
        "path": "compiled",
        "estimator": estimator,
        "verified_records": len(probes),
        "verified_max_abs_diff": worst,
    }


def to_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Feature records as the DataFrame the pipeline was trained on (column order, dtypes)."""
    frame = pd.DataFrame([{f: r.get(f) for f in FEATURES} for r in records], columns=list(FEATURES))
    for col in NUMERIC_FEATURES:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in CATEGORICAL_FEATURES:
        frame[col] = frame[col].astype(object)
    return frame


class ModelHolder:
    """Holds the served model; checks the registry at most every ``refresh_s`` seconds.

    :meth:`current` never blocks on the registry: when a check is due it starts one
    background thread that compares ``registry.get(name, alias).version`` with the served
    version and, if it moved, loads and verifies the new one before swapping the reference.
    A failed load keeps the old model and is reported in :meth:`status`.
    """

    def __init__(
        self,
        registry: RegistryLike,
        name: str = "churn",
        alias: str = "production",
        *,
        refresh_s: float = 30.0,
        retry_s: float = 5.0,
        on_swap: Callable[[ServedModel], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        fast_path: bool = True,
    ) -> None:
        self.registry = registry
        self.name = name
        self.alias = alias
        self.refresh_s = refresh_s
        self.retry_s = retry_s
        self.on_swap = on_swap
        self.fast_path = fast_path
        self._clock = clock
        self._model: ServedModel | None = None
        self._last_check = -math.inf
        self._last_error: str | None = None
        self._lock = threading.Lock()
        self._refreshing: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._watcher_pid: int | None = None
        self._stop = threading.Event()

    # -- reading -----------------------------------------------------------------------
    def current(self) -> ServedModel | None:
        """The served model (``None`` before a first successful load); may start a refresh.

        Without a model the registry is retried every ``retry_s`` rather than ``refresh_s``.
        """
        interval = self.refresh_s if self._model is not None else min(self.refresh_s, self.retry_s)
        if self._clock() - self._last_check >= interval:
            self.refresh_async()
        return self._model

    def watch(self) -> None:
        """Also check from a daemon thread of this process, so a worker that gets no traffic
        for a while does not answer its next request with a retired version."""
        with self._lock:
            alive = self._watcher is not None and self._watcher.is_alive()
            if alive and self._watcher_pid == os.getpid():
                return
            self._watcher_pid = os.getpid()
            self._stop.clear()
            self._watcher = threading.Thread(target=self._watch, name="model-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(max(0.05, min(self.refresh_s, self.retry_s))):
            self.current()

    def close(self) -> None:
        """Stop the watcher thread (a refresh in progress finishes by itself)."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        model = self._model
        return {
            "loaded": model is not None,
            "version": None if model is None else model.version,
            "last_error": self._last_error,
        }

    # -- loading -----------------------------------------------------------------------
    def load_now(self) -> ServedModel | None:
        """Check the registry and load a new version synchronously (startup, admin reload)."""
        with self._lock:
            self._last_check = self._clock()
        return self._check()

    def refresh_async(self) -> threading.Thread | None:
        """Start a background check unless one is running; return the thread started."""
        with self._lock:
            if self._refreshing is not None and self._refreshing.is_alive():
                return None
            self._last_check = self._clock()
            thread = threading.Thread(target=self._check, name="model-refresh", daemon=True)
            self._refreshing = thread
        thread.start()
        return thread

    def _check(self) -> ServedModel | None:
        try:
            latest = self.registry.get(self.name, self.alias)
            served = self._model
            if served is not None and int(latest.version) == served.version:
                self._last_error = None
                return served
            loaded = self.registry.load(self.name, self.alias)
            model = ServedModel.from_loaded(loaded, fast_path=self.fast_path)
        except Exception as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.warning("cannot load model %s@%s: %s", self.name, self.alias, self._last_error)
            return self._model
        previous = self._model
        self._model = model
        self._last_error = None
        log.info(
            "serving %s v%s (was %s)",
            model.name,
            model.version,
            None if previous is None else previous.version,
        )
        if self.on_swap is not None:
            self.on_swap(model)
        return model
