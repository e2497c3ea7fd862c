"""The object store interface (S3 protocol) and its boto3 implementation.

The same class talks to real S3 in production and to the local S3 server of the embedded
default: only the endpoint differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, Protocol


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

    def get(self, key: str) -> bytes: ...

    def open(self, key: str) -> BinaryIO:
        """A streaming reader of the object's bytes."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in key order, following pagination."""
        ...

    def delete(self, key: str) -> None: ...


class S3ObjectStore:
    """:class:`ObjectStore` over boto3."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

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

    def get(self, key: str) -> bytes:
        return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def open(self, key: str) -> BinaryIO:
        return self._client.get_object(Bucket=self.bucket, Key=key)["Body"]

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"],
                    etag=item["ETag"].strip('"'),
                    size=item["Size"],
                    last_modified=item["LastModified"],
                )

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=key)
