"""Model registry: artifacts (skops / JSON, optionally encrypted) + ``mlops.model_registry``."""

from __future__ import annotations

from .artifacts import (
    ArtifactStore,
    ArtifactStoreError,
    LocalArtifactStore,
    ObjectStoreArtifactStore,
    open_artifact_store,
)
from .lineage import (
    TRAINING_BATCHES_TABLE,
    Lineage,
    LineageError,
    manifest_lineage,
    record_training_batches,
    trace_model,
    trace_prediction,
    training_lineage,
)
from .registry import (
    ALIASES,
    REGISTRY_TABLE,
    ArtifactIntegrityError,
    LoadedModel,
    ModelNotFoundError,
    ModelRegistry,
    ModelVersion,
    PromotionDecision,
    RegistryError,
    detect_code_version,
    file_sha256,
    sha256_hex,
)
from .serialization import (
    TRUSTED_SKOPS_TYPES,
    SerializationError,
    StatsmodelsBundle,
    StatsmodelsSpec,
    UntrustedArtifactError,
)

__all__ = [
    "ALIASES",
    "REGISTRY_TABLE",
    "TRAINING_BATCHES_TABLE",
    "TRUSTED_SKOPS_TYPES",
    "ArtifactIntegrityError",
    "ArtifactStore",
    "ArtifactStoreError",
    "Lineage",
    "LineageError",
    "LoadedModel",
    "LocalArtifactStore",
    "ModelNotFoundError",
    "ModelRegistry",
    "ModelVersion",
    "ObjectStoreArtifactStore",
    "PromotionDecision",
    "RegistryError",
    "SerializationError",
    "StatsmodelsBundle",
    "StatsmodelsSpec",
    "UntrustedArtifactError",
    "detect_code_version",
    "file_sha256",
    "manifest_lineage",
    "open_artifact_store",
    "record_training_batches",
    "sha256_hex",
    "trace_model",
    "trace_prediction",
    "training_lineage",
]
