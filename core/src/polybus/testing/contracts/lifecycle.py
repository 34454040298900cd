"""Pause, resume, unsubscribe, stop and close."""

from __future__ import annotations

import asyncio
import logging

import pytest

from polybus.bus import EventBus
from polybus.errors import BusClosedError, SubscriptionNotFoundError
from polybus.message import EventMessage
from polybus.testing.checks import check_delivery
from polybus.testing.harness import Collector, Harness, fast_settings
from polybus.types import ContextValue

__all__ = [
    "close_does_not_hang_on_a_blocked_handler",
    "pause_resume_loses_nothing",
    "start_and_close_are_idempotent",
    "unsubscribe_drains_running_handlers",
]

logger = logging.getLogger(__name__)


async def pause_resume_loses_nothing(h: Harness) -> None:
    """A paused subscription handles nothing new; resumed, it misses nothing.

    A broadcast that is never paused is the clock: once it has everything,
    the paused group has had every chance to handle something it should not.
    """
    bus = await h.bus()
    topic = await h.topic(bus, 2)
    paused = Collector("paused group")
    clock = Collector("broadcast clock")
    keys = [b"a", b"b", b"c"]

    subscription = await bus.subscribe_to_topic(
        topic, paused.handler(), group_id=h.name("g")
    )
    await bus.subscribe_to_topic(topic, clock.handler())
    first = await h.publish(bus, topic, 10, keys=keys, stem="first")
    await h.wait_handled(paused, first)

    assert await bus.pause_subscription(subscription) is True
    assert await bus.pause_subscription(subscription) is True, "pausing twice"
    info = await bus.get_subscription_info(subscription)
    assert info is not None, "a paused subscription has no info"
    assert info.state == "paused", f"state after pause is {info.state!r}"

    second = await h.publish(bus, topic, 20, keys=keys, stem="second")
    await h.wait_handled(clock, first + second)
    assert len(paused.handled) == len(first), (
        f"a paused subscription handled {len(paused.handled) - len(first)} "
        "messages published after the pause"
    )

    assert await bus.resume_subscription(subscription) is True
    assert await bus.resume_subscription(subscription) is True, "resuming twice"
    await h.wait_handled(paused, first + second)
    await h.fence(bus, topic, [paused, clock])
    check_delivery(
        first + second,
        paused.handled,
        label=paused.name,
        key_order=h.capabilities.partition_order,
    )

    with pytest.raises(SubscriptionNotFoundError):
        await bus.pause_subscription("no-such-subscription")
    with pytest.raises(SubscriptionNotFoundError):
        await bus.resume_subscription("no-such-subscription")


async def unsubscribe_drains_running_handlers(h: Harness) -> None:
    """Unsubscribe waits for the running handler, whose message stays acked."""
    bus = await h.bus()
    topic = await h.topic(bus, 1)
    group_id = h.name("g")
    first = Collector("member that unsubscribes")
    gate = asyncio.Event()

    async def slow_first(
        message: EventMessage, context: dict[str, ContextValue]
    ) -> None:
        if message.headers.get("seq") == 0:
            await gate.wait()

    subscription = await bus.subscribe_to_topic(
        topic, first.handler("first", slow_first), group_id=group_id
    )
    published = await h.publish(bus, topic, 3, keys=[b"k"])
    await h.wait_until(lambda: first.running == 1, lambda: "the handler never started")

    leaving = asyncio.create_task(bus.unsubscribe_from_topic(subscription))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not leaving.done(), "unsubscribe returned while a handler was running"

    gate.set()
    await asyncio.wait_for(leaving, h.seconds(10))
    assert [a.outcome for a in first.attempts][:1] == ["ack"], (
        f"the running handler did not finish before unsubscribe returned: "
        f"{first.describe()}"
    )
    with pytest.raises(SubscriptionNotFoundError):
        await bus.unsubscribe_from_topic(subscription)

    second = Collector("member joining after")
    await bus.subscribe_to_topic(topic, second.handler("second"), group_id=group_id)
    fresh = await h.publish(bus, topic, 1, keys=[b"k"], stem="fresh")
    await h.fence(bus, topic, [second])

    handled_first = [m for m in published if m.message_id in first.handled_ids()]
    rest = [m for m in published if m not in handled_first]
    if h.capabilities.redelivers_unacked:
        check_delivery(rest + fresh, second.handled, label=second.name)
    else:
        check_delivery(rest + fresh, second.handled, label=second.name, exact=False)


async def start_and_close_are_idempotent(h: Harness) -> None:
    """start() and close() may be called twice; a closed bus starts again."""
    backend = h.factory()
    bus = EventBus(backend, fast_settings(drain_timeout_ms=200))
    h.buses.append(bus)

    await bus.start()
    await bus.start()
    assert bus.running, "bus not running after start()"
    topic = await h.topic(bus, 1)
    collector = Collector("before close")
    await bus.subscribe_to_topic(topic, collector.handler(), group_id=h.name("g"))
    await bus.subscribe_to_topic(topic, collector.handler("broadcast"))

    await asyncio.wait_for(bus.close(), h.seconds(10))
    await asyncio.wait_for(bus.close(), h.seconds(10))
    await asyncio.wait_for(backend.close(), h.seconds(10))
    assert not _running(bus), "bus still running after close()"

    with pytest.raises(BusClosedError):
        await bus.publish_event(topic, EventMessage(topic=topic, value=b"x"))
    with pytest.raises(BusClosedError):
        await bus.subscribe_to_topic(topic, collector.handler())

    await bus.start()
    again = Collector("after restart")
    await bus.subscribe_to_topic(topic, again.handler())
    published = await h.publish(bus, topic, 3)
    await h.wait_handled(again, published)
    await h.fence(bus, topic, [again])
    check_delivery(published, again.handled, label="bus started again")
    await asyncio.wait_for(bus.close(), h.seconds(10))


async def close_does_not_hang_on_a_blocked_handler(h: Harness) -> None:
    """close() returns within the drain timeout even if a handler never does."""
    bus = await h.bus(drain_timeout_ms=200)
    topic = await h.topic(bus, 2)
    collector = Collector("blocked")
    never = asyncio.Event()

    async def block(message: EventMessage, context: dict[str, ContextValue]) -> None:
        await never.wait()

    await bus.subscribe_to_topic(
        topic, collector.handler("g", block), group_id=h.name("g")
    )
    await bus.subscribe_to_topic(topic, collector.handler("b", block))
    await h.publish(bus, topic, 4, keys=[b"a", b"b"])
    await h.wait_until(
        lambda: collector.running >= 2, lambda: "the handlers never started blocking"
    )

    await asyncio.wait_for(bus.close(), h.seconds(10))
    assert not _running(bus), "bus still running after close()"
    assert collector.running == 0, f"{collector.running} handlers still run after close"


def _running(bus: EventBus) -> bool:
    # A function, so a type checker does not carry an earlier check of
    # ``bus.running`` past the close() that changes it.
    return bus.running
