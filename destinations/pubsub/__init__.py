"""Google Pub/Sub: the `pubsub` destination (sink.py) and the `pubsub_bad_topic` dead
letter (deadletter.py), over one way of connecting (connection.py). docs/pubsub.md is
the user's guide."""

from __future__ import annotations

from destinations.pubsub.deadletter import TopicDeadLetter, topic_dead_letter
from destinations.pubsub.sink import PubSubSink

__all__ = ["PubSubSink", "TopicDeadLetter", "topic_dead_letter"]
