"""Google Pub/Sub as the dead letter: `pubsub_bad_topic`.

Reads: PUBSUB_BAD_TOPIC (a topic name, or a full `projects/<p>/topics/<t>` path),
DEAD_LETTER_DIR and DEAD_LETTER_MAX_BYTES (the spool it falls back to), and the
connection variables in connection.py (PUBSUB_PROJECT or BIGQUERY_PROJECT for a bare
name, credentials, PUBSUB_EMULATOR_HOST).

Each failed batch is published as one message whose data is the same JSON line the
spool would hold (destination, table, reason, attempts, spooled_at, rows), with
`destination`, `table`, `reason` and `attempts` as attributes. A batch over Pub/Sub's
message limit is split. If publishing fails, the batch goes to the local spool
instead, so nothing is lost either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import ConfigError, Settings
from destinations.base import short_error
from destinations.deadletter import DeadLetter, encode_batch
from destinations.pubsub.connection import Publisher as _Publisher
from destinations.pubsub.connection import PubSubConnection, cut

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 9 * 1024 * 1024  # Pub/Sub's limit is 10 MB per message, attributes included
PUBLISH_TIMEOUT = 30.0


@dataclass(frozen=True)
class PubSubConfig:
    topic: str
    connection: PubSubConnection

    @classmethod
    def from_settings(cls, settings: Settings) -> PubSubConfig:
        connection = PubSubConnection.from_settings(settings)
        topic = connection.topic_path(settings.require("pubsub_bad_topic", "dead letter"), "PUBSUB_BAD_TOPIC")
        return cls(topic, connection)


class Publisher:
    """Publishes one message to the bad topic and waits for Pub/Sub's answer."""

    def __init__(self, config: PubSubConfig) -> None:
        self.config = config
        self._publisher = _Publisher(config.connection)

    def publish(self, data: bytes, attributes: dict[str, str]) -> None:
        self._publisher.client().publish(self.config.topic, data, **attributes).result(timeout=PUBLISH_TIMEOUT)

    def close(self) -> None:
        self._publisher.close()


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
        attributes = {"destination": destination, "table": table, "reason": cut(reason, 1024), "attempts": str(attempts)}
        self.publisher.publish(data, attributes)


def topic_dead_letter(settings: Settings) -> TopicDeadLetter:
    try:
        import google.cloud.pubsub_v1  # noqa: F401 - fail at start-up, not on the first failed batch
    except ImportError:
        raise ConfigError("PUBSUB_BAD_TOPIC needs google-cloud-pubsub installed") from None
    directory = settings.get("dead_letter_dir", "./spool") or "./spool"
    max_bytes = settings.get_int("dead_letter_max_bytes", 1 << 30, 1024)
    return TopicDeadLetter(directory, max_bytes, Publisher(PubSubConfig.from_settings(settings)))
