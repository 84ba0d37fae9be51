"""`pubsub`: one Pub/Sub message per row, with attributes subscriptions can filter on.

Reads: PUBSUB_GOOD_TOPIC (every row goes there; unset, rows go to one topic per kind named
after its table: EVENTS_TABLE_NAME, USERS_TABLE_NAME, GROUPS_TABLE_NAME), PUBSUB_ORDERING
(`true`: an ordering key per `distinct_id`), PUBSUB_PUBLISH_MAX_MESSAGES,
PUBSUB_PUBLISH_MAX_BYTES, PUBSUB_PUBLISH_MAX_LATENCY_SECONDS (the publisher client's
batching), PUBSUB_ATTEMPT_TIMEOUT_SECONDS, and the connection variables in
connection.py (PUBSUB_PROJECT, credentials, PUBSUB_EMULATOR_HOST).

A message's data is the row's JSON, byte for byte the NDJSON line the lakes store; its
attributes are `kind`, `table`, and where the row has them `event`, `insert_id`, `token`
and `operation` (values cut to Pub/Sub's 1,024-byte limit; the data keeps them whole).

Rows reach the sink through the shared delivery buffer (docs/pubsub.md says why): each
`write` hands a chunk to the publisher client, which batches it into Publish calls, and
waits for every message's answer, so a row counts as written only once Pub/Sub has
acknowledged it. A row too large for one message is rejected alone (and dead-lettered
with the reason); a failed Publish fails the write (retried or dead-lettered by the
delivery layer). With ordering, a failed key is resumed before the write is retried.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent import futures as cf
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gx
from google.api_core import retry as rx
from google.cloud.pubsub_v1 import types
from google.cloud.pubsub_v1.publisher.exceptions import MessageTooLargeError
from google.cloud.pubsub_v1.publisher.exceptions import PublishToPausedOrderingKeyException as Paused

from core import codec
from core.settings import ConfigError, Settings
from destinations.base import Capabilities, PermanentError, Rejection, RowSink, SinkResult, TransientError
from destinations.pubsub.connection import Publisher, PubSubConnection, classify, cut
from destinations.rows import Line, text

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 10_000_000  # Pub/Sub's limit for one Publish request, so for one message
MAX_ATTRIBUTE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024
ATTRIBUTE_COLUMNS = ("event", "insert_id", "token", "operation")
# The publisher client's batching (docs/pubsub.md, "Batching"). A write hands over a whole
# chunk at once, so batches fill on count or size and the latency only times the tail.
PUBLISH_MAX_MESSAGES = 1000  # the API's limit per Publish request
PUBLISH_MAX_BYTES = 5_000_000  # half the request limit: a retried call resends at most this
PUBLISH_MAX_LATENCY = 0.01
# What one write may carry: a few concurrent Publish calls' worth.
WRITE_MAX_ROWS = 10_000
WRITE_MAX_BYTES = 16 * 1024 * 1024
ATTEMPT_TIMEOUT = 30.0


@dataclass(frozen=True)
class PubSubSinkConfig:
    connection: PubSubConnection
    #: table -> full topic path.
    topics: dict[str, str]
    #: table -> record kind (event, user, group).
    kinds: dict[str, str]
    #: True when the topics are this proxy's per-kind topics (drop may delete them).
    per_kind: bool
    ordering: bool = False
    max_messages: int = PUBLISH_MAX_MESSAGES
    max_bytes: int = PUBLISH_MAX_BYTES
    max_latency: float = PUBLISH_MAX_LATENCY
    attempt_timeout: float = ATTEMPT_TIMEOUT

    @classmethod
    def from_settings(cls, settings: Settings) -> PubSubSinkConfig:
        connection = PubSubConnection.from_settings(settings)
        kinds = {table: kind for kind, table in settings.table_names.items()}
        good = settings.get("pubsub_good_topic")
        if good:
            path = connection.topic_path(good, "PUBSUB_GOOD_TOPIC")
            topics = {table: path for table in kinds}
        else:
            topics = {table: connection.topic_path(table, f"{kind.upper()}S_TABLE_NAME") for table, kind in kinds.items()}
        bad = settings.get("pubsub_bad_topic")
        bad_path = connection.topic_path(bad, "PUBSUB_BAD_TOPIC") if bad else None
        if bad_path and bad_path in topics.values():
            raise ConfigError("PUBSUB_BAD_TOPIC must not be a topic the pubsub destination publishes rows to")
        # Pub/Sub's limits per Publish request: 1,000 messages, 10 MB.
        max_messages = settings.get_int("pubsub_publish_max_messages", PUBLISH_MAX_MESSAGES, 1, 1000)
        max_bytes = settings.get_int("pubsub_publish_max_bytes", PUBLISH_MAX_BYTES, 1024, MAX_REQUEST_BYTES)
        return cls(
            connection=connection,
            topics=topics,
            kinds=kinds,
            per_kind=not good,
            ordering=settings.get_bool("pubsub_ordering"),
            max_messages=max_messages,
            max_bytes=max_bytes,
            max_latency=settings.get_float("pubsub_publish_max_latency_seconds", PUBLISH_MAX_LATENCY, 0),
            attempt_timeout=settings.get_float("pubsub_attempt_timeout_seconds", ATTEMPT_TIMEOUT, 0.1),
        )


def attributes(kind: str, table: str, row: dict[str, Any]) -> dict[str, str]:
    """The message attributes for one row: kind and table always, the filterable columns
    where the row has them."""
    out = {"kind": kind, "table": table}
    for column in ATTRIBUTE_COLUMNS:
        value = row.get(column)
        if value is not None:
            out[column] = cut(value if isinstance(value, str) else text(value) or "", MAX_ATTRIBUTE_BYTES)
    return out


def ordering_key(row: dict[str, Any]) -> str:
    """Events and profile updates are ordered per `distinct_id`; group updates per group."""
    key = row.get("distinct_id")
    if key is None and row.get("group_id") is not None:
        key = f"{row.get('group_key') or ''}/{row['group_id']}"
    return cut(key if isinstance(key, str) else text(key) or "", MAX_ORDERING_KEY_BYTES)


class PubSubSink(RowSink):
    name = "pubsub"

    def __init__(self, settings: Settings) -> None:
        self.config = PubSubSinkConfig.from_settings(settings)
        self.capabilities = Capabilities(
            takes="lines",
            max_rows=WRITE_MAX_ROWS,
            max_bytes=WRITE_MAX_BYTES,
            attempt_timeout=self.config.attempt_timeout,
            idempotent=False,
        )
        self.publisher = Publisher(self.config.connection, *self._client_settings())

    def _client_settings(self) -> tuple[Any, Any]:
        c = self.config
        batch = types.BatchSettings(max_bytes=c.max_bytes, max_latency=c.max_latency, max_messages=c.max_messages)
        # The client retries one Publish call's transient failures (a cheap, duplicate-free
        # retry of that call alone) within part of the attempt; the delivery layer's policy
        # takes over when that runs out.
        budget = c.attempt_timeout * 0.6
        if c.ordering:
            # With ordering the client stretches any retry to forever, so it gets none: a failed
            # call pauses its key, write() resumes it and the delivery layer retries the write.
            return batch, types.PublisherOptions(enable_message_ordering=True, retry=None, timeout=budget)
        transient = rx.if_exception_type(
            gx.Aborted,
            gx.Cancelled,
            gx.DeadlineExceeded,
            gx.InternalServerError,
            gx.ResourceExhausted,
            gx.ServiceUnavailable,
            gx.Unknown,
        )
        retry = rx.Retry(predicate=transient, initial=0.1, maximum=2.0, multiplier=2.0, timeout=budget)
        return batch, types.PublisherOptions(retry=retry, timeout=budget)

    # -- writing -------------------------------------------------------------------------------
    def write(self, table: str, items: Sequence[Line]) -> SinkResult:
        topic = self.config.topics[table]
        kind = self.config.kinds.get(table, "")
        try:
            client = self.publisher.client()
        except Exception as exc:  # noqa: BLE001 - credentials or channel set-up
            raise classify(exc, "publish", topic) from None
        rejected: list[Rejection] = []
        sent: list[tuple[int, str, Any]] = []
        for index, (_hour, line) in enumerate(items):
            row = _parse(line)
            key = ordering_key(row) if self.config.ordering else ""
            try:
                data = line if isinstance(line, bytes) else bytes(line)
                future = client.publish(topic, data, ordering_key=key, **attributes(kind, table, row))
            except MessageTooLargeError:
                rejected.append(Rejection(index, f"a message of {len(line)} bytes is over Pub/Sub's 10 MB limit"))
                continue
            sent.append((index, key, future))
        done, waiting = cf.wait([f for _, _, f in sent], timeout=self.config.attempt_timeout * 0.9)
        failed = [(index, key, future.exception()) for index, key, future in sent if future in done and future.exception()]
        if failed or waiting:
            refused = self._fail(topic, len(items), len(sent) - len(failed) - len(waiting), failed, len(waiting))
            rejected = sorted(rejected + refused, key=lambda r: r.index)
        return SinkResult(len(items) - len(rejected), tuple(rejected))

    def _fail(
        self,
        topic: str,
        total: int,
        published: int,
        failed: list[tuple[int, str, BaseException]],
        unanswered: int,
    ) -> list[Rejection]:
        """Raise for a write some of whose messages failed, or return the permanent failures of
        single messages (the rest published) as rejections of those rows."""
        if self.config.ordering:
            for key in sorted({key for _, key, _ in failed if key}):
                self.publisher.client().resume_publish(topic, key)
        # A message refused because an earlier one of its ordering key failed shares that fate.
        causes = [(i, classify(e, "publish", topic)) for i, _, e in failed if not isinstance(e, Paused)]
        followers = len(failed) - len(causes)
        transient = [e for _, e in causes if isinstance(e, TransientError)]
        permanent = [(i, e) for i, e in causes if isinstance(e, PermanentError)]
        log.warning(
            "pubsub: %d of %d messages to %s failed (%d unanswered): %s",
            len(failed) + unanswered,
            total,
            topic,
            unanswered,
            (transient or [e for _, e in permanent] or ["ordering key paused"])[0],
        )
        if unanswered:
            raise TransientError(f"pubsub publish on {topic}: {unanswered} of {total} messages unanswered in time")
        if transient:
            raise TransientError(f"{transient[0]} ({len(failed)} of {total} messages)")
        if not published or followers:
            if permanent:
                raise PermanentError(f"{permanent[0][1]} ({len(failed)} of {total} messages)")
            raise TransientError(f"pubsub publish on {topic}: ordering key paused ({len(failed)} of {total} messages)")
        return [Rejection(index, str(error)) for index, error in permanent]

    # -- topics ----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Create missing topics (get, then create); never deletes or changes one. An account
        that may publish but neither read nor create topics is trusted that they exist."""
        for topic in sorted(set(self.config.topics.values())):
            self._ensure_topic(topic)

    def _ensure_topic(self, topic: str) -> None:
        client = self.publisher.client()
        timeout = self.config.attempt_timeout * 0.6
        try:
            client.get_topic(request={"topic": topic}, timeout=timeout)
            return
        except gx.NotFound:
            pass
        except gx.PermissionDenied:
            log.info("pubsub: cannot read topic %s (pubsub.topics.get); trying to create it", topic)
        except Exception as exc:  # noqa: BLE001
            raise classify(exc, "get topic", topic) from None
        try:
            client.create_topic(request={"name": topic}, timeout=timeout)
            log.info("pubsub: created topic %s", topic)
        except gx.AlreadyExists:
            pass
        except gx.PermissionDenied:
            log.warning("pubsub: may neither read nor create topic %s: assuming it exists (publishing will tell)", topic)
        except Exception as exc:  # noqa: BLE001
            raise classify(exc, "create topic", topic) from None

    def drop(self, tables: list[str]) -> list[str]:
        """Delete this proxy's per-kind topics for `tables`; a PUBSUB_GOOD_TOPIC is never
        deleted. Subscriptions are not the proxy's: they stay, detached, with their backlog."""
        if not self.config.per_kind:
            return []
        client = self.publisher.client()
        deleted = []
        for table in tables:
            topic = self.config.topics.get(table)
            if topic is None:
                continue
            try:
                client.delete_topic(request={"topic": topic}, timeout=self.config.attempt_timeout * 0.6)
            except gx.NotFound:
                continue
            except Exception as exc:  # noqa: BLE001
                raise classify(exc, "delete topic", topic) from None
            deleted.append(topic)
        return deleted

    def health(self) -> dict[str, Any]:
        return {"topics": "per_kind" if self.config.per_kind else "good_topic", "ordering": self.config.ordering}

    def close(self) -> None:
        self.publisher.close()


def _parse(line: bytes) -> dict[str, Any]:
    try:
        row = codec.loads(line)
    except ValueError:
        return {}
    return row if isinstance(row, dict) else {}
