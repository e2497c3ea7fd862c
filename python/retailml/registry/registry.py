"""The model registry: artifacts in an :class:`ArtifactStore`, one row per version in
``mlops.model_registry``.

Every version is registered as ``candidate``. :meth:`ModelRegistry.promote` makes it
``production`` only if it is at least as good as the current production version (plus a
margin) on the *same* held-out data and, when a fairness limit is given, its largest metric
gap between customer groups is within it; the replaced production version becomes
``archived``, and the reason is recorded either way. :meth:`ModelRegistry.load` checks the
artifact's sha256 against the row before decrypting or deserialising anything. Charts of a
version (PNG) are stored next to its artifact and linked, with their sha256, from the row's
``reports`` column (:meth:`ModelRegistry.load_report` verifies them too).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..warehouse.base import Warehouse
from .artifacts import ArtifactStore
from .serialization import (
    StatsmodelsBundle,
    decrypt,
    dump_sklearn,
    dump_statsmodels,
    encrypt,
    load_sklearn,
    load_statsmodels,
)

REGISTRY_TABLE = "mlops.model_registry"
ALIASES = ("candidate", "production", "archived")
KINDS = ("sklearn", "statsmodels")

Kind = Literal["sklearn", "statsmodels"]
Alias = Literal["candidate", "production", "archived"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_EXTENSIONS = {"sklearn": "skops", "statsmodels": "json"}
_ENCRYPTED_SUFFIX = ".fernet"
# The training fingerprint's headline fields, also as plain columns so BI and lineage queries
# can filter and join on them without JSON functions (which differ between warehouses).
_FINGERPRINT_COLUMNS = {
    "training_table": ("table", "text"),
    "training_query": ("query", "text"),
    "training_row_count": ("row_count", "bigint"),
    "training_content_sha256": ("content_sha256", "text"),
    "dbt_manifest_sha256": ("dbt_manifest_sha256", "text"),
}
_COLUMNS = (
    "name",
    "version",
    "created_at",
    "kind",
    "params",
    "metrics",
    "training_fingerprint",
    "code_version",
    "artifact_uri",
    "artifact_sha256",
    "alias",
    "alias_reason",
    "reports",
    *_FINGERPRINT_COLUMNS,
)
# Portable DDL (DuckDB and PostgreSQL): the primary key makes concurrent registrations of
# the same version fail instead of silently duplicating it.
_DDL = f"""
create table if not exists {REGISTRY_TABLE} (
    name text not null,
    version bigint not null,
    created_at timestamp with time zone not null,
    kind text not null,
    params text not null,
    metrics text not null,
    training_fingerprint text not null,
    code_version text not null,
    artifact_uri text not null,
    artifact_sha256 text not null,
    alias text not null,
    alias_reason text,
    reports text,
    training_table text,
    training_query text,
    training_row_count bigint,
    training_content_sha256 text,
    dbt_manifest_sha256 text,
    primary key (name, version)
)
"""
# Columns added after the first release of the table (existing tables get them on first write).
_ADDED_COLUMNS = {"reports": "text", **{c: t for c, (_, t) in _FINGERPRINT_COLUMNS.items()}}
_REPORT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}\.png$")


class RegistryError(RuntimeError):
    """A registry operation is not possible; the message says why."""


class ModelNotFoundError(RegistryError):
    """No version of the model matches the requested version or alias."""


class ArtifactIntegrityError(RegistryError):
    """The artifact's bytes do not match the sha256 recorded in the registry."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    created_at: datetime
    kind: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    training_fingerprint: dict[str, Any]
    code_version: str
    artifact_uri: str
    artifact_sha256: str
    alias: str
    alias_reason: str | None
    # Charts stored next to the artifact: file name -> {"uri": ..., "sha256": ...}.
    reports: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedModel:
    version: ModelVersion
    model: Any


@dataclass(frozen=True)
class PromotionDecision:
    name: str
    candidate_version: int
    promoted: bool
    metric: str
    candidate_value: float | None
    production_version: int | None
    production_value: float | None
    margin: float
    higher_is_better: bool
    reason: str
    fairness_gap: float | None = None
    max_fairness_gap: float | None = None


def to_json(value: Any) -> str:
    """JSON text of params/metrics/fingerprints: numpy scalars as numbers, NaN/inf as null."""
    return json.dumps(_jsonable(value), sort_keys=True, allow_nan=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):  # date, datetime
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, e.g. dbt's ``target/manifest.json`` for the training fingerprint."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def detect_code_version() -> str:
    """The git commit of the package's checkout (``+dirty`` if modified), else its version."""
    package_dir = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(package_dir), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        if sha:
            return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"retailml=={version('retailml')}"
    except Exception:
        return "unknown"


class ModelRegistry:
    """Register, look up, load and promote model versions."""

    def __init__(
        self,
        warehouse: Warehouse,
        artifacts: ArtifactStore,
        encryption_key: str | None = None,
        *,
        code_version: str | None = None,
        extra_trusted_types: Iterable[str] = (),
    ) -> None:
        self.warehouse = warehouse
        self.artifacts = artifacts
        self._encryption_key = encryption_key or None
        self._code_version = code_version
        self._extra_trusted = tuple(extra_trusted_types)
        self._table_ready = False

    # -- storage ----------------------------------------------------------------------
    def ensure_table(self) -> None:
        """Create ``mlops.model_registry`` if it does not exist (idempotent)."""
        if not self._table_ready:
            self.warehouse.execute("create schema if not exists mlops")
            self.warehouse.execute(_DDL)
            present = self.warehouse.columns(REGISTRY_TABLE)
            for column, sql_type in _ADDED_COLUMNS.items():
                if column not in present:
                    self.warehouse.execute(
                        f"alter table {REGISTRY_TABLE} add column if not exists {column} {sql_type}"
                    )
            if any(c not in present for c in _FINGERPRINT_COLUMNS):
                self._backfill_fingerprint_columns()
            self._table_ready = True

    def _backfill_fingerprint_columns(self) -> None:
        """Fill the fingerprint columns of rows registered before they existed."""
        rows = self.warehouse.query_arrow(
            f"select name, version, training_fingerprint from {REGISTRY_TABLE}"
        ).to_pylist()
        assignments = ", ".join(f"{c} = ?" for c in _FINGERPRINT_COLUMNS)
        with self.warehouse.transaction():
            for row in rows:
                values = _fingerprint_values(json.loads(row["training_fingerprint"] or "{}"))
                self.warehouse.execute(
                    f"update {REGISTRY_TABLE} set {assignments} where name = ? and version = ?",
                    [*values, row["name"], row["version"]],
                )

    def _rows(self, where: str, params: list[Any]) -> list[ModelVersion]:
        # Reads never create anything: read-only consumers (serving) can use the registry.
        if not self._table_ready and not self.warehouse.table_exists(REGISTRY_TABLE):
            return []
        present = _COLUMNS if self._table_ready else self.warehouse.columns(REGISTRY_TABLE)
        cols = ", ".join(c if c in present else f"null as {c}" for c in _COLUMNS)
        table = self.warehouse.query_arrow(
            f"select {cols} from {REGISTRY_TABLE} where {where} order by version desc", params
        )
        return [_row_to_version(r) for r in table.to_pylist()]

    # -- register ---------------------------------------------------------------------
    def register(
        self,
        name: str,
        obj: Any,
        *,
        kind: Kind,
        params: Mapping[str, Any],
        metrics: Mapping[str, Any],
        fingerprint: Mapping[str, Any],
        reports: Mapping[str, bytes] | None = None,
    ) -> ModelVersion:
        """Store ``obj``'s artifact and add it as the next version, alias ``candidate``.

        ``kind='sklearn'``: any scikit-learn estimator (skops). ``kind='statsmodels'``: a
        :class:`~retailml.registry.serialization.StatsmodelsBundle` (JSON, no pickle).
        ``reports``: charts (``name.png`` -> bytes) stored next to the artifact, under
        ``<name>/<artifact sha256>-reports/``, and linked from the row with their sha256.
        They hold aggregate figures only and are not encrypted, so people can open them.
        """
        _check_name(name)
        for report_name in reports or {}:
            if not _REPORT_NAME.match(report_name):
                raise RegistryError(
                    f"report name {report_name!r} must match {_REPORT_NAME.pattern}"
                )
        if kind == "sklearn":
            data = dump_sklearn(obj)
        elif kind == "statsmodels":
            if not isinstance(obj, StatsmodelsBundle):
                raise RegistryError(
                    "kind='statsmodels' takes a StatsmodelsBundle (specs + fitted params), "
                    f"not {type(obj).__name__}"
                )
            data = dump_statsmodels(obj)
        else:
            raise RegistryError(f"kind must be one of {KINDS}, not {kind!r}")
        suffix = ""
        if self._encryption_key:
            data = encrypt(data, self._encryption_key)
            suffix = _ENCRYPTED_SUFFIX
        digest = sha256_hex(data)
        # Content-addressed key: a version race can never overwrite another's artifact.
        uri = self.artifacts.put(f"{name}/{digest}.{_EXTENSIONS[kind]}{suffix}", data)
        stored_reports = {
            report_name: {
                "uri": self.artifacts.put(f"{name}/{digest}-reports/{report_name}", content),
                "sha256": sha256_hex(content),
            }
            for report_name, content in sorted((reports or {}).items())
        }

        self.ensure_table()
        code_version = self._code_version or detect_code_version()
        params_json, metrics_json = to_json(params), to_json(metrics)
        fingerprint_json = to_json(fingerprint)
        last_error: Exception | None = None
        for _attempt in range(5):
            created_at = datetime.now(UTC)
            version = 0
            try:
                with self.warehouse.transaction():
                    version = int(
                        self.warehouse.scalar(
                            f"select coalesce(max(version), 0) + 1 from {REGISTRY_TABLE} "
                            "where name = ?",
                            [name],
                        )
                    )
                    self.warehouse.execute(
                        f"insert into {REGISTRY_TABLE} ({', '.join(_COLUMNS)}) "
                        f"values ({', '.join('?' * len(_COLUMNS))})",
                        [
                            name,
                            version,
                            created_at,
                            kind,
                            params_json,
                            metrics_json,
                            fingerprint_json,
                            code_version,
                            uri,
                            digest,
                            "candidate",
                            "registered",
                            to_json(stored_reports),
                            *_fingerprint_values(fingerprint),
                        ],
                    )
            except Exception as exc:  # a concurrent register took this version: retry
                if version and self._rows("name = ? and version = ?", [name, version]):
                    last_error = exc
                    continue
                raise
            return self.get(name, version)
        raise RegistryError(f"could not allocate a version of {name!r}: {last_error}")

    # -- look up ----------------------------------------------------------------------
    def get(self, name: str, version_or_alias: int | str = "production") -> ModelVersion:
        """A version by number, or by alias (``production``, ``candidate``: the newest one,
        ``archived``) or ``latest``."""
        _check_name(name)
        if isinstance(version_or_alias, int) or str(version_or_alias).isdigit():
            rows = self._rows("name = ? and version = ?", [name, int(version_or_alias)])
        elif version_or_alias == "latest":
            rows = self._rows("name = ?", [name])
        elif version_or_alias in ALIASES:
            rows = self._rows("name = ? and alias = ?", [name, version_or_alias])
        else:
            raise RegistryError(
                f"{version_or_alias!r} is neither a version number nor one of "
                f"{(*ALIASES, 'latest')}"
            )
        if not rows:
            known = self.list_versions(name)
            summary = ", ".join(f"v{v.version} {v.alias}" for v in known) or "none registered"
            raise ModelNotFoundError(
                f"model {name!r} has no version {version_or_alias!r} (versions: {summary})"
            )
        return rows[0]

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, newest first."""
        _check_name(name)
        return self._rows("name = ?", [name])

    def load(self, name: str, version_or_alias: int | str = "production") -> LoadedModel:
        """Fetch, verify (sha256 before anything else), decrypt and deserialise a version."""
        version = self.get(name, version_or_alias)
        data = self.artifacts.get(version.artifact_uri)
        actual = sha256_hex(data)
        if actual != version.artifact_sha256:
            raise ArtifactIntegrityError(
                f"artifact of {name} v{version.version} ({version.artifact_uri}) has sha256 "
                f"{actual}, the registry recorded {version.artifact_sha256}: refusing to load it"
            )
        if version.artifact_uri.endswith(_ENCRYPTED_SUFFIX):
            if not self._encryption_key:
                raise RegistryError(
                    f"artifact of {name} v{version.version} is encrypted: configure the model "
                    "encryption key (RETAILML_MODEL_ENCRYPTION_KEY)"
                )
            data = decrypt(data, self._encryption_key)
        if version.kind == "sklearn":
            model = load_sklearn(data, self._extra_trusted)
        elif version.kind == "statsmodels":
            model = load_statsmodels(data)
        else:
            raise RegistryError(f"{name} v{version.version} has unknown kind {version.kind!r}")
        return LoadedModel(version=version, model=model)

    def load_report(self, name: str, version_or_alias: int | str, report: str) -> bytes:
        """A chart of a version (e.g. ``roc.png``), verified against the row's sha256."""
        version = self.get(name, version_or_alias)
        entry = version.reports.get(report)
        if entry is None:
            raise ModelNotFoundError(
                f"{name} v{version.version} has no report {report!r} "
                f"(reports: {sorted(version.reports) or 'none'})"
            )
        data = self.artifacts.get(entry["uri"])
        if sha256_hex(data) != entry["sha256"]:
            raise ArtifactIntegrityError(
                f"report {report} of {name} v{version.version} ({entry['uri']}) does not match "
                "the sha256 recorded in the registry"
            )
        return data

    # -- aliases and promotion --------------------------------------------------------
    def set_alias(self, name: str, version: int, alias: Alias, reason: str) -> ModelVersion:
        """Set a version's alias. Making it ``production`` archives the current production
        version in the same transaction."""
        if alias not in ALIASES:
            raise RegistryError(f"alias must be one of {ALIASES}, not {alias!r}")
        target = self.get(name, version)
        with self.warehouse.transaction():
            if alias == "production":
                self.warehouse.execute(
                    f"update {REGISTRY_TABLE} set alias = 'archived', alias_reason = ? "
                    "where name = ? and alias = 'production' and version <> ?",
                    [f"replaced by v{target.version}: {reason}", name, target.version],
                )
            self.warehouse.execute(
                f"update {REGISTRY_TABLE} set alias = ?, alias_reason = ? "
                "where name = ? and version = ?",
                [alias, reason, name, target.version],
            )
        return self.get(name, target.version)

    def promote(
        self,
        name: str,
        candidate_version: int,
        *,
        metric: str,
        higher_is_better: bool = True,
        margin: float = 0.0,
        max_fairness_gap: float | None = None,
    ) -> PromotionDecision:
        """Make the candidate production if it is at least ``margin`` better than production
        on ``metric`` measured on the same held-out data; otherwise it stays candidate and
        the reason is recorded on its row.

        With ``max_fairness_gap`` the candidate must also record a fairness evaluation
        (``metrics['fairness']['largest_gap']``, see :mod:`retailml.training.fairness`)
        whose largest gap between customer groups is at most that limit; this applies to a
        first version too (no production yet).

        Production's value comes from the candidate's ``metrics['champion_evaluations']
        [str(production_version)]`` (production re-scored on the candidate's held-out set by
        the trainer) or, failing that, from production's own metrics when both record the
        same ``metrics['holdout']['sha256']``. Without either the comparison is refused.
        """
        if margin < 0:
            raise RegistryError("margin must be >= 0")
        candidate = self.get(name, candidate_version)
        candidate_value = _metric(candidate.metrics, metric)
        try:
            production: ModelVersion | None = self.get(name, "production")
        except ModelNotFoundError:
            production = None

        def decide(promoted: bool, reason: str, prod_value: float | None) -> PromotionDecision:
            if fairness_note:
                reason = f"{reason}; {fairness_note}"
            if promoted:
                self.set_alias(name, candidate.version, "production", reason)
            else:
                self._set_reason(name, candidate.version, reason)
            return PromotionDecision(
                name=name,
                candidate_version=candidate.version,
                promoted=promoted,
                metric=metric,
                candidate_value=candidate_value,
                production_version=production.version if production else None,
                production_value=prod_value,
                margin=margin,
                higher_is_better=higher_is_better,
                reason=reason,
                fairness_gap=fairness_gap,
                max_fairness_gap=max_fairness_gap,
            )

        if candidate.alias != "candidate":
            raise RegistryError(
                f"{name} v{candidate.version} is {candidate.alias}, not a candidate; use "
                "set_alias to roll back or re-promote explicitly"
            )
        fairness_gap: float | None = None
        fairness_note = ""
        if max_fairness_gap is not None:
            blocked, fairness_gap, why = _fairness_check(candidate.metrics, max_fairness_gap)
            if blocked:
                return decide(False, why, None)
            fairness_note = why or (
                f"fairness gap {fairness_gap:.4f} within the limit {max_fairness_gap:g}"
            )
        if production is None:
            return decide(True, "no production version: promoted", None)
        if candidate_value is None:
            return decide(False, f"candidate has no numeric {metric!r} metric", None)
        production_value = _production_value(candidate, production, metric)
        if production_value is None:
            return decide(
                False,
                f"no evaluation of production v{production.version} on the candidate's "
                "held-out data: not comparable, stays candidate",
                None,
            )
        improvement = (
            candidate_value - production_value
            if higher_is_better
            else production_value - candidate_value
        )
        comparison = (
            f"{metric} {candidate_value:.6g} vs production v{production.version} "
            f"{production_value:.6g} on the same held-out data (margin {margin:g})"
        )
        if improvement >= margin:
            return decide(True, f"promoted: {comparison}", production_value)
        return decide(False, f"not better: {comparison}", production_value)

    def _set_reason(self, name: str, version: int, reason: str) -> None:
        self.warehouse.execute(
            f"update {REGISTRY_TABLE} set alias_reason = ? where name = ? and version = ?",
            [reason, name, version],
        )


def _fingerprint_values(fingerprint: Mapping[str, Any]) -> list[Any]:
    """The values of the fingerprint columns (None where the fingerprint lacks the field)."""
    values: list[Any] = []
    for key, sql_type in _FINGERPRINT_COLUMNS.values():
        value = fingerprint.get(key)
        if sql_type == "bigint":
            value = (
                int(value)
                if isinstance(value, int | float) and not isinstance(value, bool)
                else None
            )
        else:
            value = None if value is None else str(value)
        values.append(value)
    return values


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise RegistryError(f"model name {name!r} must match {_NAME.pattern}")


def _metric(metrics: Mapping[str, Any], metric: str) -> float | None:
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fairness_check(metrics: Mapping[str, Any], limit: float) -> tuple[bool, float | None, str]:
    """(blocked, largest gap, reason) of the fairness limit on a candidate's metrics."""
    fairness = metrics.get("fairness")
    if not isinstance(fairness, Mapping) or "largest_gap" not in fairness:
        return True, None, "blocked: no fairness evaluation recorded (a fairness limit is set)"
    largest = fairness.get("largest_gap")
    if not isinstance(largest, Mapping):
        return False, None, "fairness: no two groups large enough to compare"
    gap = _metric(largest, "value")
    if gap is None:
        return True, None, "blocked: the recorded fairness gap is not a number"
    if gap > limit:
        detail = (
            f"{largest.get('metric')} gap {gap:.4f} over {largest.get('attribute')} "
            f"({(largest.get('highest') or {}).get('group')} vs "
            f"{(largest.get('lowest') or {}).get('group')})"
        )
        return True, gap, f"blocked by the fairness limit: {detail} exceeds {limit:g}"
    return False, gap, ""


def _production_value(
    candidate: ModelVersion, production: ModelVersion, metric: str
) -> float | None:
    evaluations = candidate.metrics.get("champion_evaluations") or {}
    evaluation = evaluations.get(str(production.version))
    if isinstance(evaluation, Mapping):
        return _metric(evaluation, metric)
    candidate_holdout = (candidate.metrics.get("holdout") or {}).get("sha256")
    production_holdout = (production.metrics.get("holdout") or {}).get("sha256")
    if candidate_holdout and candidate_holdout == production_holdout:
        return _metric(production.metrics, metric)
    return None


def _row_to_version(row: Mapping[str, Any]) -> ModelVersion:
    created_at = row["created_at"]
    if isinstance(created_at, datetime) and created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return ModelVersion(
        name=row["name"],
        version=int(row["version"]),
        created_at=created_at,
        kind=row["kind"],
        params=json.loads(row["params"]),
        metrics=json.loads(row["metrics"]),
        training_fingerprint=json.loads(row["training_fingerprint"]),
        code_version=row["code_version"],
        artifact_uri=row["artifact_uri"],
        artifact_sha256=row["artifact_sha256"],
        alias=row["alias"],
        alias_reason=row["alias_reason"],
        reports=json.loads(row["reports"]) if row.get("reports") else {},
    )
