"""A Pub/Sub stand-in over gRPC, built on the client library's own `google.pubsub_v1` protos.

Run as `python -m tests.support.pubsub_server --host 127.0.0.1 --port N`; the official
client reaches it exactly as it reaches Google's emulator (PUBSUB_EMULATOR_HOST, an
insecure channel). It exists because Google's emulator ships only as a Debian package
that CI machines cannot install; where the emulator is present the suite runs against
it instead (tests/support/standins/pubsub.py), and the stand-in's own contract test
(tests/test_pubsub_standin.py) runs against both to show they agree.

It implements, as the API reference documents them:

  Publisher   CreateTopic, GetTopic, ListTopics, ListTopicSubscriptions, DeleteTopic,
              Publish (message ids, publish time, fan-out to the subscriptions that exist
              at publish time, ordering keys, the documented request limits)
  Subscriber  CreateSubscription, GetSubscription, ListSubscriptions, DeleteSubscription,
              Pull, Acknowledge, ModifyAckDeadline (lease expiry and redelivery, nacks,
              per-key ordered delivery for subscriptions with message ordering)

Everything else answers UNIMPLEMENTED, and so do subscription features it does not
model (filters, push, BigQuery/Cloud Storage delivery, dead-letter policies, exactly-once
delivery): a test relying on them fails instead of passing against a fake that ignored
them. State is in memory. Deleting a topic detaches its subscriptions (their topic
becomes `_deleted-topic_`) and keeps their backlog, as the service does.

Where the documented service is stricter than Google's emulator (attribute sizes, the
10 MB request limit), this follows the documented service.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1 import types

DELETED_TOPIC = "_deleted-topic_"
TOPIC_NAME = re.compile(r"^projects/([^/]+)/topics/([^/]+)$")
SUBSCRIPTION_NAME = re.compile(r"^projects/([^/]+)/subscriptions/([^/]+)$")
# Resource ids: 3-255 characters, a letter first, then letters, digits and - _ . ~ + %; not "goog...".
RESOURCE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
MAX_REQUEST_BYTES = 10_000_000
MAX_MESSAGES_PER_PUBLISH = 1000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024
DEFAULT_ACK_DEADLINE = 10
MIN_ACK_DEADLINE, MAX_ACK_DEADLINE = 10, 600
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
DEFAULT_PAGE_SIZE = 100
MAX_PULL_WAIT = 30.0

MESSAGES = (
    "Topic",
    "GetTopicRequest",
    "ListTopicsRequest",
    "ListTopicsResponse",
    "ListTopicSubscriptionsRequest",
    "ListTopicSubscriptionsResponse",
    "DeleteTopicRequest",
    "PublishRequest",
    "PublishResponse",
    "PubsubMessage",
    "Subscription",
    "GetSubscriptionRequest",
    "ListSubscriptionsRequest",
    "ListSubscriptionsResponse",
    "DeleteSubscriptionRequest",
    "PullRequest",
    "PullResponse",
    "ReceivedMessage",
    "AcknowledgeRequest",
    "ModifyAckDeadlineRequest",
)
# The raw protobuf classes behind the client's proto-plus types: the wire format the client speaks.
pb = {name: getattr(types, name).pb() for name in MESSAGES}


class Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> Abort:
    return Abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> Abort:
    return Abort(grpc.StatusCode.NOT_FOUND, message)


def unimplemented(feature: str) -> Abort:
    return Abort(grpc.StatusCode.UNIMPLEMENTED, f"{feature}: not implemented by this Pub/Sub stand-in")


def check_name(name: str, pattern: re.Pattern[str], collection: str) -> None:
    match = pattern.match(name)
    if not match or not RESOURCE_ID.match(match.group(2)) or match.group(2).lower().startswith("goog"):
        raise invalid(f"Invalid [{collection}] name: (name={name})")


@dataclass(order=True)
class Pending:
    """A message waiting in one subscription, in publish order."""

    seq: int
    message: Any = field(compare=False)


@dataclass
class Lease:
    pending: Pending
    deadline: float


@dataclass
class Subscription:
    proto: Any
    queue: list[Pending] = field(default_factory=list)
    leases: dict[str, Lease] = field(default_factory=dict)

    @property
    def ordered(self) -> bool:
        return bool(self.proto.enable_message_ordering)

    def expire(self, now: float) -> None:
        """Leases past their deadline go back to the queue for redelivery, in publish order."""
        for ack_id in [a for a, lease in self.leases.items() if lease.deadline <= now]:
            bisect.insort(self.queue, self.leases.pop(ack_id).pending)

    def deliverable(self, limit: int) -> list[Pending]:
        """Up to `limit` messages to hand out now. With message ordering, a key's messages go
        out in publish order, and none while an earlier one of that key is outstanding."""
        if not self.ordered:
            return self.queue[:limit]
        blocked = {lease.pending.message.ordering_key for lease in self.leases.values() if lease.pending.message.ordering_key}
        out = []
        for pending in self.queue:
            key = pending.message.ordering_key
            if key and key in blocked:
                continue
            out.append(pending)
            if len(out) >= limit:
                break
        return out


class State:
    """Topics, subscriptions and messages, guarded by one lock (a condition for Pull)."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.topics: dict[str, Any] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.message_ids = itertools.count(1)
        self.sequence = itertools.count(1)
        self.ack_ids = itertools.count(1)


class Service:
    def __init__(self) -> None:
        self.state = State()

    # -- Publisher ---------------------------------------------------------------------------
    def create_topic(self, request: Any) -> Any:
        check_name(request.name, TOPIC_NAME, "topics")
        with self.state.lock:
            if request.name in self.state.topics:
                raise Abort(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
            topic = pb["Topic"]()
            topic.CopyFrom(request)
            self.state.topics[request.name] = topic
            return topic

    def get_topic(self, request: Any) -> Any:
        check_name(request.topic, TOPIC_NAME, "topics")
        with self.state.lock:
            return self._topic(request.topic)

    def _topic(self, name: str) -> Any:
        topic = self.state.topics.get(name)
        if topic is None:
            raise not_found("Topic not found")
        return topic

    def list_topics(self, request: Any) -> Any:
        with self.state.lock:
            names = sorted(n for n in self.state.topics if n.startswith(request.project + "/topics/"))
            page, token = paginate(names, request.page_size, request.page_token)
            return pb["ListTopicsResponse"](topics=[self.state.topics[n] for n in page], next_page_token=token)

    def list_topic_subscriptions(self, request: Any) -> Any:
        check_name(request.topic, TOPIC_NAME, "topics")
        with self.state.lock:
            self._topic(request.topic)
            names = sorted(n for n, s in self.state.subscriptions.items() if s.proto.topic == request.topic)
            page, token = paginate(names, request.page_size, request.page_token)
            return pb["ListTopicSubscriptionsResponse"](subscriptions=page, next_page_token=token)

    def delete_topic(self, request: Any) -> Any:
        check_name(request.topic, TOPIC_NAME, "topics")
        with self.state.lock:
            self._topic(request.topic)
            del self.state.topics[request.topic]
            for subscription in self.state.subscriptions.values():
                if subscription.proto.topic == request.topic:
                    subscription.proto.topic = DELETED_TOPIC  # detached: the backlog stays pullable
            return empty_pb2.Empty()

    def publish(self, sized: tuple[int, Any]) -> Any:
        size, request = sized
        check_name(request.topic, TOPIC_NAME, "topics")
        if not request.messages:
            raise invalid("No messages to publish")
        if len(request.messages) > MAX_MESSAGES_PER_PUBLISH:
            raise invalid("Too many messages to publish")
        if size > MAX_REQUEST_BYTES:
            raise invalid(f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes.")
        for message in request.messages:
            check_message(message)
        with self.state.lock:
            self._topic(request.topic)
            now = time.time()
            targets = [s for s in self.state.subscriptions.values() if s.proto.topic == request.topic]
            ids = []
            for incoming in request.messages:
                message = pb["PubsubMessage"]()
                message.CopyFrom(incoming)
                message.message_id = str(next(self.state.message_ids))
                message.publish_time.FromNanoseconds(int(now * 1e9))
                ids.append(message.message_id)
                seq = next(self.state.sequence)
                for subscription in targets:
                    subscription.queue.append(Pending(seq, message))
            if targets:
                self.state.lock.notify_all()
            return pb["PublishResponse"](message_ids=ids)

    # -- Subscriber --------------------------------------------------------------------------
    def create_subscription(self, request: Any) -> Any:
        check_name(request.name, SUBSCRIPTION_NAME, "subscriptions")
        check_name(request.topic, TOPIC_NAME, "topics")
        refuse_unmodelled(request)
        deadline = request.ack_deadline_seconds or DEFAULT_ACK_DEADLINE
        if not MIN_ACK_DEADLINE <= deadline <= MAX_ACK_DEADLINE:
            raise invalid(f"Invalid ack_deadline_seconds: {request.ack_deadline_seconds} (allowed: 10 to 600)")
        with self.state.lock:
            if request.topic not in self.state.topics:
                raise not_found("Subscription topic does not exist")
            if request.name in self.state.subscriptions:
                raise Abort(grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists")
            proto = pb["Subscription"]()
            proto.CopyFrom(request)
            proto.ack_deadline_seconds = deadline
            proto.push_config.SetInParent()  # the service answers with an empty push config
            if not proto.HasField("message_retention_duration"):
                proto.message_retention_duration.seconds = DEFAULT_RETENTION_SECONDS
            self.state.subscriptions[request.name] = Subscription(proto)
            return proto

    def get_subscription(self, request: Any) -> Any:
        check_name(request.subscription, SUBSCRIPTION_NAME, "subscriptions")
        with self.state.lock:
            return self._subscription(request.subscription).proto

    def _subscription(self, name: str) -> Subscription:
        subscription = self.state.subscriptions.get(name)
        if subscription is None:
            raise not_found("Subscription does not exist")
        return subscription

    def list_subscriptions(self, request: Any) -> Any:
        with self.state.lock:
            names = sorted(n for n in self.state.subscriptions if n.startswith(request.project + "/subscriptions/"))
            page, token = paginate(names, request.page_size, request.page_token)
            return pb["ListSubscriptionsResponse"](
                subscriptions=[self.state.subscriptions[n].proto for n in page], next_page_token=token
            )

    def delete_subscription(self, request: Any) -> Any:
        check_name(request.subscription, SUBSCRIPTION_NAME, "subscriptions")
        with self.state.lock:
            self._subscription(request.subscription)
            del self.state.subscriptions[request.subscription]
            return empty_pb2.Empty()

    def pull(self, request: Any, context: grpc.ServicerContext) -> Any:
        check_name(request.subscription, SUBSCRIPTION_NAME, "subscriptions")
        if request.max_messages <= 0:
            raise invalid("No max_messages specified")
        remaining = context.time_remaining()
        wait_until = time.monotonic() + min(MAX_PULL_WAIT, max(0.0, (remaining or MAX_PULL_WAIT) - 0.5))
        with self.state.lock:
            while True:
                subscription = self._subscription(request.subscription)
                now = time.time()
                subscription.expire(now)
                chosen = subscription.deliverable(request.max_messages)
                left = wait_until - time.monotonic()
                if chosen or request.return_immediately or left <= 0 or not context.is_active():
                    break
                # Wake up for new messages, and for the next lease to expire.
                next_expiry = min((lease.deadline for lease in subscription.leases.values()), default=now + left)
                self.state.lock.wait(max(0.01, min(left, next_expiry - now)))
            taken = {id(p) for p in chosen}
            subscription.queue = [p for p in subscription.queue if id(p) not in taken]
            received = []
            for pending in chosen:
                ack_id = f"{request.subscription}:{next(self.state.ack_ids)}"
                subscription.leases[ack_id] = Lease(pending, now + subscription.proto.ack_deadline_seconds)
                received.append(pb["ReceivedMessage"](ack_id=ack_id, message=pending.message))
            return pb["PullResponse"](received_messages=received)

    def acknowledge(self, request: Any) -> Any:
        check_name(request.subscription, SUBSCRIPTION_NAME, "subscriptions")
        check_ack_ids(request.ack_ids)
        with self.state.lock:
            subscription = self._subscription(request.subscription)
            subscription.expire(time.time())
            for ack_id in request.ack_ids:
                subscription.leases.pop(ack_id, None)  # an expired or unknown lease: ignored, as documented
            self.state.lock.notify_all()  # an ordering key may be free now
            return empty_pb2.Empty()

    def modify_ack_deadline(self, request: Any) -> Any:
        check_name(request.subscription, SUBSCRIPTION_NAME, "subscriptions")
        check_ack_ids(request.ack_ids)
        if not 0 <= request.ack_deadline_seconds <= MAX_ACK_DEADLINE:
            raise invalid(f"Invalid ack deadline: {request.ack_deadline_seconds} (allowed: 0 to 600)")
        with self.state.lock:
            subscription = self._subscription(request.subscription)
            now = time.time()
            subscription.expire(now)
            for ack_id in request.ack_ids:
                lease = subscription.leases.get(ack_id)
                if lease is not None:
                    lease.deadline = now + request.ack_deadline_seconds  # 0: a nack, redelivered at once
            subscription.expire(now)
            self.state.lock.notify_all()
            return empty_pb2.Empty()


def check_message(message: Any) -> None:
    if not message.data and not message.attributes:
        raise invalid("Some messages are empty")
    if len(message.attributes) > MAX_ATTRIBUTES:
        raise invalid(f"A message has more than {MAX_ATTRIBUTES} attributes")
    for key, value in message.attributes.items():
        if not key:
            raise invalid("An attribute key is empty")
        if len(key.encode()) > MAX_ATTRIBUTE_KEY_BYTES:
            raise invalid(f"An attribute key is longer than {MAX_ATTRIBUTE_KEY_BYTES} bytes")
        if key.lower().startswith("goog"):
            raise invalid("Attribute keys starting with 'goog' are reserved")
        if len(value.encode()) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise invalid(f"The value of attribute {key} is longer than {MAX_ATTRIBUTE_VALUE_BYTES} bytes")
    if len(message.ordering_key.encode()) > MAX_ORDERING_KEY_BYTES:
        raise invalid(f"An ordering key is longer than {MAX_ORDERING_KEY_BYTES} bytes")


def check_ack_ids(ack_ids: Any) -> None:
    if not ack_ids:
        raise invalid("No ack ids specified.")
    for ack_id in ack_ids:
        name, _, number = ack_id.rpartition(":")
        if not number.isdigit() or not SUBSCRIPTION_NAME.match(name):
            raise invalid(f"Invalid ack id (ack_id={ack_id})")


def refuse_unmodelled(request: Any) -> None:
    """Subscription features this stand-in does not deliver: refused, never silently ignored."""
    checks = {
        "Subscription filters": bool(request.filter),
        "Push subscriptions": bool(request.push_config.push_endpoint),
        "BigQuery subscriptions": bool(request.bigquery_config.table),
        "Cloud Storage subscriptions": bool(request.cloud_storage_config.bucket),
        "Bigtable subscriptions": request.HasField("bigtable_config"),
        "Dead-letter policies": bool(request.dead_letter_policy.dead_letter_topic),
        "Exactly-once delivery": request.enable_exactly_once_delivery,
        "Retaining acknowledged messages": request.retain_acked_messages,
        "Message transforms": bool(request.message_transforms),
    }
    for feature, used in checks.items():
        if used:
            raise unimplemented(feature)


def paginate(names: list[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    if page_token and not page_token.isdigit():
        raise invalid("Invalid page token")
    start = int(page_token or 0)
    size = page_size if page_size > 0 else DEFAULT_PAGE_SIZE
    end = start + size
    return names[start:end], (str(end) if end < len(names) else "")


# -- the gRPC server -----------------------------------------------------------------------------


def _unary(method: Callable[..., Any], request_type: str, with_context: bool = False, sized: bool = False) -> Any:
    parse = pb[request_type].FromString

    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(request, context) if with_context else method(request)
        except Abort as exc:
            context.abort(exc.code, exc.message)

    deserializer = (lambda data: (len(data), parse(data))) if sized else parse
    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=deserializer, response_serializer=lambda message: message.SerializeToString()
    )


def handlers(service: Service) -> list[grpc.GenericRpcHandler]:
    publisher = {
        "CreateTopic": _unary(service.create_topic, "Topic"),
        "GetTopic": _unary(service.get_topic, "GetTopicRequest"),
        "ListTopics": _unary(service.list_topics, "ListTopicsRequest"),
        "ListTopicSubscriptions": _unary(service.list_topic_subscriptions, "ListTopicSubscriptionsRequest"),
        "DeleteTopic": _unary(service.delete_topic, "DeleteTopicRequest"),
        "Publish": _unary(service.publish, "PublishRequest", sized=True),
    }
    subscriber = {
        "CreateSubscription": _unary(service.create_subscription, "Subscription"),
        "GetSubscription": _unary(service.get_subscription, "GetSubscriptionRequest"),
        "ListSubscriptions": _unary(service.list_subscriptions, "ListSubscriptionsRequest"),
        "DeleteSubscription": _unary(service.delete_subscription, "DeleteSubscriptionRequest"),
        "Pull": _unary(service.pull, "PullRequest", with_context=True),
        "Acknowledge": _unary(service.acknowledge, "AcknowledgeRequest"),
        "ModifyAckDeadline": _unary(service.modify_ack_deadline, "ModifyAckDeadlineRequest"),
    }
    return [
        grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", publisher),
        grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", subscriber),
    ]


def serve(host: str, port: int) -> grpc.Server:
    # Requests over 10 MB must reach Publish to be refused as the service refuses them.
    limit = 4 * MAX_REQUEST_BYTES
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), handlers=handlers(Service()), options=options)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise SystemExit(f"cannot bind {host}:{port}")
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = serve(args.host, args.port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    print(f"pubsub stand-in listening on {args.host}:{args.port}", flush=True)
    stopped.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
