"""Where model artifacts (bytes) live: a local folder or an S3 bucket/prefix.

The registry row records the artifact's full URI (``file:///...`` or ``s3://bucket/key``)
and its sha256; a store only reads URIs that belong to it.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlparse

from ..sources.object_store import ObjectStore

if TYPE_CHECKING:
    from ..config import Settings

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ArtifactStoreError(RuntimeError):
    """An artifact could not be written or read; the message names the URI."""


class ArtifactStore(Protocol):
    """Bytes by key. ``put`` returns the URI recorded in the registry."""

    def put(self, key: str, data: bytes) -> str: ...

    def get(self, uri: str) -> bytes: ...

    def exists(self, uri: str) -> bool: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not parts or any(not _KEY_PART.match(p) for p in parts):
        raise ArtifactStoreError(
            f"artifact key {key!r} must be '/'-separated parts of letters, digits, '.', '_', '-'"
        )
    return key


class LocalArtifactStore:
    """Artifacts as files under ``root`` (written atomically: temp file + rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    def _path_for_key(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).split("/"))

    def _path_for_uri(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ArtifactStoreError(f"{uri!r} is not a file:// URI (store root {self.root})")
        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(self.root):
            raise ArtifactStoreError(f"{uri!r} is outside this artifact store ({self.root})")
        return path

    def put(self, key: str, data: bytes) -> str:
        path = self._path_for_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path.as_uri()

    def get(self, uri: str) -> bytes:
        path = self._path_for_uri(uri)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactStoreError(f"artifact {uri} does not exist") from exc

    def exists(self, uri: str) -> bool:
        return self._path_for_uri(uri).is_file()


class ObjectStoreArtifactStore:
    """Artifacts as objects under ``prefix`` in the bucket of an :class:`ObjectStore`."""

    def __init__(self, store: ObjectStore, prefix: str = "models/") -> None:
        self.store = store
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _object_key(self, uri: str) -> str:
        parsed = urlparse(uri)
        key = parsed.path.lstrip("/")
        if parsed.scheme != "s3" or parsed.netloc != self.store.bucket:
            raise ArtifactStoreError(
                f"{uri!r} is not in bucket s3://{self.store.bucket} of this artifact store"
            )
        if not key.startswith(self.prefix):
            raise ArtifactStoreError(f"{uri!r} is outside prefix {self.prefix!r}")
        return key

    def put(self, key: str, data: bytes) -> str:
        object_key = self.prefix + _check_key(key)
        self.store.put(object_key, data)
        return f"s3://{self.store.bucket}/{object_key}"

    def get(self, uri: str) -> bytes:
        key = self._object_key(uri)
        try:
            return self.store.get(key)
        except Exception as exc:
            raise ArtifactStoreError(f"cannot read artifact {uri}: {exc}") from exc

    def exists(self, uri: str) -> bool:
        key = self._object_key(uri)
        return any(info.key == key for info in self.store.list(key))


def open_artifact_store(
    uri: str, *, object_store: ObjectStore | None = None, settings: Settings | None = None
) -> ArtifactStore:
    """A store for ``uri``: a folder path (or ``file://`` URI) or ``s3://bucket/prefix``.

    For S3 pass the ``object_store`` of that bucket; or pass ``settings`` and the client is
    built by :func:`retailml.runtime.open_object_store` (same endpoint and credentials as the
    landing bucket, bucket taken from ``uri``).
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        if object_store is None and settings is not None:
            from ..runtime import open_object_store

            object_store = open_object_store(settings.model_copy(update={"s3_bucket": bucket}))
        if object_store is None:
            raise ArtifactStoreError(
                f"model store {uri} is in S3: pass the ObjectStore of bucket {bucket!r}"
            )
        if object_store.bucket != bucket:
            raise ArtifactStoreError(
                f"model store {uri} is in bucket {bucket!r} but the ObjectStore "
                f"given is for bucket {object_store.bucket!r}"
            )
        return ObjectStoreArtifactStore(object_store, parsed.path.lstrip("/"))
    if parsed.scheme == "file":
        return LocalArtifactStore(Path(unquote(parsed.path)))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise ArtifactStoreError(f"model store {uri!r}: use a folder path or s3://bucket/prefix")
    return LocalArtifactStore(Path(uri))
