"""Publishing and delivery: no loss, exact round trip, isolation, order."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime
from typing import Final
from uuid import uuid4

from polybus.bus import EventBus
from polybus.message import EventMessage
from polybus.testing.checks import check_delivery, check_same_message
from polybus.testing.harness import Collector, Harness
from polybus.types import ContextValue

__all__ = [
    "SAMPLE_HEADERS",
    "concurrent_publishers_and_subscribers",
    "no_loss_nothing_unexpected",
    "per_key_order_within_group",
    "round_trip_is_exact",
    "topic_isolation",
]

logger = logging.getLogger(__name__)

SAMPLE_HEADERS: Final[dict[str, ContextValue]] = {
    "text": "héllo ✓ 日本",
    "empty": "",
    "int": 7,
    "one_int": 1,
    "one_float": 1.0,
    "zero": 0,
    "int64_min": -(2**63),
    "uint64_max": 2**64 - 1,
    "float": 3.25,
    "negative_zero": -0.0,
    "infinity": math.inf,
    "true": True,
    "false": False,
    "none": None,
    "list": [1, "two", 3.0, False, None, [4, [5.5]]],
    "dict": {"a": 1, "b": {"c": [True, {"d": None, "e": "f"}]}, "g": []},
    "empty_dict": {},
}
"""One header of each type the envelope keeps, nested ones included."""


async def no_loss_nothing_unexpected(h: Harness) -> None:
    """A group and a broadcast each handle every message once, and nothing else."""
    bus = await h.bus()
    topic = await h.topic(bus, 4)
    group = Collector("group")
    broadcast = Collector("broadcast")

    await bus.subscribe_to_topic(topic, group.handler(), group_id=h.name("g"))
    await bus.subscribe_to_topic(topic, broadcast.handler())
    keys = [f"k{i}".encode() for i in range(8)] + [None]
    published = await h.publish(bus, topic, 120, keys=keys)

    for collector in (group, broadcast):
        await h.wait_handled(collector, published)
    await h.fence(bus, topic, [group, broadcast])

    for collector in (group, broadcast):
        check_delivery(
            published,
            collector.handled,
            label=collector.name,
            key_order=h.capabilities.partition_order,
        )


def _round_trip_messages(topic: str) -> list[EventMessage]:
    stamp = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
    return [
        EventMessage(
            topic=topic,
            value=b"",
            key=b"\x00\xff binary key",
            headers=dict(SAMPLE_HEADERS),
            timestamp=stamp,
            correlation_id=uuid4(),
            causation_id=uuid4(),
        ),
        EventMessage(
            topic=topic,
            value=bytes(range(256)) * 256,
            headers={"nested": SAMPLE_HEADERS["dict"]},
        ),
        EventMessage(topic=topic, value=b'{"json": true}', key=b"text key", headers={}),
    ]


async def round_trip_is_exact(h: Harness) -> None:
    """Value, key, typed headers, timestamp and ids arrive exactly as sent."""
    bus = await h.bus()
    topic = await h.topic(bus, 2)
    group_id = h.name("g")
    group = Collector("group")
    broadcast = Collector("broadcast")

    group_subscription = await bus.subscribe_to_topic(
        topic, group.handler(), group_id=group_id
    )
    await bus.subscribe_to_topic(topic, broadcast.handler())
    sent = _round_trip_messages(topic)
    for message in sent:
        await bus.publish_event(topic, message)

    for collector in (group, broadcast):
        await h.wait_handled(collector, sent)
        received = {m.message_id: m for m in collector.handled}
        for message in sent:
            check_same_message(message, received[message.message_id])

    info = await bus.get_topic_info(topic)
    assert info is not None
    for attempt in group.attempts:
        context = attempt.context
        expected = {
            "subscription_id": group_subscription,
            "topic": topic,
            "group_id": group_id,
            "attempt": 1,
            "backend": h.backend_name,
        }
        for name, value in expected.items():
            assert context.get(name) == value, (
                f"context[{name!r}] is {context.get(name)!r}, expected {value!r}"
            )
        partition = context.get("partition")
        assert isinstance(partition, int), f"context['partition'] is {partition!r}"
        assert 0 <= partition < info.partition_count, (
            f"context['partition'] is {partition}, the topic has "
            f"{info.partition_count} partitions"
        )
        assert isinstance(context.get("offset"), str), "context['offset'] is text"
        count = context.get("delivery_count")
        assert isinstance(count, int), f"delivery_count is {count!r}"
        assert count >= 1, f"delivery_count is {count}"


async def topic_isolation(h: Harness) -> None:
    """Subscribers of a topic see only that topic, whatever the names share."""
    bus = await h.bus()
    other = await h.bus()
    base = h.name("iso")
    topics = [base, f"{base}.x", f"{base}-x", f"{base}_x", f"{base}.x.y"]

    collectors: dict[str, tuple[Collector, Collector]] = {}
    for topic in topics:
        await bus.create_topic(topic, 2)
        group, broadcast = (
            Collector(f"group of {topic}"),
            Collector(f"broadcast of {topic}"),
        )
        await other.subscribe_to_topic(topic, group.handler(), group_id=h.name("g"))
        await other.subscribe_to_topic(topic, broadcast.handler())
        collectors[topic] = (group, broadcast)

    published = {
        topic: await h.publish(bus, topic, 10, keys=[b"a", b"b", None], stem=topic)
        for topic in topics
    }

    for topic in topics:
        await h.fence(bus, topic, collectors[topic])
        for collector in collectors[topic]:
            await h.wait_handled(collector, published[topic])
            check_delivery(published[topic], collector.handled, label=collector.name)


async def _publisher(
    h: Harness, bus: EventBus, topic: str, key: bytes, count: int
) -> list[EventMessage]:
    return await h.publish(bus, topic, count, keys=[key], stem=key.decode())


async def concurrent_publishers_and_subscribers(h: Harness) -> None:
    """Publishers and subscribers on many topics at once lose and mix nothing."""
    publishers = [await h.bus(), await h.bus()]
    consumers = [await h.bus(), await h.bus()]
    topics = [await h.topic(publishers[0], 3, stem=f"c{i}") for i in range(6)]

    collectors: dict[str, list[Collector]] = {}
    for topic in topics:
        group, broadcast = (
            Collector(f"group of {topic}"),
            Collector(f"broadcast of {topic}"),
        )
        group_id = h.name("g")
        await asyncio.gather(
            consumers[0].subscribe_to_topic(
                topic, group.handler("a"), group_id=group_id
            ),
            consumers[1].subscribe_to_topic(
                topic, group.handler("b"), group_id=group_id
            ),
            consumers[1].subscribe_to_topic(topic, broadcast.handler()),
        )
        collectors[topic] = [group, broadcast]

    jobs = [
        _publisher(h, bus, topic, f"p{p}-t{t}".encode(), 15)
        for topic in topics
        for p, bus in enumerate(publishers)
        for t in range(3)
    ]
    batches = await asyncio.gather(*jobs)

    expected: dict[str, list[EventMessage]] = {topic: [] for topic in topics}
    for batch in batches:
        expected[batch[0].topic].extend(batch)

    for topic in topics:
        for collector in collectors[topic]:
            await h.wait_handled(collector, expected[topic])
        await h.fence(publishers[1], topic, collectors[topic])
        for collector in collectors[topic]:
            check_delivery(
                expected[topic],
                collector.handled,
                label=collector.name,
                key_order=h.capabilities.partition_order,
            )


async def per_key_order_within_group(h: Harness) -> None:
    """Within a group each key's messages are handled in publish order.

    A second member joins half-way, so order must survive a rebalance.
    """
    h.require("partition_order")
    first = await h.bus()
    second = await h.bus()
    topic = await h.topic(first, 4)
    group_id = h.name("g")
    group = Collector("group")
    keys = [f"key-{i}".encode() for i in range(12)]

    await first.subscribe_to_topic(topic, group.handler("first"), group_id=group_id)
    published = await h.publish(first, topic, 90, keys=keys, stem="a")
    await second.subscribe_to_topic(topic, group.handler("second"), group_id=group_id)
    published += await h.publish(first, topic, 90, keys=keys, stem="b")

    await h.wait_handled(group, published)
    await h.fence(first, topic, [group])
    check_delivery(published, group.handled, label="group with a member joining")
