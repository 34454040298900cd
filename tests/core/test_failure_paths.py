"""Failures that must not block a partition or leak a secret."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from polybus import (
    BusClosedError,
    ConfigurationError,
    DeadLetterPayloadOmittedError,
    DeadLetterQueue,
    EventMessage,
    InvalidHandlerError,
    InvalidMessageError,
    PolybusSettings,
    SubscriptionNotFoundError,
    create_event_bus,
)
from polybus.dlq import HEADER_PREFIX
from polybus.settings import RetrySettings, mask_url_password
from polybus.types import ContextValue
from polybus.validation import derived_topic_name, validate_topic_name
from polybus_in_memory import InMemoryBackend, InMemoryEventBus, InMemorySettings
from waiting import Eventually

RETRY = RetrySettings(max_attempts=2, backoff_ms=1, backoff_max_ms=2, jitter_ms=0)


@pytest_asyncio.fixture
async def bus() -> AsyncIterator[InMemoryEventBus]:
    async with InMemoryEventBus(settings=PolybusSettings(retry=RETRY)) as started:
        yield started


async def _always_fail(message: EventMessage, context: dict[str, ContextValue]) -> None:
    raise ValueError("bad payload")


@pytest.mark.asyncio
async def test_a_dead_letter_the_broker_refuses_is_kept_without_its_bytes(
    eventually: Eventually,
) -> None:
    store_limit = 4096
    backend = InMemoryBackend(InMemorySettings(max_message_bytes=store_limit))
    settings = PolybusSettings(retry=RETRY, max_message_bytes=store_limit)
    async with InMemoryEventBus(backend, settings) as bus:
        handled: list[bytes] = []

        async def handler(
            message: EventMessage, context: dict[str, ContextValue]
        ) -> None:
            if message.value.startswith(b"big"):
                raise ValueError("bad payload")
            handled.append(message.value)

        await bus.subscribe_to_topic("t", handler, group_id="g")
        big = EventMessage("t", b"big" + b"x" * 3900)
        await bus.publish_event("t", big)
        await bus.publish_event("t", EventMessage("t", b"small"))

        await eventually(lambda: handled == [b"small"], "the next message")
        (letter,) = await DeadLetterQueue(bus).get_dlq_messages("t")
        record = (await backend.read_topic("t.dlq"))[0]
        headers = EventMessage.from_bytes(record.payload).headers
        omitted = str(headers[f"{HEADER_PREFIX}payload_omitted"])
        assert "over the limit of 4096 bytes" in omitted
        assert headers[f"{HEADER_PREFIX}original_size"] == len(big.to_bytes())
        assert headers[f"{HEADER_PREFIX}original_offset"] == "0"
        assert letter.exception_type == "ValueError"
        assert letter.payload_omitted == omitted
        assert letter.original_size == len(big.to_bytes())

        with pytest.raises(DeadLetterPayloadOmittedError, match="t/0@0"):
            await DeadLetterQueue(bus).retry_failed_message(letter.dlq_message_id)
        still = await DeadLetterQueue(bus).get_dlq_messages("t")
        assert [x.dlq_message_id for x in still] == [letter.dlq_message_id]


def test_derived_topic_names_stay_legal_and_distinct() -> None:
    first, second = "a" * 248 + "1", "a" * 248 + "2"

    names = {derived_topic_name(t, ".dlq") for t in (first, second)}

    assert len(names) == 2
    for name in names:
        assert validate_topic_name(name) == name
        assert name.endswith(".dlq")
    assert derived_topic_name("orders", ".dlq") == "orders.dlq"


@pytest.mark.asyncio
async def test_longest_topic_names_still_dead_letter(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    topic = "t" * 249
    await bus.subscribe_to_topic(topic, _always_fail, group_id="g")

    await bus.publish_event(topic, EventMessage(topic, b"x"))

    await eventually(
        lambda: bus.counters.topics[topic].dead_lettered == 1, "a dead letter"
    )
    (letter,) = await DeadLetterQueue(bus).get_dlq_messages(topic)
    assert letter.original_topic == topic
    assert await DeadLetterQueue(bus).retry_failed_message(letter.dlq_message_id)


@pytest.mark.asyncio
async def test_sync_handlers_are_refused(bus: InMemoryEventBus) -> None:
    def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        return None

    class AsyncCallable:
        async def __call__(
            self, message: EventMessage, context: dict[str, ContextValue]
        ) -> None:
            return None

    with pytest.raises(InvalidHandlerError, match="async def"):
        await bus.subscribe_to_topic("t", handler)  # type: ignore[arg-type]
    assert await bus.subscribe_to_topic("t", AsyncCallable())


@pytest.mark.asyncio
async def test_subscribing_while_the_bus_closes_leaves_no_ghost() -> None:
    bus = InMemoryEventBus(settings=PolybusSettings(retry=RETRY))
    await bus.start()

    subscribing = asyncio.create_task(bus.subscribe_to_topic("t", _always_fail))
    closing = asyncio.create_task(bus.close())
    results = await asyncio.gather(subscribing, closing, return_exceptions=True)

    assert bus.subscriptions() == []
    assert not isinstance(results[0], BaseException) or isinstance(
        results[0], BusClosedError
    )


@pytest.mark.asyncio
async def test_odd_input_gets_typed_errors(bus: InMemoryEventBus) -> None:
    cyclic: list[ContextValue] = []
    cyclic.append(cyclic)

    with pytest.raises(InvalidMessageError, match="partition_key"):
        await bus.publish_event("t", EventMessage("t", b""), b"k")  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match="levels deep"):
        EventMessage("t", b"", headers={"h": cyclic})
    with pytest.raises(SubscriptionNotFoundError):
        await bus.unsubscribe_from_topic(["not", "hashable"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="10000"):
        await bus.create_topic("t", 10**9)
    with pytest.raises(ConfigurationError, match="PolybusSettings"):
        create_event_bus("redis")  # type: ignore[arg-type]


def test_url_passwords_are_masked() -> None:
    assert mask_url_password("redis://:s3cret@h:1/0") == "redis://:***@h:1/0"
    assert mask_url_password("amqp://guest:s3cret@h/") == "amqp://guest:***@h/"
    assert mask_url_password("redis://h:1/0") == "redis://h:1/0"
    assert mask_url_password("plain text @ somewhere") == "plain text @ somewhere"
