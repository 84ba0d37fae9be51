"""`pubsub` against Google's emulator or the gRPC stand-in, one project per run.

A topic keeps nothing a reader can list, so rows are read back through subscriptions made
here before the proxy publishes (topics first, then a subscription on each); every pull
is acknowledged and remembered, so `rows()` returns everything delivered so far.

"drop", adapted: with per-kind topics the proxy owns them, and drop deletes them; a
subscription on a deleted topic is detached (its topic becomes `_deleted-topic_`), and the
rows of a table whose topic is gone count as dropped. Finding that, `rows()` makes the
topic again with a fresh subscription, as a user would, so that later runs of the proxy
publish where this adapter reads. With PUBSUB_GOOD_TOPIC the proxy owns no topic, and
drop must leave it and its rows alone.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from tests.destinations.adapters.base import Adapter
from tests.support.standins.pubsub import PubSub, Subscription

TABLES = ("events", "users", "groups")
FOREIGN = ("events_archive", "eventsx", "other-topic")
DELETED_TOPIC = "_deleted-topic_"


class PubSubAdapter(Adapter):
    name = "pubsub"
    variant = "per_kind"
    standin = "pubsub_standin"

    def __init__(self, standin: PubSub, unique: str) -> None:
        super().__init__(standin, unique)
        self.project = f"conf-{unique}"
        self.seen: dict[str, dict[str, Any]] = {}  # subscription -> message id -> message
        self.generation = 0
        self.subscriptions = self.subscribe()

    def subscribe(self) -> dict[str, Subscription]:
        """table -> the subscription its rows arrive on."""
        topics = {table: self.standin.create_topic(self.project, table) for table in TABLES}
        return {table: self.standin.subscribe(topic, f"read-{table}") for table, topic in topics.items()}

    def resubscribe(self, table: str) -> None:
        """After drop deleted the table's topic: the topic again, and a new subscription on it."""
        self.generation += 1
        topic = self.standin.create_topic(self.project, table)
        self.subscriptions[table] = self.standin.subscribe(topic, f"read-{table}-{self.generation}")

    def env(self) -> dict[str, str]:
        return {**self.standin.env(), "pubsub_project": self.project}

    def messages(self, table: str) -> list[Any]:
        subscription = self.subscriptions[table]
        seen = self.seen.setdefault(subscription.path, {})
        for message in subscription.pull():
            seen.setdefault(message.message_id, message)
        return list(seen.values())

    def rows(self, table: str) -> list[dict[str, Any]]:
        if self.subscriptions[table].topic() == DELETED_TOPIC:
            self.resubscribe(table)
            return []
        return [json.loads(m.data) for m in self.messages(table)]

    def plant_foreign(self) -> None:
        for topic in FOREIGN:
            self.standin.create_topic(self.project, topic)

    def foreign_intact(self) -> bool:
        return all(self.standin.topic_exists(f"projects/{self.project}/topics/{topic}") for topic in FOREIGN)


class PubSubGoodTopicAdapter(PubSubAdapter):
    """PUBSUB_GOOD_TOPIC: every row on one topic, told apart by the `table` attribute."""

    variant = "good_topic"
    owns_data = False
    good_topic: ClassVar[str] = "all-rows"

    def subscribe(self) -> dict[str, Subscription]:
        topic = self.standin.create_topic(self.project, self.good_topic)
        subscription = self.standin.subscribe(topic, "read-all-rows")
        return dict.fromkeys(TABLES, subscription)

    def env(self) -> dict[str, str]:
        return {**super().env(), "pubsub_good_topic": self.good_topic}

    def rows(self, table: str) -> list[dict[str, Any]]:
        return [json.loads(m.data) for m in self.messages(table) if m.attributes["table"] == table]

    def foreign_intact(self) -> bool:
        return super().foreign_intact() and self.standin.topic_exists(f"projects/{self.project}/topics/{self.good_topic}")


ADAPTERS = [PubSubAdapter, PubSubGoodTopicAdapter]
