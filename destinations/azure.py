"""`azure`: gzip NDJSON block blobs in an Azure Blob Storage container.

Reads: AZURE_CONTAINER (required), AZURE_CONNECTION_STRING, or AZURE_ACCOUNT with
AZURE_KEY, LAKE_PREFIX, LAKE_MAX_OBJECT_BYTES. With AZURE_ACCOUNT alone the standard
chain (`DefaultAzureCredential`: environment, workload or managed identity, Azure CLI)
applies (azure-identity, installed with the requirements).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from azure.core import exceptions as ax
from azure.storage.blob import BlobServiceClient, ContentSettings

from core.settings import ConfigError, Settings
from destinations.base import LazyClient, PermanentError, ServiceErrors, TransientError
from destinations.lake import LakeConfig, LakeSink, LakeWriter

CLIENT_OPTIONS = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 60}  # the delivery layer owns retries
TRANSIENT_CODES = {"ServerBusy", "OperationTimedOut", "InternalError", "IngressOverAccountLimit"}
# The data action (RBAC) or SAS permission each operation needs, for messages that name it.
PERMISSIONS = {
    "put": "blobs/write",
    "delete": "blobs/delete",
    "list": "blobs/read (list)",
    "get container": "containers/read",
    "create container": "containers/write",
}


@dataclass(frozen=True)
class AzureConfig:
    container: str
    account: str | None = None
    key: str | None = field(default=None, repr=False)
    connection_string: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> AzureConfig:
        config = cls(
            container=settings.require("azure_container", "azure"),
            account=settings.get("azure_account"),
            key=settings.get("azure_key"),
            connection_string=settings.get("azure_connection_string"),
        )
        if not config.connection_string and not config.account:
            raise ConfigError("AZURE_CONNECTION_STRING or AZURE_ACCOUNT is required by the azure destination")
        return config


class AzureStore:
    def __init__(self, config: AzureConfig) -> None:
        self.config = config
        self.container = config.container
        self._client = LazyClient(self._make_client)

    def client(self) -> Any:
        """The container client, made once per process."""
        with self._errors("connect"):
            return self._client.get()

    def _make_client(self) -> Any:
        c = self.config
        if c.connection_string:
            service = BlobServiceClient.from_connection_string(c.connection_string, **CLIENT_OPTIONS)
        else:
            credential: Any = c.key
            if not credential:
                try:
                    from azure.identity import DefaultAzureCredential
                except ImportError:
                    raise PermanentError(
                        "azure: set azure_key or azure_connection_string, or install azure-identity for the standard chain"
                    ) from None
                credential = DefaultAzureCredential()
            service = BlobServiceClient(f"https://{c.account}.blob.core.windows.net", credential=credential, **CLIENT_OPTIONS)
        return service.get_container_client(c.container)

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        where = f"azure {operation} on container {self.container}"
        try:
            yield
        except ax.HttpResponseError as exc:
            # Only the status and error code: the exception text carries the service's whole reply.
            code = str(getattr(exc, "error_code", None) or "")
            errors = ServiceErrors("azure", "container", self.container, PERMISSIONS, transient_codes=frozenset(TRANSIENT_CODES))
            raise errors.classify(operation, exc.status_code or 0, code) from None
        except (ax.ServiceRequestError, ax.ServiceResponseError, ConnectionError, TimeoutError) as exc:
            raise TransientError(f"{where}: {type(exc).__name__}") from None
        except ValueError as exc:  # a malformed connection string or key
            raise PermanentError(f"{where}: invalid configuration ({type(exc).__name__})") from None

    def put(self, key: str, data: bytes | bytearray, content_type: str, content_encoding: str | None) -> None:
        settings = ContentSettings(content_type=content_type, content_encoding=content_encoding)
        with self._errors("put"):
            # overwrite=False: create only, never replace an existing blob. The client streams bytes;
            # any other iterable (a packed chunk's bytearray) it would read an int at a time.
            self.client().upload_blob(key, bytes(data), overwrite=False, content_settings=settings, length=len(data))

    def ensure_container(self) -> None:
        client = self.client()
        with self._errors("get container"):
            try:
                if client.exists():
                    return
            except ax.HttpResponseError as exc:
                if exc.status_code == 403:
                    return  # it may exist but we may not read it (e.g. a write-only SAS): the probe decides
                raise
        with self._errors("create container"):
            try:
                client.create_container()
            except ax.ResourceExistsError:
                pass  # created meanwhile (another worker)

    def delete(self, key: str) -> None:
        with self._errors("delete"):
            try:
                self.client().delete_blob(key)
            except ax.ResourceNotFoundError:
                pass

    def list_keys(self, prefix: str) -> list[str]:
        with self._errors("list"):
            return list(self.client().list_blob_names(name_starts_with=prefix))

    def close(self) -> None:
        self._client.close()


class AzureSink(LakeSink):
    """Row sink over the shared lake writer."""

    name = "azure"

    def __init__(self, settings: Settings) -> None:
        self.config = AzureConfig.from_settings(settings)
        super().__init__(LakeWriter(AzureStore(self.config), LakeConfig.from_settings(settings)))

    def health(self) -> dict[str, Any]:
        return {"container": self.config.container, "account": self.config.account or "from connection string"}
