"""Artifact formats: bytes that can be loaded without executing code from the artifact.

* ``sklearn``: skops (``skops.io.dumps``/``loads``). Loading first lists the types skops
  does not trust by default and refuses any that are not in :data:`TRUSTED_SKOPS_TYPES`.
* ``statsmodels``: a JSON document (:class:`StatsmodelsBundle`) holding each model's class
  name (from an allow-list), constructor arguments, data and fitted parameters. Loading
  rebuilds the model and applies the parameters (``ETSModel.smooth`` / ``SARIMAX.filter``):
  no pickle, no optimisation, the same forecasts as the fitted results.
* Optional encryption of either with Fernet (authenticated: a wrong key or changed bytes
  fail to decrypt).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

FORMAT_STATSMODELS = "retailml.statsmodels/1"

# Types skops does not trust by default that our pipelines contain; checked by exact name.
TRUSTED_SKOPS_TYPES: frozenset[str] = frozenset(
    {
        "numpy.dtype",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn._loss.link.Interval",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn.utils._bunch.Bunch",
        "sklearn.tree._tree.Tree",  # the trees of a RandomForestClassifier
    }
)

# statsmodels model classes a bundle may name, and how to apply fitted parameters.
_STATSMODELS_CLASSES = ("ETSModel", "SARIMAX")


class SerializationError(RuntimeError):
    """An artifact cannot be written or read in its declared format."""


class UntrustedArtifactError(SerializationError):
    """The artifact contains types outside the allow-list; it was not deserialised."""


# -- scikit-learn via skops ----------------------------------------------------------------
def dump_sklearn(obj: Any) -> bytes:
    import skops.io as sio

    return sio.dumps(obj)


def load_sklearn(data: bytes, extra_trusted: Iterable[str] = ()) -> Any:
    """Load skops bytes, refusing any type outside the allow-list (checked before loading)."""
    import skops.io as sio

    allowed = TRUSTED_SKOPS_TYPES | frozenset(extra_trusted)
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise SerializationError(f"not a readable skops artifact: {exc}") from exc
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        raise UntrustedArtifactError(
            "refusing to load a skops artifact with types outside the allow-list: "
            + ", ".join(refused)
        )
    return sio.loads(data, trusted=list(untrusted))


# -- statsmodels via a JSON spec -------------------------------------------------------
@dataclass(frozen=True)
class StatsmodelsSpec:
    """One fitted statsmodels state-space/ETS model as data: rebuilt, never unpickled."""

    model_class: str
    endog: list[float]
    start: str
    freq: str
    init_kwargs: dict[str, Any]
    params: dict[str, float]
    exog: list[list[float]] | None = None

    @classmethod
    def from_results(cls, results: Any, init_kwargs: Mapping[str, Any]) -> StatsmodelsSpec:
        """Describe fitted ``results`` of an ``ETSModel`` or ``SARIMAX`` on a dated series."""
        model = results.model
        name = type(model).__name__
        if name not in _STATSMODELS_CLASSES:
            raise SerializationError(f"statsmodels class {name} is not supported")
        index = model.data.row_labels
        if not isinstance(index, pd.DatetimeIndex) or index.freqstr is None:
            raise SerializationError("the model's endog needs a DatetimeIndex with a frequency")
        exog = getattr(model, "exog", None) if name == "SARIMAX" else None
        return cls(
            model_class=name,
            endog=[float(v) for v in np.asarray(model.endog).ravel()],
            start=index[0].isoformat(),
            freq=index.freqstr,
            init_kwargs=dict(init_kwargs),
            params={
                str(k): float(v) for k, v in zip(model.param_names, results.params, strict=True)
            },
            exog=None if exog is None else np.asarray(exog, dtype=float).tolist(),
        )

    @property
    def index(self) -> pd.DatetimeIndex:
        return pd.date_range(self.start, periods=len(self.endog), freq=self.freq)

    def results(self) -> Any:
        """Rebuild the model and apply the stored parameters (no optimisation)."""
        endog = pd.Series(self.endog, index=self.index, dtype=float)
        if self.model_class == "ETSModel":
            from statsmodels.tsa.exponential_smoothing.ets import ETSModel

            model = ETSModel(endog, **self.init_kwargs)
            return model.smooth(self._param_vector(model.param_names))
        if self.model_class == "SARIMAX":
            from statsmodels.tsa.statespace.sarimax import SARIMAX

            exog = None if self.exog is None else np.asarray(self.exog, dtype=float)
            model = SARIMAX(endog, exog=exog, **self.init_kwargs)
            return model.filter(self._param_vector(model.param_names))
        raise SerializationError(f"statsmodels class {self.model_class!r} is not allowed")

    def _param_vector(self, names: Iterable[str]) -> np.ndarray:
        names = list(names)
        missing = [n for n in names if n not in self.params]
        if missing:
            raise SerializationError(f"{self.model_class} spec lacks parameters {missing}")
        return np.array([self.params[n] for n in names], dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_class": self.model_class,
            "endog": self.endog,
            "start": self.start,
            "freq": self.freq,
            "init_kwargs": self.init_kwargs,
            "params": self.params,
            "exog": self.exog,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StatsmodelsSpec:
        if data.get("model_class") not in _STATSMODELS_CLASSES:
            raise SerializationError(
                f"statsmodels class {data.get('model_class')!r} is not allowed"
            )
        return cls(
            model_class=str(data["model_class"]),
            endog=[float(v) for v in data["endog"]],
            start=str(data["start"]),
            freq=str(data["freq"]),
            init_kwargs=dict(data["init_kwargs"]),
            params={str(k): float(v) for k, v in data["params"].items()},
            exog=data.get("exog"),
        )


@dataclass
class StatsmodelsBundle:
    """Named statsmodels specs (e.g. one per category) plus JSON extras the caller needs."""

    specs: dict[str, StatsmodelsSpec]
    extra: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def results(self, key: str) -> Any:
        """The rebuilt statsmodels results of ``key`` (rebuilt once, then cached)."""
        if key not in self._cache:
            self._cache[key] = self.specs[key].results()
        return self._cache[key]


def dump_statsmodels(bundle: StatsmodelsBundle) -> bytes:
    document = {
        "format": FORMAT_STATSMODELS,
        "specs": {k: s.to_dict() for k, s in bundle.specs.items()},
        "extra": bundle.extra,
    }
    try:
        return json.dumps(document, allow_nan=False, sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"statsmodels bundle is not JSON-serialisable: {exc}") from exc


def load_statsmodels(data: bytes) -> StatsmodelsBundle:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"not a JSON statsmodels artifact: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_STATSMODELS:
        raise SerializationError(f"statsmodels artifact is not in format {FORMAT_STATSMODELS}")
    specs = {str(k): StatsmodelsSpec.from_dict(v) for k, v in document["specs"].items()}
    return StatsmodelsBundle(specs=specs, extra=dict(document.get("extra") or {}))


# -- encryption ----------------------------------------------------------------------------
def _fernet(key: str) -> Any:
    from cryptography.fernet import Fernet

    try:
        return Fernet(key.encode() if isinstance(key, str) else key)
    except (ValueError, TypeError) as exc:
        raise SerializationError(
            "the model encryption key is not a Fernet key (32 url-safe base64-encoded bytes; "
            "make one with cryptography.fernet.Fernet.generate_key())"
        ) from exc


def encrypt(data: bytes, key: str) -> bytes:
    return _fernet(key).encrypt(data)


def decrypt(token: bytes, key: str) -> bytes:
    from cryptography.fernet import InvalidToken

    try:
        return _fernet(key).decrypt(token)
    except InvalidToken as exc:
        raise SerializationError(
            "cannot decrypt the model artifact: wrong encryption key or altered bytes"
        ) from exc
