"""Pub/Sub for the tests: Google's emulator where this machine has it, else the gRPC stand-in.

`pubsub_standin` (session) is what the destination's tests use. It is Google's own
emulator (the Debian package google-cloud-cli-pubsub-emulator, Java) when installed, and
otherwise tests/support/pubsub_server.py, a stand-in built on the client's own
`google.pubsub_v1` protos (CI machines cannot install the emulator: it is not on any
registry). `PUBSUB_STANDIN=emulator|grpc` forces one (`emulator` fails where it is
missing). `pubsub_emulator` and `pubsub_grpc` give one of each, for the test that shows
the two agree (tests/test_pubsub_standin.py).

Either runs in its own process group on 127.0.0.1 and a free port, is ready when the
official client has listed topics, and is stopped at the end by PID. Clients reach it
over an insecure channel with no credentials, as the proxy does with PUBSUB_EMULATOR_HOST.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Server, free_port, wait_until

GOOGLE_EMULATOR = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")
KINDS = ("emulator", "grpc")


@dataclass
class PubSub:
    """A running Pub/Sub stand-in and official clients pointed at it."""

    kind: str  # "emulator" (Google's) or "grpc" (ours)
    host: str
    server: Server
    _clients: dict[str, Any] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """Proxy variables pointing the pubsub destination (and bad topic) at this stand-in."""
        return {"pubsub_emulator_host": self.host}

    def _channel(self) -> Any:
        import grpc

        return grpc.insecure_channel(self.host, options=[("grpc.max_send_message_length", -1)])

    @property
    def publisher(self) -> Any:
        if "publisher" not in self._clients:
            from google.cloud import pubsub_v1
            from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

            self._clients["publisher"] = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=self._channel()))
        return self._clients["publisher"]

    @property
    def subscriber(self) -> Any:
        if "subscriber" not in self._clients:
            from google.cloud import pubsub_v1
            from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

            transport = SubscriberGrpcTransport(channel=self._channel())
            self._clients["subscriber"] = pubsub_v1.SubscriberClient(transport=transport)
        return self._clients["subscriber"]

    # -- helpers the tests share -----------------------------------------------------------
    def create_topic(self, project: str, topic: str) -> str:
        path = f"projects/{project}/topics/{topic}"
        self.publisher.create_topic(request={"name": path}, timeout=10)
        return path

    def topic_exists(self, path: str) -> bool:
        from google.api_core import exceptions as gx

        try:
            self.publisher.get_topic(request={"topic": path}, timeout=10)
        except gx.NotFound:
            return False
        return True

    def subscribe(self, topic: str, name: str, *, ordered: bool = False) -> Subscription:
        """A subscription on `topic` (a full path) that sees every message published from now on."""
        project = topic.split("/")[1]
        path = f"projects/{project}/subscriptions/{name}"
        request = {"name": path, "topic": topic, "ack_deadline_seconds": 60, "enable_message_ordering": ordered}
        self.subscriber.create_subscription(request=request, timeout=10)
        return Subscription(self, path)

    def stop(self) -> None:
        for client in self._clients.values():
            client.transport.close()
        self.server.stop(timeout=15)


@dataclass
class Subscription:
    standin: PubSub
    path: str

    def pull(self, limit: int = 1000) -> list[Any]:
        """Every message available now (acknowledged as it is pulled), in delivery order."""
        messages = []
        while True:
            reply = self.standin.subscriber.pull(
                request={"subscription": self.path, "max_messages": limit, "return_immediately": True}, timeout=30
            )
            if not reply.received_messages:
                return messages
            messages += [m.message for m in reply.received_messages]
            ack_ids = [m.ack_id for m in reply.received_messages]
            self.standin.subscriber.acknowledge(request={"subscription": self.path, "ack_ids": ack_ids}, timeout=30)

    def topic(self) -> str:
        """The subscription's topic, `_deleted-topic_` once that topic is deleted."""
        return self.standin.subscriber.get_subscription(request={"subscription": self.path}, timeout=10).topic


def start(kind: str, logs: Path, port: int | None = None) -> PubSub:
    """Start one stand-in of `kind` (a fresh, empty one; `port` to come back where one was)."""
    logs.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if kind == "emulator":
        if not GOOGLE_EMULATOR.exists():
            raise RuntimeError(f"PUBSUB_STANDIN=emulator, but {GOOGLE_EMULATOR} is not installed")
        args = [str(GOOGLE_EMULATOR), "--host=127.0.0.1", f"--port={port}"]
        server = Server(args, log=logs / "pubsub-emulator.log")
    else:
        args = [sys.executable, "-m", "tests.support.pubsub_server", "--host", "127.0.0.1", "--port", str(port)]
        server = Server(args, log=logs / "pubsub-grpc.log")
    standin = PubSub(kind, f"127.0.0.1:{port}", server)
    server.start()

    def ready() -> bool:
        list(standin.publisher.list_topics(request={"project": "projects/ready-check"}, timeout=2))
        return True

    try:
        wait_until(ready, 90, 0.3, what=f"pubsub {kind} stand-in")
    except BaseException:
        server.stop()
        raise
    return standin


def chosen_kind() -> str:
    forced = os.environ.get("PUBSUB_STANDIN", "").strip().lower()
    if forced in KINDS:
        return forced
    return "emulator" if GOOGLE_EMULATOR.exists() else "grpc"


@pytest.fixture(scope="session")
def pubsub_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSub]:
    started = start(chosen_kind(), tmp_path_factory.mktemp("pubsub"))
    yield started
    started.stop()


@pytest.fixture(scope="session")
def pubsub_grpc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSub]:
    if chosen_kind() == "grpc":
        yield request.getfixturevalue("pubsub_standin")
        return
    started = start("grpc", tmp_path_factory.mktemp("pubsub-grpc"))
    yield started
    started.stop()


@pytest.fixture(scope="session")
def pubsub_emulator(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSub]:
    if not GOOGLE_EMULATOR.exists():
        pytest.skip("Google's Pub/Sub emulator (google-cloud-cli-pubsub-emulator) is not installed here")
    if chosen_kind() == "emulator":
        yield request.getfixturevalue("pubsub_standin")
        return
    started = start("emulator", tmp_path_factory.mktemp("pubsub-emulator"))
    yield started
    started.stop()
