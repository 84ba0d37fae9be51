"""The gRPC Pub/Sub stand-in agrees with Google's emulator.

Every check in `AGREED` runs against both (`pubsub_grpc`, and `pubsub_emulator` where it
is installed) through the official client: the same calls must give the same answers.
The stand-in also enforces documented limits the emulator does not (attribute sizes, the
10 MB request, the ack-deadline range); those are checked on the stand-in alone.
"""

from __future__ import annotations

import uuid

import pytest
from google.api_core import exceptions as gx
from google.pubsub_v1 import types

from tests.support.standins.pubsub import PubSub

pytestmark = pytest.mark.emulator


@pytest.fixture(params=["pubsub_grpc", "pubsub_emulator"], ids=["grpc", "emulator"])
def pubsub(request: pytest.FixtureRequest) -> PubSub:
    return request.getfixturevalue(request.param)


@pytest.fixture
def project() -> str:
    return "agree-" + uuid.uuid4().hex[:10]


def publish(pubsub: PubSub, topic: str, *messages: types.PubsubMessage) -> list[str]:
    return list(pubsub.publisher._gapic_publish(request={"topic": topic, "messages": list(messages)}, timeout=10).message_ids)


def pull(pubsub: PubSub, subscription: str, limit: int = 100) -> list[types.ReceivedMessage]:
    request = {"subscription": subscription, "max_messages": limit, "return_immediately": True}
    return list(pubsub.subscriber.pull(request=request, timeout=10).received_messages)


def ack(pubsub: PubSub, subscription: str, received: list[types.ReceivedMessage]) -> None:
    pubsub.subscriber.acknowledge(request={"subscription": subscription, "ack_ids": [m.ack_id for m in received]}, timeout=10)


def test_topics(pubsub: PubSub, project: str) -> None:
    topic = pubsub.create_topic(project, "topic-a")
    with pytest.raises(gx.AlreadyExists):
        pubsub.create_topic(project, "topic-a")
    assert pubsub.publisher.get_topic(request={"topic": topic}, timeout=10).name == topic
    for bad in ("ab", "1abc", "googtopic", "a/b/c"):
        with pytest.raises(gx.InvalidArgument):
            pubsub.create_topic(project, bad)
    with pytest.raises(gx.NotFound):
        pubsub.publisher.get_topic(request={"topic": f"projects/{project}/topics/missing"}, timeout=10)
    for index in range(4):
        pubsub.create_topic(project, f"page-{index}")
    pages = pubsub.publisher.list_topics(request={"project": f"projects/{project}", "page_size": 2}, timeout=10).pages
    assert [len(page.topics) for page in pages] == [2, 2, 1]
    pubsub.publisher.delete_topic(request={"topic": topic}, timeout=10)
    with pytest.raises(gx.NotFound):
        pubsub.publisher.delete_topic(request={"topic": topic}, timeout=10)


def test_publish_and_pull(pubsub: PubSub, project: str) -> None:
    topic = pubsub.create_topic(project, "topic-b")
    before = publish(pubsub, topic, types.PubsubMessage(data=b"before any subscription"))
    subscription = pubsub.subscribe(topic, "sub-b").path
    messages = [types.PubsubMessage(data=f"m{i}".encode(), attributes={"n": str(i)}) for i in range(5)]
    messages.append(types.PubsubMessage(attributes={"only": "attributes"}))
    ids = publish(pubsub, topic, *messages)
    assert len(set(ids + before)) == 7
    received = pull(pubsub, subscription)
    by_id = {m.message.message_id: m.message for m in received}
    assert sorted(by_id) == sorted(ids)  # one each; nothing published before the subscription existed
    assert [by_id[i].data for i in ids] == [m.data for m in messages]
    assert [dict(by_id[i].attributes) for i in ids] == [dict(m.attributes) for m in messages]
    assert all(by_id[i].publish_time.timestamp() > 0 for i in ids)
    ack(pubsub, subscription, received)
    assert pull(pubsub, subscription) == []


def test_publish_refusals(pubsub: PubSub, project: str) -> None:
    topic = pubsub.create_topic(project, "topic-c")
    with pytest.raises(gx.NotFound):
        publish(pubsub, f"projects/{project}/topics/missing", types.PubsubMessage(data=b"x"))
    with pytest.raises(gx.InvalidArgument):
        publish(pubsub, topic)
    with pytest.raises(gx.InvalidArgument):
        publish(pubsub, topic, types.PubsubMessage())
    with pytest.raises(gx.InvalidArgument):
        publish(pubsub, topic, *[types.PubsubMessage(data=b"x")] * 1001)


def test_nack_redelivers_and_acks_take(pubsub: PubSub, project: str) -> None:
    topic = pubsub.create_topic(project, "topic-d")
    subscription = pubsub.subscribe(topic, "sub-d").path
    ids = publish(pubsub, topic, types.PubsubMessage(data=b"one"), types.PubsubMessage(data=b"two"))
    first = pull(pubsub, subscription)
    assert pull(pubsub, subscription) == []  # leased: not handed out twice
    nacked = [m for m in first if m.message.data == b"one"]
    request = {"subscription": subscription, "ack_ids": [nacked[0].ack_id], "ack_deadline_seconds": 0}
    pubsub.subscriber.modify_ack_deadline(request=request, timeout=10)
    ack(pubsub, subscription, [m for m in first if m.message.data == b"two"])
    again = pull(pubsub, subscription)
    assert [m.message.message_id for m in again] == [ids[0]]
    ack(pubsub, subscription, again)
    assert pull(pubsub, subscription) == []
    with pytest.raises(gx.InvalidArgument):
        pubsub.subscriber.acknowledge(request={"subscription": subscription, "ack_ids": ["not-an-ack-id"]}, timeout=10)
    with pytest.raises(gx.InvalidArgument):
        pubsub.subscriber.acknowledge(request={"subscription": subscription, "ack_ids": []}, timeout=10)
    with pytest.raises(gx.InvalidArgument):
        pubsub.subscriber.pull(request={"subscription": subscription, "max_messages": 0, "return_immediately": True})


def test_ordered_delivery(pubsub: PubSub, project: str) -> None:
    topic = pubsub.create_topic(project, "topic-e")
    subscription = pubsub.subscribe(topic, "sub-e", ordered=True).path
    publish(pubsub, topic, *[types.PubsubMessage(data=f"{k}{i}".encode(), ordering_key=k) for i in range(3) for k in "ab"])
    first = pull(pubsub, subscription, limit=1)
    assert [m.message.data for m in first] == [b"a0"]
    # While a0 is outstanding no later message of key a goes out; key b is free.
    assert [m.message.data for m in pull(pubsub, subscription)] == [b"b0", b"b1", b"b2"]
    ack(pubsub, subscription, first)
    rest = pull(pubsub, subscription)
    assert [m.message.data for m in rest] == [b"a1", b"a2"]
    assert {m.message.ordering_key for m in rest} == {"a"}


def test_subscriptions(pubsub: PubSub, project: str) -> None:
    topic = pubsub.create_topic(project, "topic-f")
    subscription = pubsub.subscribe(topic, "sub-f")
    with pytest.raises(gx.AlreadyExists):
        pubsub.subscribe(topic, "sub-f")
    with pytest.raises(gx.NotFound):
        pubsub.subscribe(f"projects/{project}/topics/missing", "sub-g")
    with pytest.raises(gx.InvalidArgument):
        pubsub.subscribe(topic, "s1")
    stored = pubsub.subscriber.get_subscription(request={"subscription": subscription.path}, timeout=10)
    assert (stored.topic, stored.ack_deadline_seconds) == (topic, 60)
    assert list(pubsub.publisher.list_topic_subscriptions(request={"topic": topic}, timeout=10)) == [subscription.path]
    missing = f"projects/{project}/subscriptions/missing"
    for call in (pubsub.subscriber.get_subscription, pubsub.subscriber.delete_subscription):
        with pytest.raises(gx.NotFound):
            call(request={"subscription": missing}, timeout=10)
    with pytest.raises(gx.InvalidArgument):
        request = {"name": f"projects/{project}/subscriptions/sub-h", "topic": topic, "ack_deadline_seconds": 700}
        pubsub.subscriber.create_subscription(request=request, timeout=10)


def test_deleting_a_topic_detaches_its_subscriptions_and_keeps_their_backlog(pubsub: PubSub, project: str) -> None:
    topic = pubsub.create_topic(project, "topic-i")
    subscription = pubsub.subscribe(topic, "sub-i")
    publish(pubsub, topic, types.PubsubMessage(data=b"kept"))
    pubsub.publisher.delete_topic(request={"topic": topic}, timeout=10)
    assert subscription.topic() == "_deleted-topic_"
    assert [m.data for m in subscription.pull()] == [b"kept"]
    with pytest.raises(gx.NotFound):
        publish(pubsub, topic, types.PubsubMessage(data=b"gone"))
    pubsub.create_topic(project, "topic-i")  # a new topic of the same name: the old subscription stays detached
    publish(pubsub, topic, types.PubsubMessage(data=b"new"))
    assert subscription.pull() == [] and subscription.topic() == "_deleted-topic_"


# -- documented limits the emulator does not enforce: the stand-in alone -------------------------


def test_documented_limits(pubsub_grpc: PubSub, project: str) -> None:
    topic = pubsub_grpc.create_topic(project, "limits")
    too_much = [
        types.PubsubMessage(data=b"x", attributes={"a": "v" * 1025}),
        types.PubsubMessage(data=b"x", attributes={"k" * 257: "v"}),
        types.PubsubMessage(data=b"x", attributes={"googkey": "v"}),
        types.PubsubMessage(data=b"x", attributes={f"a{i}": "v" for i in range(101)}),
        types.PubsubMessage(data=b"x", ordering_key="k" * 1025),
        types.PubsubMessage(data=b"x" * 10_000_000),
    ]
    for message in too_much:
        with pytest.raises(gx.InvalidArgument):
            publish(pubsub_grpc, topic, message)
    assert publish(pubsub_grpc, topic, types.PubsubMessage(data=b"x" * 9_990_000, attributes={"a": "v" * 1024}))
    for refused in ({"filter": 'attributes.kind = "event"'}, {"enable_exactly_once_delivery": True}):
        with pytest.raises(gx.MethodNotImplemented):
            name = f"projects/{project}/subscriptions/sub-{len(refused)}-{next(iter(refused))[:6]}"
            pubsub_grpc.subscriber.create_subscription(request={"name": name, "topic": topic, **refused})
