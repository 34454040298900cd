"""Topics: naming rule, create/delete/describe idempotence, size limit."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import pytest

from polybus.errors import (
    InvalidTopicNameError,
    MessageTooLargeError,
    TopicNotFoundError,
)
from polybus.message import EventMessage
from polybus.testing.checks import check_delivery
from polybus.testing.harness import Collector, Harness

__all__ = [
    "auto_create_off_raises",
    "delete_removes_messages_and_groups",
    "invalid_topic_names_rejected",
    "oversize_message_rejected",
    "topic_admin_is_idempotent",
]

logger = logging.getLogger(__name__)

INVALID_NAMES: Final = (
    "",
    ".",
    "..",
    "has space",
    "slash/name",
    "star*name",
    "colon:name",
    "ünïcode",
    "x" * 250,
)
"""Names every backend must refuse before any network call."""


async def topic_admin_is_idempotent(h: Harness) -> None:
    """create/delete/describe answer as the contract says, on every connection."""
    bus = await h.bus()
    other = await h.bus()
    topic = h.name("admin")

    assert await bus.get_topic_info(topic) is None, "a missing topic has no info"
    assert await bus.create_topic(topic, 3) is True, "first create_topic must be True"
    assert await bus.create_topic(topic, 5) is False, (
        "second create_topic must be False"
    )
    assert await other.create_topic(topic, 2) is False, (
        "create_topic on another connection must see the topic and return False"
    )

    for seen_by in (bus, other):
        info = await seen_by.get_topic_info(topic)
        assert info is not None, f"get_topic_info({topic!r}) is None after create"
        assert info.name == topic, f"TopicInfo.name is {info.name!r}, not {topic!r}"
        assert info.partition_count == 3, (
            f"partition count is {info.partition_count}; a repeated create_topic "
            "must not change it from 3"
        )
        if h.capabilities.topic_message_count:
            assert info.message_count == 0, (
                f"new topic has {info.message_count} messages"
            )

    assert topic in await other.list_topics(), "list_topics misses a created topic"

    assert await bus.delete_topic(topic) is True, "delete_topic of a topic must be True"
    assert await other.delete_topic(topic) is False, (
        "delete_topic of a deleted topic must be False"
    )
    assert await other.get_topic_info(topic) is None, "a deleted topic still has info"
    assert topic not in await bus.list_topics(), "list_topics shows a deleted topic"


async def delete_removes_messages_and_groups(h: Harness) -> None:
    """Deleting a topic removes its messages and consumer groups."""
    bus = await h.bus()
    topic = await h.topic(bus, 1)
    group = h.name("g")
    before = Collector("member before delete")

    subscription = await bus.subscribe_to_topic(topic, before.handler(), group_id=group)
    first = await h.publish(bus, topic, 3, stem="old")
    await h.wait_handled(before, first)
    await bus.unsubscribe_from_topic(subscription)
    await h.publish(bus, topic, 2, stem="kept")

    assert await bus.delete_topic(topic) is True
    assert await bus.create_topic(topic, 1) is True, "re-creating a deleted topic"

    info = await bus.get_topic_info(topic)
    assert info is not None
    if h.capabilities.topic_message_count:
        assert info.message_count == 0, (
            f"re-created topic still holds {info.message_count} messages"
        )
    assert group not in info.consumer_groups, (
        f"group {group!r} survived the deletion of its topic: {info.consumer_groups}"
    )

    after = Collector("member after delete")
    await bus.subscribe_to_topic(topic, after.handler(), group_id=group)
    fresh = await h.publish(bus, topic, 2, stem="new")
    await h.wait_handled(after, fresh)
    await h.fence(bus, topic, [after])
    check_delivery(fresh, after.handled, label="group re-joined after delete")


async def invalid_topic_names_rejected(h: Harness) -> None:
    """Every operation refuses an invalid topic name with InvalidTopicNameError."""
    bus = await h.bus()
    collector = Collector("never called")

    for name in INVALID_NAMES:
        message = EventMessage(topic="placeholder", value=b"x")
        operations: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("create_topic", functools.partial(bus.create_topic, name, 1)),
            ("delete_topic", functools.partial(bus.delete_topic, name)),
            ("get_topic_info", functools.partial(bus.get_topic_info, name)),
            ("publish_event", functools.partial(bus.publish_event, name, message)),
            (
                "subscribe_to_topic",
                functools.partial(bus.subscribe_to_topic, name, collector.handler()),
            ),
        ]
        for operation, call in operations:
            with pytest.raises(InvalidTopicNameError):
                await call()
            logger.debug("%s refused topic name %r", operation, name)

    longest = h.name("x")
    longest += "x" * (249 - len(longest))
    assert await bus.create_topic(longest, 1) is True, "a 249-character name is valid"
    assert await bus.delete_topic(longest) is True


async def oversize_message_rejected(h: Harness) -> None:
    """A message over ``max_message_bytes`` raises MessageTooLargeError, unsent."""
    limit = 2048
    bus = await h.bus(max_message_bytes=limit)
    topic = await h.topic(bus, 1)
    collector = Collector("broadcast")
    await bus.subscribe_to_topic(topic, collector.handler())

    big = EventMessage(topic=topic, value=b"x" * (limit * 2))
    with pytest.raises(MessageTooLargeError) as raised:
        await bus.publish_event(topic, big)
    assert raised.value.limit == limit, f"error names limit {raised.value.limit}"
    assert raised.value.size > limit, f"error names size {raised.value.size}"

    small = await h.publish(bus, topic, 1)
    await h.wait_handled(collector, small)
    await h.fence(bus, topic, [collector])
    check_delivery(small, collector.handled, label="after an oversize publish")

    broker_limit = h.capabilities.max_message_bytes
    if broker_limit is None:
        return

    generous = await h.bus(max_message_bytes=broker_limit * 2 + 4096)
    huge = EventMessage(topic=topic, value=b"y" * (broker_limit + 1024))
    with pytest.raises(MessageTooLargeError):
        await generous.publish_event(topic, huge)


async def auto_create_off_raises(h: Harness) -> None:
    """With auto_create_topics off, publish and subscribe raise TopicNotFoundError."""
    bus = await h.bus(auto_create_topics=False)
    topic = h.name("missing")
    collector = Collector("never called")

    with pytest.raises(TopicNotFoundError):
        await bus.publish_event(topic, EventMessage(topic=topic, value=b"x"))
    with pytest.raises(TopicNotFoundError):
        await bus.subscribe_to_topic(topic, collector.handler(), group_id=h.name("g"))
    with pytest.raises(TopicNotFoundError):
        await bus.subscribe_to_topic(topic, collector.handler())

    assert await bus.get_topic_info(topic) is None, (
        "a topic appeared although auto_create_topics is off"
    )
