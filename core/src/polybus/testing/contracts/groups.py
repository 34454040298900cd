"""Consumer groups and broadcast subscriptions."""

from __future__ import annotations

import logging

from polybus.message import EventMessage
from polybus.testing.checks import check_delivery
from polybus.testing.harness import Collector, Harness

__all__ = [
    "broadcast_sees_only_while_subscribed",
    "every_group_gets_every_message",
    "group_keeps_messages_while_memberless",
    "group_members_share_work",
    "new_group_starts_at_earliest",
    "new_group_starts_at_latest",
]

logger = logging.getLogger(__name__)


async def every_group_gets_every_message(h: Harness) -> None:
    """Each consumer group of a topic handles every message once."""
    bus = await h.bus()
    topic = await h.topic(bus, 2)
    groups = [Collector(f"group {i}") for i in range(3)]

    for index, collector in enumerate(groups):
        member_bus = bus if index % 2 == 0 else await h.bus()
        await member_bus.subscribe_to_topic(
            topic, collector.handler(), group_id=h.name(f"g{index}")
        )
    published = await h.publish(bus, topic, 40, keys=[b"a", b"b", b"c", None])

    for collector in groups:
        await h.wait_handled(collector, published)
    await h.fence(bus, topic, groups)

    for collector in groups:
        check_delivery(
            published,
            collector.handled,
            label=collector.name,
            key_order=h.capabilities.partition_order,
        )


async def group_members_share_work(h: Harness) -> None:
    """Members of one group share the messages; none is handled twice."""
    buses = [await h.bus() for _ in range(3)]
    topic = await h.topic(buses[0], 6)
    group_id = h.name("g")
    group = Collector("group of three")

    for index, bus in enumerate(buses):
        await bus.subscribe_to_topic(
            topic, group.handler(f"member-{index}"), group_id=group_id
        )
    keys = [f"k{i}".encode() for i in range(30)]
    published = await h.publish(buses[0], topic, 90, keys=keys)

    await h.wait_handled(group, published)
    await h.fence(buses[0], topic, [group])
    check_delivery(
        published,
        group.handled,
        label="group of three",
        key_order=h.capabilities.partition_order,
    )

    workers = {a.member for a in group.attempts}
    assert len(workers) >= 2, (
        f"only {sorted(workers)} of 3 members handled messages of a 6-partition "
        "topic; the members of a group must share the work"
    )


async def broadcast_sees_only_while_subscribed(h: Harness) -> None:
    """A broadcast subscription sees what was published while it was live."""
    bus = await h.bus()
    topic = await h.topic(bus, 2)
    window = Collector("broadcast for a while")
    always = Collector("broadcast throughout")
    keys = [b"a", b"b", None]

    await bus.subscribe_to_topic(topic, always.handler())
    before = await h.publish(bus, topic, 5, keys=keys, stem="before")
    subscription = await bus.subscribe_to_topic(topic, window.handler())
    during = await h.publish(bus, topic, 5, keys=keys, stem="during")
    await h.wait_handled(window, during)
    await bus.unsubscribe_from_topic(subscription)
    after = await h.publish(bus, topic, 5, keys=keys, stem="after")

    await h.wait_handled(always, before + during + after)
    await h.fence(bus, topic, [always])
    check_delivery(during, window.handled, label=window.name)
    check_delivery(before + during + after, always.handled, label=always.name)


async def group_keeps_messages_while_memberless(h: Harness) -> None:
    """A group gets what was published while it had no member, and no more."""
    bus = await h.bus()
    topic = await h.topic(bus, 2)
    group_id = h.name("g")
    first = Collector("first member")

    subscription = await bus.subscribe_to_topic(
        topic, first.handler(), group_id=group_id
    )
    handled = await h.publish(bus, topic, 10, keys=[b"a", b"b"], stem="handled")
    await h.wait_handled(first, handled)
    await bus.unsubscribe_from_topic(subscription)

    kept = await h.publish(bus, topic, 10, keys=[b"a", b"b"], stem="kept")

    other_bus = await h.bus()
    second = Collector("member joining later")
    await other_bus.subscribe_to_topic(topic, second.handler(), group_id=group_id)
    await h.wait_handled(second, kept)
    await h.fence(bus, topic, [second])

    check_delivery(handled, first.handled, label=first.name)
    check_delivery(kept, second.handled, label=second.name)


async def new_group_starts_at_latest(h: Harness) -> None:
    """A new group with ``start_position=latest`` skips what came before it."""
    bus = await h.bus()
    topic = await h.topic(bus, 2)
    await h.publish(bus, topic, 5, stem="old")
    group = Collector("new group")

    await bus.subscribe_to_topic(topic, group.handler(), group_id=h.name("g"))
    fresh = await h.publish(bus, topic, 5, stem="new")
    await h.wait_handled(group, fresh)
    await h.fence(bus, topic, [group])
    check_delivery(fresh, group.handled, label=group.name)


async def new_group_starts_at_earliest(h: Harness) -> None:
    """A new group with ``start_position=earliest`` reads the retained messages."""
    h.require("earliest_start")
    bus = await h.bus(start_position="earliest")
    topic = await h.topic(bus, 2)
    old = await h.publish(bus, topic, 5, keys=[b"a", b"b"], stem="old")
    group = Collector("new group from earliest")

    await bus.subscribe_to_topic(topic, group.handler(), group_id=h.name("g"))
    fresh = await h.publish(bus, topic, 5, keys=[b"a", b"b"], stem="new")
    expected: list[EventMessage] = old + fresh
    await h.wait_handled(group, expected)
    await h.fence(bus, topic, [group])
    check_delivery(
        expected,
        group.handled,
        label=group.name,
        key_order=h.capabilities.partition_order,
    )
