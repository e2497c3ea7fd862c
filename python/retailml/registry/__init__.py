"""Model registry: artifacts (skops / JSON, optionally encrypted) + ``mlops.model_registry``."""

from __future__ import annotations

from .artifacts import (
    ArtifactStore,
    ArtifactStoreError,
    LocalArtifactStore,
    ObjectStoreArtifactStore,
    open_artifact_store,
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
    "TRUSTED_SKOPS_TYPES",
    "ArtifactIntegrityError",
    "ArtifactStore",
    "ArtifactStoreError",
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
    "open_artifact_store",
    "sha256_hex",
]
