"""`pubsub_bad_topic`: failed batches go to a Pub/Sub topic, against Google's emulator
where it is installed, else the gRPC stand-in (tests/support/standins/pubsub.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from destinations.deadletter import DeadLetter
from tests.support.load import run_load
from tests.support.processes import free_port, gunicorn, wait_until
from tests.support.standins.pubsub import PubSub

pytestmark = pytest.mark.emulator


@pytest.fixture
def project() -> str:
    return "dl-" + uuid.uuid4().hex[:10]


@pytest.fixture
def topic(pubsub_standin: PubSub, project: str):
    """A fresh topic with a subscription; returns (topic name, pull function)."""
    name = "bad-topic"
    path = pubsub_standin.create_topic(project, name)
    subscription = pubsub_standin.subscribe(path, "bad-topic-sub")
    return name, subscription.pull


def events(n: int, prefix: str = "e") -> list[dict]:
    return [
        {"event": "v", "properties": {"distinct_id": "u", "time": 1700000000, "$insert_id": f"{prefix}{i}"}} for i in range(n)
    ]


def faulty_env(tmp_path: Path, pubsub: PubSub, project: str) -> dict[str, str]:
    control = tmp_path / "faulty.mode"
    control.write_text("down")
    return {
        "faulty_control": str(control),
        "faulty_dir": str(tmp_path / "faulty"),
        "retry_max_attempts": "2",
        "retry_base_seconds": "0.01",
        "pubsub_project": project,
        **pubsub.env(),
    }


def test_failed_batches_are_published_to_the_bad_topic(make_app, topic, tmp_path, pubsub_standin, project):
    name, pull = topic
    app = make_app(
        destinations="tests.support.faulty:make", pubsub_bad_topic=name, **faulty_env(tmp_path, pubsub_standin, project)
    )
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


def test_a_topic_that_cannot_be_published_to_falls_back_to_the_spool(make_app, tmp_path, pubsub_standin, project):
    env = faulty_env(tmp_path, pubsub_standin, project)
    app = make_app(destinations="tests.support.faulty:make", pubsub_bad_topic="no-such-topic", **env)
    assert app.test_client().post("/track", json=events(3)).status_code == 200
    (batch,) = list(DeadLetter(str(tmp_path / "spool")).batches())
    assert [r["insert_id"] for r in batch.rows] == ["e0", "e1", "e2"]


def test_bad_topic_under_gunicorn_gevent_workers(topic, tmp_path, pubsub_standin, project):
    """grpc inside gevent workers: every batch the destination refused reaches the topic."""
    name, pull = topic
    env = {k.upper(): v for k, v in faulty_env(tmp_path, pubsub_standin, project).items()}
    env.update(
        DESTINATIONS="tests.support.faulty:make",
        PUBSUB_BAD_TOPIC=name,
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
