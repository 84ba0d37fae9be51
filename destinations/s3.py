"""`s3`: gzip NDJSON objects in an Amazon S3 bucket (or an S3-compatible store).

Reads: S3_BUCKET (required), S3_REGION, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY,
S3_SESSION_TOKEN, S3_ENDPOINT_URL (else AWS_ENDPOINT_URL_S3), LAKE_PREFIX,
LAKE_MAX_OBJECT_BYTES. Without keys boto3's standard credential chain applies
(environment, profile, SSO, container or instance role). With an endpoint URL the
client uses path-style addressing, which S3-compatible stores expect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from botocore import exceptions as bx

from core.settings import Settings
from destinations import aws
from destinations.base import DestinationError, LazyClient, PermanentError, ServiceErrors, TransientError
from destinations.lake import LakeConfig, LakeSink, LakeWriter, table_prefix

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "RequestLimitExceeded",
        "OperationAborted",
        "TokenRefreshRequired",
    }
)
# The IAM action each call needs, for messages that name the missing permission.
ACTIONS = {
    "PutObject": "s3:PutObject",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
    "ListObjectsV2": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "CreateBucket": "s3:CreateBucket",
}


@dataclass(frozen=True)
class S3Config:
    bucket: str
    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Config:
        return cls(
            bucket=settings.require("s3_bucket", "s3"),
            region=settings.get("s3_region"),
            endpoint_url=settings.get("s3_endpoint_url") or settings.get("aws_endpoint_url_s3"),
            access_key_id=settings.get("s3_access_key_id"),
            secret_access_key=settings.get("s3_secret_access_key"),
            session_token=settings.get("s3_session_token"),
        )


class S3Store:
    def __init__(self, config: S3Config) -> None:
        self.config = config
        self.bucket = config.bucket
        self._client = LazyClient(self._make_client)

    def client(self) -> Any:
        return self._client.get()

    def _make_client(self) -> Any:
        c = self.config
        return aws.client(
            "s3",
            region=c.region,
            endpoint_url=c.endpoint_url,
            access_key_id=c.access_key_id,
            secret_access_key=c.secret_access_key,
            session_token=c.session_token,
            s3={"addressing_style": "path"} if c.endpoint_url else {},
        )

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except bx.ClientError as exc:
            raise classify(exc, self.bucket) from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError, bx.NoRegionError, bx.ParamValidationError) as exc:
            raise PermanentError(f"s3 {operation} on bucket {self.bucket}: {type(exc).__name__}") from None
        except (bx.HTTPClientError, bx.ConnectionError, ConnectionError, TimeoutError) as exc:
            raise TransientError(f"s3 {operation} on bucket {self.bucket}: {type(exc).__name__}") from None
        except bx.BotoCoreError as exc:
            raise TransientError(f"s3 {operation} on bucket {self.bucket}: {type(exc).__name__}") from None

    def put(self, key: str, data: bytes | bytearray, content_type: str, content_encoding: str | None) -> None:
        extra = {"ContentEncoding": content_encoding} if content_encoding else {}
        with self._errors("PutObject"):
            self.client().put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, **extra)

    def ensure_container(self) -> None:
        client = self.client()
        with self._errors("HeadBucket"):
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except bx.ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 403:
                    return  # it exists but we may not list it: the write probe decides
                if status != 404:
                    raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with self._errors("CreateBucket"):
            try:
                client.create_bucket(**kwargs)
            except bx.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":  # another worker won
                    raise

    def delete(self, key: str) -> None:
        with self._errors("DeleteObject"):
            self.client().delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, keys: list[str]) -> None:
        """Up to 1,000 keys per DeleteObjects call."""
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            with self._errors("DeleteObjects"):
                reply = self.client().delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
            errors = reply.get("Errors") or []
            if errors:
                code = str(errors[0].get("Code", "Unknown"))
                raise errors_for(self.bucket).classify("DeleteObjects", 403 if code == "AccessDenied" else 0, code)

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with self._errors("ListObjectsV2"):
            for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def close(self) -> None:
        self._client.close()


def errors_for(bucket: str) -> ServiceErrors:
    return ServiceErrors(
        "s3",
        "bucket",
        bucket,
        ACTIONS,
        transient_codes=TRANSIENT_CODES,
        not_found_codes=frozenset({"NoSuchBucket", "404", "NotFound"}),
        denied_codes=frozenset({"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"}),
        credential_codes=frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}),
    )


def classify(exc: Any, bucket: str) -> DestinationError:
    """botocore ClientError -> our error, from its code and status only (never the server's text)."""
    error = exc.response.get("Error", {}) if isinstance(getattr(exc, "response", None), dict) else {}
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) if error else 0
    return errors_for(bucket).classify(exc.operation_name, int(status or 0), str(error.get("Code", "Unknown")))


class S3Sink(LakeSink):
    """Row sink over the shared lake writer."""

    name = "s3"

    def __init__(self, settings: Settings) -> None:
        self.config = S3Config.from_settings(settings)
        super().__init__(LakeWriter(S3Store(self.config), LakeConfig.from_settings(settings)))

    def drop(self, tables: list[str]) -> list[str]:
        # LakeWriter.drop deletes key by key; S3 deletes a thousand per call over the same exact prefixes.
        deleted: list[str] = []
        for table in tables:
            keys = self.writer.store.list_keys(table_prefix(self.writer.config, table))
            self.writer.store.delete_many(keys)
            deleted.extend(keys)
        return deleted

    def health(self) -> dict[str, Any]:
        return {"bucket": self.config.bucket, "endpoint": self.config.endpoint_url or "aws"}
