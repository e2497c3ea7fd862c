"""The object store interface (S3 protocol) and its boto3 implementation.

The same class talks to real S3 in production and to the local S3 server of the embedded
default: only the endpoint differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, Protocol

LIST_PAGE_SIZE = 1000  # S3's maximum keys per ListObjectsV2 page


class ObjectChangedError(RuntimeError):
    """The object no longer has the ETag it was asked for (re-uploaded or deleted)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    last_modified: datetime


class ObjectStore(Protocol):
    """What the simulator, the ingestion and the model registry need from S3."""

    bucket: str

    def put(self, key: str, body: bytes) -> str:
        """Write an object, return its ETag."""
        ...

    def get(self, key: str, *, if_match: str | None = None) -> bytes:
        """The object's bytes; with ``if_match``, raise :class:`ObjectChangedError` unless
        the object still has that ETag."""
        ...

    def open(self, key: str, *, if_match: str | None = None) -> BinaryIO:
        """A streaming reader of the object's bytes (``if_match`` as for :meth:`get`)."""
        ...

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (after key ``start_after``), in key order,
        following pagination."""
        ...

    def delete(self, key: str) -> None: ...


class S3ObjectStore:
    """:class:`ObjectStore` over boto3."""

    def __init__(self, client: Any, bucket: str, *, page_size: int = LIST_PAGE_SIZE) -> None:
        self._client = client
        self.bucket = bucket
        self.page_size = page_size

    @classmethod
    def connect(
        cls,
        bucket: str,
        *,
        endpoint_url: str | None,
        region: str,
        create_bucket: bool = False,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> S3ObjectStore:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        store = cls(client, bucket)
        if create_bucket:
            store.ensure_bucket(region)
        return store

    def ensure_bucket(self, region: str) -> None:
        existing = {b["Name"] for b in self._client.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            self._client.create_bucket(
                Bucket=self.bucket,
                CreateBucketConfiguration={"LocationConstraint": region},
            )

    def put(self, key: str, body: bytes) -> str:
        response = self._client.put_object(Bucket=self.bucket, Key=key, Body=body)
        return response["ETag"].strip('"')

    def get(self, key: str, *, if_match: str | None = None) -> bytes:
        return self.open(key, if_match=if_match).read()

    def open(self, key: str, *, if_match: str | None = None) -> BinaryIO:
        from botocore.exceptions import ClientError

        extra = {"IfMatch": f'"{if_match}"'} if if_match else {}
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if if_match and code in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                raise ObjectChangedError(
                    f"s3://{self.bucket}/{key} changed since it was listed ({code})"
                ) from exc
            raise

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        options: dict[str, Any] = {"PaginationConfig": {"PageSize": self.page_size}}
        if start_after:
            options["StartAfter"] = start_after
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, **options):
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"],
                    etag=item["ETag"].strip('"'),
                    size=item["Size"],
                    last_modified=item["LastModified"],
                )

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=key)
