"""`gcs`: gzip NDJSON objects in a Google Cloud Storage bucket.

Reads: GCS_BUCKET (required), GCS_PROJECT, GCS_SERVICE_ACCOUNT with
GCS_SERVICE_ACCOUNT_PRIVATE_KEY (a service account's email and PEM key), GCS_KEYFILE
(a key file's path or its JSON), STORAGE_EMULATOR_HOST, LAKE_PREFIX,
LAKE_MAX_OBJECT_BYTES. Without explicit credentials, Application Default Credentials
apply; with STORAGE_EMULATOR_HOST the client talks to the emulator anonymously.
Objects are stored with `Content-Encoding: gzip`, so GCS may serve them decompressed
(decompressive transcoding) to clients that do not ask for gzip.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from google.api_core import exceptions as gx
from google.auth import exceptions as ax
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from core.settings import Settings
from destinations.base import LazyClient, PermanentError, ServiceErrors, TransientError
from destinations.google import GoogleAuth
from destinations.lake import LakeConfig, LakeSink, LakeWriter

TIMEOUT = (5, 60)  # connect, read (seconds)
# The IAM permission each operation needs, for messages that name the missing one.
PERMISSIONS = {
    "put": "storage.objects.create",
    "delete": "storage.objects.delete",
    "list": "storage.objects.list",
    "get bucket": "storage.buckets.get",
    "create bucket": "storage.buckets.create",
}


@dataclass(frozen=True)
class GCSConfig:
    bucket: str
    project: str | None = None
    emulator_host: str | None = None
    auth: GoogleAuth = field(default_factory=GoogleAuth)

    @classmethod
    def from_settings(cls, settings: Settings) -> GCSConfig:
        return cls(
            bucket=settings.require("gcs_bucket", "gcs"),
            project=settings.get("gcs_project"),
            emulator_host=settings.get("storage_emulator_host"),
            auth=GoogleAuth.from_settings(settings, "gcs", email_key="service_account"),
        )


class GCSStore:
    def __init__(self, config: GCSConfig) -> None:
        self.config = config
        self.bucket_name = config.bucket
        self._client = LazyClient(self._make_client)

    def client(self) -> Any:
        with self._errors("connect"):
            return self._client.get()

    def _make_client(self) -> Any:
        c = self.config
        if c.emulator_host:
            options = {"api_endpoint": c.emulator_host}
            return storage.Client(project=c.project or "local", credentials=AnonymousCredentials(), client_options=options)
        if c.auth.configured:
            return storage.Client(project=c.project or c.auth.project(), credentials=c.auth.credentials())
        return storage.Client(project=c.project)  # Application Default Credentials

    def _bucket(self) -> Any:
        return self.client().bucket(self.bucket_name)

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        where = f"gcs {operation} on bucket {self.bucket_name}"
        try:
            yield
        except gx.GoogleAPICallError as exc:
            status = exc.code if isinstance(exc.code, int) else 0
            raise ServiceErrors("gcs", "bucket", self.bucket_name, PERMISSIONS).classify(operation, status) from None
        except ax.TransportError as exc:
            raise TransientError(f"{where}: {type(exc).__name__}") from None
        except ax.RefreshError as exc:
            error = TransientError if getattr(exc, "retryable", False) else PermanentError
            raise error(f"{where}: credentials could not be refreshed") from None
        except ax.GoogleAuthError as exc:
            raise PermanentError(f"{where}: {type(exc).__name__} (no usable Google credentials)") from None
        except (ValueError, OSError) as exc:
            if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
                raise TransientError(f"{where}: {type(exc).__name__}") from None
            raise PermanentError(f"{where}: {type(exc).__name__}") from None

    def put(self, key: str, data: bytes | bytearray, content_type: str, content_encoding: str | None) -> None:
        with self._errors("put"):
            blob = self._bucket().blob(key)
            blob.content_encoding = content_encoding
            # if_generation_match=0: create only, never replace an object; retries belong to the delivery layer.
            # The client takes bytes only (not a packed chunk's bytearray).
            blob.upload_from_string(bytes(data), content_type=content_type, if_generation_match=0, retry=None, timeout=TIMEOUT)

    def ensure_container(self) -> None:
        with self._errors("get bucket"):
            try:
                if self.client().lookup_bucket(self.bucket_name, timeout=TIMEOUT) is not None:
                    return
            except gx.Forbidden:
                return  # it may exist but we may not read its metadata: the write probe decides
        with self._errors("create bucket"):
            try:
                self.client().create_bucket(self.bucket_name, timeout=TIMEOUT)
            except gx.Conflict:
                pass  # created meanwhile (another worker)

    def delete(self, key: str) -> None:
        with self._errors("delete"):
            try:
                self._bucket().delete_blob(key, timeout=TIMEOUT, retry=None)
            except gx.NotFound:
                pass

    def list_keys(self, prefix: str) -> list[str]:
        with self._errors("list"):
            return [blob.name for blob in self.client().list_blobs(self.bucket_name, prefix=prefix, timeout=TIMEOUT)]

    def close(self) -> None:
        self._client.close()


class GCSSink(LakeSink):
    """Row sink over the shared lake writer."""

    name = "gcs"

    def __init__(self, settings: Settings) -> None:
        self.config = GCSConfig.from_settings(settings)
        super().__init__(LakeWriter(GCSStore(self.config), LakeConfig.from_settings(settings)))

    def health(self) -> dict[str, Any]:
        return {"bucket": self.config.bucket, "endpoint": self.config.emulator_host or "gcs"}
