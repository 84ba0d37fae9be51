"""Google Pub/Sub as the dead letter: `pubsub_bad_topic`.

Reads: PUBSUB_BAD_TOPIC (a topic name, or a full `projects/<p>/topics/<t>` path),
PUBSUB_PROJECT (needed for a bare name), PUBSUB_KEYFILE, or PUBSUB_SERVICE_ACCOUNT_EMAIL
with PUBSUB_SERVICE_ACCOUNT_PRIVATE_KEY; otherwise Application Default Credentials.
The client honours PUBSUB_EMULATOR_HOST by itself.

Each failed batch is published as one message whose data is the same JSON line the
spool would hold (destination, table, reason, attempts, spooled_at, rows), with
`destination`, `table`, `reason` and `attempts` as attributes. A batch over Pub/Sub's
message limit is split. If publishing fails, the batch goes to the local spool
instead, so nothing is lost either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import green
from core.settings import ConfigError, Settings
from destinations.base import LazyClient, short_error
from destinations.deadletter import DeadLetter, encode_batch
from destinations.google import GoogleAuth

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 9 * 1024 * 1024  # Pub/Sub's limit is 10 MB per message, attributes included
PUBLISH_TIMEOUT = 30.0


@dataclass(frozen=True)
class PubSubConfig:
    topic: str
    auth: GoogleAuth = field(default_factory=GoogleAuth)

    @classmethod
    def from_settings(cls, settings: Settings) -> PubSubConfig:
        topic = settings.require("pubsub_bad_topic", "dead letter")
        if not topic.startswith("projects/"):
            project = settings.get("pubsub_project")
            if not project:
                raise ConfigError("pubsub_project is required when pubsub_bad_topic is a bare topic name")
            topic = f"projects/{project}/topics/{topic}"
        return cls(
            topic=topic,
            auth=GoogleAuth.from_settings(settings, "pubsub"),
        )


class Publisher:
    """One PublisherClient per process, created on first use."""

    def __init__(self, config: PubSubConfig) -> None:
        self.config = config
        self._client = LazyClient(self._make_client)

    def _make_client(self) -> Any:
        green.init_grpc()
        from google.cloud import pubsub_v1

        return pubsub_v1.PublisherClient(credentials=self.config.auth.credentials())

    def publish(self, data: bytes, attributes: dict[str, str]) -> None:
        self._client.get().publish(self.config.topic, data, **attributes).result(timeout=PUBLISH_TIMEOUT)


class TopicDeadLetter(DeadLetter):
    """Publishes failed batches to `pubsub_bad_topic`; spools them when that fails."""

    def __init__(self, directory: str, max_bytes: int, publisher: Publisher) -> None:
        super().__init__(directory, max_bytes)
        self.publisher = publisher

    def room(self) -> int | None:
        return None  # the topic takes what it is sent; only if publishing fails does the spool

    def put(self, destination: str, table: str, rows: list[Any], reason: str, attempts: int, encoded: bool = False) -> Path:
        try:
            self._publish(destination, table, rows, reason, attempts, encoded)
        except Exception as exc:  # noqa: BLE001 - any publishing failure falls back to the spool
            log.warning("publishing %d rows to the bad topic failed (%s); spooling", len(rows), short_error(exc))
            return super().put(destination, table, rows, reason, attempts, encoded)
        log.warning("sent %d rows for %s/%s to the bad topic (%s)", len(rows), destination, table, reason.split(":", 1)[0])
        return Path(self.publisher.config.topic)

    def _publish(self, destination: str, table: str, rows: list[Any], reason: str, attempts: int, encoded: bool) -> None:
        data = encode_batch(destination, table, rows, reason, attempts, encoded)
        if len(data) > MAX_MESSAGE_BYTES and len(rows) > 1:
            half = len(rows) // 2
            self._publish(destination, table, rows[:half], reason, attempts, encoded)
            self._publish(destination, table, rows[half:], reason, attempts, encoded)
            return
        attributes = {"destination": destination, "table": table, "reason": reason[:1024], "attempts": str(attempts)}
        self.publisher.publish(data, attributes)


def topic_dead_letter(settings: Settings) -> TopicDeadLetter:
    try:
        import google.cloud.pubsub_v1  # noqa: F401 - fail at start-up, not on the first failed batch
    except ImportError:
        raise ConfigError("pubsub_bad_topic needs google-cloud-pubsub installed") from None
    directory = settings.get("dead_letter_dir", "./spool") or "./spool"
    max_bytes = settings.get_int("dead_letter_max_bytes", 1 << 30, 1024)
    return TopicDeadLetter(directory, max_bytes, Publisher(PubSubConfig.from_settings(settings)))
