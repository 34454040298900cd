"""What only the in-memory backend offers: its store, retention and delays."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from polybus import (
    ConfigurationError,
    EventMessage,
    MessageTooLargeError,
    PolybusSettings,
    TopicNotFoundError,
)
from polybus.types import ContextValue
from polybus_in_memory import InMemoryBackend, InMemoryEventBus, InMemorySettings
from waiting import Eventually

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def bus() -> AsyncIterator[InMemoryEventBus]:
    async with InMemoryEventBus(InMemoryBackend(), PolybusSettings()) as started:
        yield started


async def test_memory_usage_and_counts(bus: InMemoryEventBus) -> None:
    assert await bus.initialize_memory_store()
    await bus.create_topic("a", 2)
    for index in range(10):
        await bus.publish_event("a", EventMessage("a", b"x" * 100, key=b"%d" % index))
    await bus.publish_event("b", EventMessage("b", b"y" * 1000))

    usage = await bus.get_memory_usage()

    assert usage.message_count == 11
    assert usage.topic_count == 2
    assert usage.payload_bytes > 10 * 100 + 1000
    assert usage.total_bytes > usage.payload_bytes
    assert set(usage.per_topic_bytes) == {"a", "b"}
    assert await bus.get_message_count("a") == 10
    with pytest.raises(TopicNotFoundError):
        await bus.get_message_count("missing")


async def test_subscription_count_follows_subscribe_and_unsubscribe(
    bus: InMemoryEventBus,
) -> None:
    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        return None

    first = await bus.subscribe_to_topic("t", handler, group_id="g")
    await bus.subscribe_to_topic("t", handler)
    assert await bus.get_subscription_count("t") == 2

    await bus.unsubscribe_from_topic(first)

    assert await bus.get_subscription_count("t") == 1


async def test_clear_memory_store_drops_everything(bus: InMemoryEventBus) -> None:
    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        return None

    await bus.subscribe_to_topic("t", handler, group_id="g")
    await bus.publish_event("t", EventMessage("t", b"x"))

    await bus.clear_memory_store()

    assert await bus.list_topics() == []
    assert bus.subscriptions() == []
    assert (await bus.get_memory_usage()).message_count == 0


async def test_retention_by_count_keeps_the_newest() -> None:
    backend = InMemoryBackend(InMemorySettings(retention_messages=3))
    async with InMemoryEventBus(backend) as bus:
        for index in range(10):
            await bus.publish_event("t", EventMessage("t", b"%d" % index))

        records = await backend.read_topic("t")

        assert [EventMessage.from_bytes(r.payload).value for r in records] == [
            b"7",
            b"8",
            b"9",
        ]
        assert [r.offset for r in records] == ["7", "8", "9"]


async def test_a_group_behind_retention_skips_to_the_oldest_kept(
    eventually: Eventually,
) -> None:
    backend = InMemoryBackend(InMemorySettings(retention_messages=2))
    settings = PolybusSettings(start_position="earliest")
    async with InMemoryEventBus(backend, settings) as bus:
        for index in range(5):
            await bus.publish_event("t", EventMessage("t", b"%d" % index))
        seen: list[bytes] = []

        async def handler(
            message: EventMessage, context: dict[str, ContextValue]
        ) -> None:
            seen.append(message.value)

        await bus.subscribe_to_topic("t", handler, group_id="late")

        await eventually(lambda: seen == [b"3", b"4"], "the two retained messages")


async def test_simulated_network_delay_slows_publish(bus: InMemoryEventBus) -> None:
    await bus.create_topic("t")

    await bus.simulate_network_delay(30)
    started = time.perf_counter()
    await bus.publish_event("t", EventMessage("t", b""))
    delayed = time.perf_counter() - started

    await bus.simulate_network_delay(0)
    assert delayed >= 0.03
    with pytest.raises(ConfigurationError, match="delay_ms"):
        await bus.simulate_network_delay(-1)


async def test_oversize_records_are_refused_by_the_store() -> None:
    backend = InMemoryBackend(InMemorySettings(max_message_bytes=100))
    settings = PolybusSettings(max_message_bytes=10_000)
    async with InMemoryEventBus(backend, settings) as bus:
        with pytest.raises(MessageTooLargeError, match="limit of 100 bytes"):
            await bus.publish_event("t", EventMessage("t", b"x" * 500))
