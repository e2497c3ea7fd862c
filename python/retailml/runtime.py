"""Builds the clients of each layer from :class:`Settings` (the only place that does).

Everything else receives these clients as arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Settings
from .sources import local_services
from .sources.object_store import S3ObjectStore
from .warehouse import Warehouse, open_warehouse

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = [
    "open_mongo",
    "open_object_store",
    "open_online_store",
    "open_registry",
    "open_warehouse",
    "source_endpoints",
]


def source_endpoints(settings: Settings) -> tuple[str | None, str]:
    """(S3 endpoint URL, MongoDB URI): the configured ones, else the local servers'."""
    if settings.s3_endpoint_url is not None and settings.mongo_uri is not None:
        return settings.s3_endpoint_url, settings.mongo_uri
    local = local_services.ensure_running(settings.services_dir)
    return (
        settings.s3_endpoint_url or local.s3_endpoint_url,
        settings.mongo_uri or local.mongo_uri,
    )


def open_object_store(settings: Settings, *, create_bucket: bool = False) -> S3ObjectStore:
    endpoint, _ = source_endpoints(settings)
    local = settings.s3_endpoint_url is None
    return S3ObjectStore.connect(
        settings.s3_bucket,
        endpoint_url=endpoint,
        region=settings.aws_region,
        create_bucket=create_bucket or local,
        # Real S3 takes credentials from the standard AWS chain; the local server any.
        access_key=local_services.LOCAL_AWS_KEY if local else None,
        secret_key=local_services.LOCAL_AWS_KEY if local else None,
    )


def open_mongo(settings: Settings) -> Database:
    from pymongo import MongoClient

    _, uri = source_endpoints(settings)
    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, tz_aware=False, serverSelectionTimeoutMS=10_000
    )
    return client[settings.mongo_database]


def open_registry(settings: Settings, warehouse: Warehouse | None = None) -> Any:
    from .registry import ModelRegistry, open_artifact_store

    artifacts = open_artifact_store(settings.model_store_uri, settings=settings)
    key = settings.model_encryption_key
    return ModelRegistry(
        warehouse or open_warehouse(settings),
        artifacts,
        encryption_key=key.get_secret_value() if key else None,
    )


def open_online_store(settings: Settings) -> Any:
    from .features.online_store import open_online_store as _open

    return _open(settings)
