"""Media bytes as objects in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, ...).

One boto3 client, created at start-up; every call that touches the network runs on the
reactor's thread pool. Failures to reach the endpoint become `StorageUnavailable` (with
`timed_out` set for timeouts); a missing object is just "absent". Presigned URLs let
clients download and upload directly, bypassing the homeserver.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    ReadTimeoutError,
)
from twisted.internet import threads

from media_repo.headers import content_disposition
from media_repo.providers.base import StorageUnavailable
from media_repo.providers.filesystem import validate_key

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Error codes S3 (and compatible stores) use for "no such object"; HEAD has no body, so
# botocore reports only the status code there.
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})

class S3Provider:
    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None,
        region: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        reactor: Any,
        timeout_s: float = 30,
        key_prefix: str = "",
        max_attempts: int = 3,
    ) -> None:
        """`endpoint_url` None means AWS itself; `access_key_id`/`secret_access_key` None
        lets boto3 find credentials in the environment (env vars, profile, instance role).
        `timeout_s` bounds connecting and each read; `max_attempts` counts the first try."""
        self._bucket = bucket
        self._key_prefix = key_prefix
        self._reactor = reactor
        config = Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            signature_version="s3v4",
            # Custom endpoints (MinIO, moto, most self-hosted stores) want path-style URLs.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            # Checksums only where S3 requires them: many S3-compatible stores reject the
            # CRC trailers newer botocore sends by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session of our own: boto3's default session is shared and not thread-safe;
        # a client is, so the one client serves every thread.
        session = boto3.session.Session()
        self._client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    def _object_key(self, key: str) -> str:
        validate_key(key)
        return self._key_prefix + key

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        """Run `func` on the thread pool, turning transport failures into
        StorageUnavailable. ClientErrors other than the caller's expected ones are the
        caller's to translate (see `_unavailable`)."""
        try:
            return await threads.deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), func, *args
            )
        except (ConnectTimeoutError, ReadTimeoutError, TimeoutError) as e:
            logger.warning("S3 bucket %s timed out: %s", self._bucket, e)
            raise StorageUnavailable(f"S3 request timed out: {e}", timed_out=True) from e
        except (BotoCoreError, OSError) as e:
            logger.warning("S3 bucket %s unreachable: %s", self._bucket, e)
            raise StorageUnavailable(f"S3 endpoint unreachable: {e}") from e
        except ClientError as e:
            if _is_missing(e):
                raise
            logger.warning("S3 bucket %s answered with an error: %s", self._bucket, e)
            raise StorageUnavailable(f"S3 error: {_error_code(e)}") from e

    async def store(self, key: str, data: bytes, content_type: str) -> None:
        object_key = self._object_key(key)

        def put() -> None:
            self._client.put_object(
                Bucket=self._bucket, Key=object_key, Body=data, ContentType=content_type
            )

        await self._call(put)

    async def fetch(self, key: str) -> bytes | None:
        object_key = self._object_key(key)

        def get() -> bytes:
            response = self._client.get_object(Bucket=self._bucket, Key=object_key)
            with response["Body"] as body:
                return bytes(body.read())

        try:
            return await self._call(get)
        except ClientError:  # only "missing" gets through _call
            return None

    async def _head(self, key: str) -> dict[str, Any] | None:
        object_key = self._object_key(key)

        def head() -> dict[str, Any]:
            return dict(self._client.head_object(Bucket=self._bucket, Key=object_key))

        try:
            return await self._call(head)
        except ClientError:
            return None

    async def exists(self, key: str) -> bool:
        return await self._head(key) is not None

    async def size_of(self, key: str) -> int | None:
        head = await self._head(key)
        return None if head is None else int(head["ContentLength"])

    async def delete(self, key: str) -> None:
        object_key = self._object_key(key)

        def delete() -> None:
            self._client.delete_object(Bucket=self._bucket, Key=object_key)

        try:
            await self._call(delete)
        except ClientError:
            pass  # already gone

    def download_url(self, key: str, filename: str | None, content_type: str,
                     expires_in_s: int) -> str | None:
        # Signing is local computation (no network), so it runs on the calling thread.
        return str(self._client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self._bucket,
                "Key": self._object_key(key),
                "ResponseContentType": content_type,
                "ResponseContentDisposition": content_disposition(content_type, filename),
            },
            ExpiresIn=expires_in_s,
        ))

    def upload_url(self, key: str, content_type: str, max_bytes: int,
                   expires_in_s: int) -> str | None:
        """A presigned PUT; the client must send the same Content-Type. A presigned PUT
        cannot cap the body size, so `max_bytes` is not enforced here: check `size_of`
        after the client reports the upload done."""
        return str(self._client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self._bucket,
                "Key": self._object_key(key),
                "ContentType": content_type,
            },
            ExpiresIn=expires_in_s,
        ))


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "unknown"))


def _is_missing(error: ClientError) -> bool:
    return _error_code(error) in _MISSING_CODES
