"""`pubsub_bad_topic`: failed batches go to a Pub/Sub topic, against Google's own emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from destinations.deadletter import DeadLetter
from tests.support.emulators import PUBSUB_EMULATOR, PUBSUB_PROJECT, pubsub_emulator
from tests.support.load import run_load
from tests.support.processes import free_port, gunicorn, wait_until

pytestmark = [
    pytest.mark.emulator,
    pytest.mark.skipif(not PUBSUB_EMULATOR.exists(), reason="google-cloud-cli-pubsub-emulator is not installed"),
]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("pubsub")
    stand_in = pubsub_emulator(logs)
    patch = pytest.MonkeyPatch()
    patch.setenv("PUBSUB_EMULATOR_HOST", stand_in.host)
    stand_in.server.start()
    try:
        wait_until(stand_in.ready, 60, 0.3, what="pubsub emulator")
        yield stand_in.host
    finally:
        stand_in.server.stop()
        patch.undo()


@pytest.fixture
def topic(emulator: str, request: pytest.FixtureRequest):
    """A fresh topic with a subscription; returns (topic name, pull function)."""
    from google.cloud import pubsub_v1

    name = f"bad-{request.node.name[:40].replace('[', '-').replace(']', '')}-{free_port()}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(PUBSUB_PROJECT, name)
    publisher.create_topic(name=topic_path)
    subscription = subscriber.subscription_path(PUBSUB_PROJECT, name + "-sub")
    subscriber.create_subscription(name=subscription, topic=topic_path)

    def pull() -> list:
        messages = []
        while True:
            reply = subscriber.pull(subscription=subscription, max_messages=100, timeout=5, return_immediately=True)
            if not reply.received_messages:
                return messages
            messages += [m.message for m in reply.received_messages]
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in reply.received_messages])

    return name, pull


def events(n: int, prefix: str = "e") -> list[dict]:
    return [
        {"event": "v", "properties": {"distinct_id": "u", "time": 1700000000, "$insert_id": f"{prefix}{i}"}} for i in range(n)
    ]


def faulty_env(tmp_path: Path) -> dict[str, str]:
    control = tmp_path / "faulty.mode"
    control.write_text("down")
    return {
        "faulty_control": str(control),
        "faulty_dir": str(tmp_path / "faulty"),
        "retry_max_attempts": "2",
        "retry_base_seconds": "0.01",
        "pubsub_project": PUBSUB_PROJECT,
    }


def test_failed_batches_are_published_to_the_bad_topic(make_app, topic, tmp_path):
    name, pull = topic
    app = make_app(destinations="tests.support.faulty:make", pubsub_bad_topic=name, **faulty_env(tmp_path))
    assert app.test_client().post("/track", json=events(4)).status_code == 200
    (message,) = pull()
    assert dict(message.attributes) == {
        "destination": "faulty",
        "table": "events",
        "reason": "transient: injected outage",
        "attempts": "2",
    }
    body = json.loads(message.data)
    assert [r["insert_id"] for r in body["rows"]] == ["e0", "e1", "e2", "e3"]
    assert (body["destination"], body["table"], body["attempts"]) == ("faulty", "events", 2)
    assert DeadLetter(str(tmp_path / "spool")).pending_rows() == 0


def test_a_topic_that_cannot_be_published_to_falls_back_to_the_spool(make_app, emulator, tmp_path):
    app = make_app(destinations="tests.support.faulty:make", pubsub_bad_topic="no-such-topic", **faulty_env(tmp_path))
    assert app.test_client().post("/track", json=events(3)).status_code == 200
    (batch,) = list(DeadLetter(str(tmp_path / "spool")).batches())
    assert [r["insert_id"] for r in batch.rows] == ["e0", "e1", "e2"]


def test_bad_topic_under_gunicorn_gevent_workers(topic, tmp_path, emulator):
    """grpc inside gevent workers: every batch the destination refused reaches the topic."""
    name, pull = topic
    env = {k.upper(): v for k, v in faulty_env(tmp_path).items()}
    env.update(
        DESTINATIONS="tests.support.faulty:make",
        PUBSUB_BAD_TOPIC=name,
        PUBSUB_EMULATOR_HOST=emulator,
        BATCH_MAX_SECONDS="0.2",
        DATA_DIR=str(tmp_path / "data"),
        DEAD_LETTER_DIR=str(tmp_path / "spool"),
        LOG_LEVEL="WARNING",
    )
    port = free_port()
    server = gunicorn(env, port, workers=2, log=tmp_path / "gunicorn.log")
    try:
        load = run_load(f"http://127.0.0.1:{port}/track/", 40, 5, threads=4, run="ps")
        assert load.statuses == {200: 40}
        received: list[str] = []

        def all_published() -> bool:
            received.extend(r["insert_id"] for m in pull() for r in json.loads(m.data)["rows"])
            return len(received) >= 200

        wait_until(all_published, 60, 0.5, what="bad-topic messages")
    finally:
        assert server.stop() == 0, server.log()[-2000:]
    assert sorted(received) == sorted(load.accepted)
    assert DeadLetter(str(tmp_path / "spool")).pending_rows() == 0
