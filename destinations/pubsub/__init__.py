"""Google Pub/Sub: the `pubsub` destination (sink.py, registered as `pubsub.sink`) and the
`pubsub_bad_topic` dead letter (deadletter.py), over one way of connecting (connection.py).
docs/pubsub.md is the user's guide. Importing this package does not import the SDK: the
sink module does, so a missing SDK is a start-up error naming the destination."""

from __future__ import annotations

from destinations.pubsub.deadletter import TopicDeadLetter, topic_dead_letter

__all__ = ["TopicDeadLetter", "topic_dead_letter"]
