"""How this proxy reaches Google Pub/Sub: project, credentials, endpoint, topic names, errors.

Reads: PUBSUB_PROJECT (else BIGQUERY_PROJECT, else the keyfile's `project_id`),
PUBSUB_KEYFILE (a path or the JSON itself), or PUBSUB_SERVICE_ACCOUNT_EMAIL with
PUBSUB_SERVICE_ACCOUNT_PRIVATE_KEY; without either, Application Default Credentials.
PUBSUB_EMULATOR_HOST (`host:port`) talks to an emulator over an insecure channel with no
credentials; PUBSUB_API_ENDPOINT picks another endpoint, e.g. a regional one
(`us-east1-pubsub.googleapis.com:443`, which message ordering benefits from).

Shared by the destination (sink.py) and the dead-letter topic (deadletter.py). The
variables are read through Settings, so they work from `.env` as well as from the
environment.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from core import green
from core.settings import ConfigError, Settings
from destinations.base import DestinationError, PermanentError, TransientError
from destinations.google import GoogleAuth

log = logging.getLogger(__name__)
# Topic ids: 3-255 characters, a letter first, then letters, digits and - _ . ~ + %; never "goog...".
TOPIC_ID = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
TOPIC_PATH = re.compile(r"^projects/([^/]+)/topics/([^/]+)$")
# The IAM permission each operation needs, for messages that name the missing one.
PERMISSIONS = {
    "publish": "pubsub.topics.publish",
    "create topic": "pubsub.topics.create",
    "get topic": "pubsub.topics.get",
    "delete topic": "pubsub.topics.delete",
}


def cut(value: str, limit: int) -> str:
    """`value` within `limit` UTF-8 bytes, never splitting a character (attribute values and
    ordering keys have byte limits)."""
    encoded = value.encode("utf-8")
    return value if len(encoded) <= limit else encoded[:limit].decode("utf-8", "ignore")


def valid_topic_id(topic_id: str) -> bool:
    return bool(TOPIC_ID.match(topic_id)) and not topic_id.lower().startswith("goog")


@dataclass(frozen=True)
class PubSubConnection:
    project: str | None = None
    emulator_host: str | None = None
    api_endpoint: str | None = None
    auth: GoogleAuth = field(default_factory=GoogleAuth)

    @classmethod
    def from_settings(cls, settings: Settings) -> PubSubConnection:
        auth = GoogleAuth.from_settings(settings, "pubsub")
        project = settings.get("pubsub_project") or settings.get("bigquery_project")
        if not project and auth.configured:
            try:
                project = auth.project()
            except (OSError, ValueError) as exc:
                raise ConfigError(f"PUBSUB_KEYFILE cannot be read: {type(exc).__name__}") from None
        return cls(project, settings.get("pubsub_emulator_host"), settings.get("pubsub_api_endpoint"), auth)

    def topic_path(self, name: str, variable: str) -> str:
        """A full topic path from a bare topic id (in the project) or a full path; ConfigError
        naming `variable` when it is not a valid topic name."""
        match = TOPIC_PATH.match(name)
        if match:
            if not valid_topic_id(match.group(2)):
                raise ConfigError(f"{variable}={name!r}: {match.group(2)!r} is not a valid Pub/Sub topic id")
            return name
        if "/" in name or not valid_topic_id(name):
            raise ConfigError(
                f"{variable}={name!r} is not a valid Pub/Sub topic: 3-255 letters, digits or - _ . ~ + %, "
                "starting with a letter and not with 'goog' (or a full projects/P/topics/T path)"
            )
        if not self.project:
            raise ConfigError(f"PUBSUB_PROJECT (or BIGQUERY_PROJECT) is required for the topic {name!r} ({variable})")
        return f"projects/{self.project}/topics/{name}"

    def publisher(self, batch_settings: Any = (), publisher_options: Any = ()) -> Any:
        """A google-cloud-pubsub PublisherClient for this connection (one per process: it owns
        the batching threads and the gRPC channel)."""
        green.init_grpc()
        from google.cloud import pubsub_v1

        kwargs: dict[str, Any] = {}
        if self.emulator_host:
            import grpc
            from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

            options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
            channel = grpc.insecure_channel(self.emulator_host, options=options)
            kwargs["transport"] = PublisherGrpcTransport(channel=channel)
        else:
            kwargs["credentials"] = self.auth.credentials()
            if self.api_endpoint:
                kwargs["client_options"] = {"api_endpoint": self.api_endpoint}
        return pubsub_v1.PublisherClient(batch_settings, publisher_options, **kwargs)


class Publisher:
    """The process's one PublisherClient for a connection, made on first use (concurrent first
    uses wait for one construction). `close()` sends whatever is still batched and closes the
    channel; PublisherClient itself has no close()."""

    def __init__(self, connection: PubSubConnection, batch_settings: Any = (), publisher_options: Any = ()) -> None:
        self.connection = connection
        self.batch_settings = batch_settings
        self.publisher_options = publisher_options
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self.connection.publisher(self.batch_settings, self.publisher_options)
                client = self._client
        return client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        try:
            client.stop()
        except RuntimeError:  # already stopped
            pass
        try:
            client.transport.close()
        except Exception as exc:  # noqa: BLE001 - closing must not fail a shutdown
            log.debug("closing the Pub/Sub channel: %s", type(exc).__name__)


def classify(exc: BaseException, operation: str, topic: str) -> DestinationError:
    """A client error as a Transient- or PermanentError that names the topic and, when access
    was denied, the missing permission; never the service's own text (it may echo data)."""
    from google.api_core import exceptions as gx
    from google.auth import exceptions as ax

    where = f"pubsub {operation} on {topic}"
    if isinstance(exc, DestinationError):
        return exc
    if isinstance(exc, gx.NotFound):
        return PermanentError(f"pubsub topic {topic} not found ({operation})")
    if isinstance(exc, gx.PermissionDenied):
        return PermanentError(f"{PERMISSIONS.get(operation, operation)} denied on topic {topic}")
    if isinstance(exc, (gx.Unauthenticated, ax.RefreshError, ax.DefaultCredentialsError)):
        return PermanentError(f"{where}: credentials rejected ({type(exc).__name__})")
    if isinstance(exc, (gx.InvalidArgument, gx.FailedPrecondition, gx.OutOfRange)):
        return PermanentError(f"{where}: {type(exc).__name__}")
    if isinstance(exc, gx.RetryError):
        cause = exc.cause
        return TransientError(f"{where}: retries ran out ({type(cause).__name__ if cause else 'no answer'})")
    if isinstance(exc, gx.GoogleAPICallError):
        return TransientError(f"{where}: {type(exc).__name__}")
    if isinstance(exc, (ax.TransportError, TimeoutError, ConnectionError)):
        return TransientError(f"{where}: {type(exc).__name__}")
    # Anything else (a paused ordering key, a stopped client...): its text may carry an
    # ordering key, which is user data, so only its type is kept.
    return TransientError(f"{where}: {type(exc).__name__}")
