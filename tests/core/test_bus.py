"""The event bus and its dispatch layer, on the in-memory backend."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from uuid import uuid4

import pytest
import pytest_asyncio

from polybus import (
    BusClosedError,
    ConfigurationError,
    EventBus,
    EventMessage,
    InvalidHandlerError,
    InvalidTopicNameError,
    MessageRejectedError,
    MessageTooLargeError,
    OutboundRecord,
    PolybusSettings,
    ProtocolEventBus,
    ProtocolEventBusInMemory,
    ProtocolEventBusService,
    SubscriptionNotFoundError,
    TopicNotFoundError,
    create_event_bus,
)
from polybus.dlq import HEADER_PREFIX
from polybus.settings import RetrySettings
from polybus.types import ContextValue
from polybus_in_memory import InMemoryBackend, InMemoryEventBus
from waiting import Eventually

pytestmark = pytest.mark.asyncio

FAST_RETRY = RetrySettings(max_attempts=3, backoff_ms=1, backoff_max_ms=5, jitter_ms=1)


def _settings(**overrides: object) -> PolybusSettings:
    return PolybusSettings.model_validate(
        {"retry": FAST_RETRY.model_dump(), "drain_timeout_ms": 2000, **overrides}
    )


@pytest_asyncio.fixture
async def bus() -> AsyncIterator[InMemoryEventBus]:
    async with InMemoryEventBus(InMemoryBackend(), _settings()) as started:
        yield started


class Recorder:
    """A handler that records what it saw and can be told to fail."""

    def __init__(self, fail_first: int = 0, settle: str | None = None) -> None:
        self.messages: list[EventMessage] = []
        self.contexts: list[dict[str, ContextValue]] = []
        self.fail_first = fail_first
        self.settle = settle
        self.calls = 0

    async def __call__(
        self, message: EventMessage, context: dict[str, ContextValue]
    ) -> None:
        self.calls += 1
        self.contexts.append(context)
        if self.calls <= self.fail_first:
            raise RuntimeError(f"attempt {self.calls} failed")
        if self.settle == "requeue":
            await message.nack(requeue=True)
        elif self.settle == "reject":
            await message.nack(requeue=False)
        self.messages.append(message)

    @property
    def values(self) -> list[bytes]:
        return [m.value for m in self.messages]


def _msg(topic: str, value: bytes, key: bytes | None = None) -> EventMessage:
    return EventMessage(topic=topic, value=value, key=key)


async def test_bus_implements_the_protocols(bus: InMemoryEventBus) -> None:
    assert isinstance(bus, ProtocolEventBus)
    assert isinstance(bus, ProtocolEventBusService)
    assert isinstance(bus, ProtocolEventBusInMemory)


async def test_create_event_bus_defaults_to_in_memory() -> None:
    async with create_event_bus(_settings()) as made:
        assert isinstance(made, InMemoryEventBus)
        assert made.backend.name == "in_memory"


async def test_publish_reaches_a_group_with_context(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    handler = Recorder()
    await bus.create_topic("orders", 3)
    subscription = await bus.subscribe_to_topic("orders", handler, group_id="billing")

    await bus.publish_event("orders", _msg("orders", b"1", b"user-1"))

    await eventually(lambda: len(handler.messages) == 1, "one message")
    (context,) = handler.contexts
    assert context["subscription_id"] == subscription
    assert context["group_id"] == "billing"
    assert context["attempt"] == 1
    assert context["backend"] == "in_memory"
    assert handler.messages[0].partition == context["partition"]


async def test_handler_runs_outside_the_publish_call(bus: InMemoryEventBus) -> None:
    entered = asyncio.Event()

    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        entered.set()

    await bus.subscribe_to_topic("t", handler)
    await bus.publish_event("t", _msg("t", b"x"))

    assert not entered.is_set()
    await asyncio.wait_for(entered.wait(), timeout=5)


async def test_partition_key_overrides_the_message_key(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    handler = Recorder()
    await bus.create_topic("t", 8)
    await bus.subscribe_to_topic("t", handler, group_id="g")

    for index in range(20):
        await bus.publish_event("t", _msg("t", b"%d" % index, b"k%d" % index), "same")

    await eventually(lambda: len(handler.messages) == 20, "20 messages")
    assert len({m.partition for m in handler.messages}) == 1
    assert handler.values == [b"%d" % i for i in range(20)]


async def test_failures_are_retried_then_succeed(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    handler = Recorder(fail_first=2)
    await bus.subscribe_to_topic("t", handler, group_id="g")

    await bus.publish_event("t", _msg("t", b"x"))

    await eventually(lambda: len(handler.messages) == 1, "success on attempt 3")
    assert [c["attempt"] for c in handler.contexts] == [1, 2, 3]
    metrics = await bus.get_topic_metrics("t")
    assert (metrics.messages_failed, metrics.messages_consumed) == (2, 1)
    assert metrics.messages_dead_lettered == 0


async def test_exhausted_retries_dead_letter_the_original_bytes(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    dead = Recorder()
    failing = Recorder(fail_first=100)
    await bus.subscribe_to_topic("t.dlq", dead)
    await bus.subscribe_to_topic("t", failing, group_id="workers")
    original = EventMessage("t", b"payload", key=b"k", headers={"n": 1})

    await bus.publish_event("t", original)

    await eventually(lambda: len(dead.messages) == 1, "a dead letter")
    letter = dead.messages[0]
    assert failing.calls == 3
    assert EventMessage.from_bytes(letter.value) == original
    assert letter.key == b"k"
    assert letter.causation_id == original.message_id
    headers = letter.headers
    assert headers[f"{HEADER_PREFIX}original_topic"] == "t"
    assert headers[f"{HEADER_PREFIX}consumer_group"] == "workers"
    assert headers[f"{HEADER_PREFIX}exception_type"] == "RuntimeError"
    assert headers[f"{HEADER_PREFIX}exception_message"] == "attempt 3 failed"
    assert headers[f"{HEADER_PREFIX}attempts"] == 3
    assert "RuntimeError" in str(headers[f"{HEADER_PREFIX}stack_trace"])
    assert headers[f"{HEADER_PREFIX}original_partition"] == 0
    assert headers[f"{HEADER_PREFIX}original_offset"] == "0"


async def test_nack_requeue_is_another_attempt(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    dead = Recorder()
    handler = Recorder(settle="requeue")
    await bus.subscribe_to_topic("t.dlq", dead)
    await bus.subscribe_to_topic("t", handler, group_id="g")

    await bus.publish_event("t", _msg("t", b"x"))

    await eventually(lambda: len(dead.messages) == 1, "a dead letter")
    assert handler.calls == 3
    reason = dead.messages[0].headers[f"{HEADER_PREFIX}exception_type"]
    assert reason == MessageRejectedError.__qualname__


async def test_nack_without_requeue_dead_letters_at_once(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    dead = Recorder()
    handler = Recorder(settle="reject")
    await bus.subscribe_to_topic("t.dlq", dead)
    await bus.subscribe_to_topic("t", handler, group_id="g")

    await bus.publish_event("t", _msg("t", b"x"))

    await eventually(lambda: len(dead.messages) == 1, "a dead letter")
    assert handler.calls == 1
    assert dead.messages[0].headers[f"{HEADER_PREFIX}attempts"] == 1


async def test_undecodable_bytes_are_dead_lettered_intact(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    dead = Recorder()
    handler = Recorder()
    await bus.create_topic("t")
    await bus.subscribe_to_topic("t.dlq", dead)
    await bus.subscribe_to_topic("t", handler, group_id="g")
    garbage = b"\x00not an envelope"

    record = OutboundRecord("t", 0, None, garbage, uuid4())
    assert await bus.backend.publish([record]) == [None]

    await eventually(lambda: len(dead.messages) == 1, "a dead letter")
    assert dead.messages[0].value == garbage
    assert handler.calls == 0
    exception = dead.messages[0].headers[f"{HEADER_PREFIX}exception_type"]
    assert exception == "SerializationError"


class _FlakyDeadLetters(InMemoryBackend):
    """Refuses dead letters a few times, as a broker outage would."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    async def publish(
        self, records: Sequence[OutboundRecord]
    ) -> list[BaseException | None]:
        if records[0].topic.endswith(".dlq") and self.refusals:
            self.refusals -= 1
            return [ConnectionError("broker away")]
        return await super().publish(records)


async def test_original_stays_unacked_until_the_dead_letter_is_stored(
    eventually: Eventually,
) -> None:
    backend = _FlakyDeadLetters(refusals=3)
    async with InMemoryEventBus(backend, _settings()) as flaky:
        handler = Recorder(settle="reject")
        await flaky.subscribe_to_topic("t", handler, group_id="g")
        await flaky.publish_event("t", _msg("t", b"x"))

        await eventually(lambda: handler.calls == 1, "one attempt")
        group = backend.topics["t"].groups["g"]
        assert group.committed == [0]

        await eventually(lambda: backend.refusals == 0, "dead letter refusals")
        await eventually(lambda: group.committed == [1], "ack after dead letter")
        assert await flaky.get_message_count("t.dlq") == 1


async def test_ack_then_raise_keeps_the_message_acknowledged(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    calls = 0

    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        nonlocal calls
        calls += 1
        await message.ack()
        raise RuntimeError("after ack")

    await bus.subscribe_to_topic("t", handler, group_id="g")
    await bus.publish_event("t", _msg("t", b"x"))

    await eventually(lambda: bus.counters.topics["t"].consumed == 1, "acked")
    assert calls == 1
    assert bus.counters.topics["t"].dead_lettered == 0


async def test_settling_twice_in_a_handler_fails_the_attempt(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    errors: list[BaseException] = []

    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        await message.nack(requeue=True)
        try:
            await message.ack()
        except Exception as exc:
            errors.append(exc)

    await bus.subscribe_to_topic("t", handler, group_id="g")
    await bus.publish_event("t", _msg("t", b"x"))

    await eventually(lambda: len(errors) == 3, "three attempts")
    assert all("already settled" in str(e) for e in errors)


async def test_pause_holds_and_resume_continues(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    handler = Recorder()
    subscription = await bus.subscribe_to_topic("t", handler, group_id="g")
    await bus.publish_event("t", _msg("t", b"0"))
    await eventually(lambda: len(handler.messages) == 1, "first message")

    assert await bus.pause_subscription(subscription)
    for index in range(1, 6):
        await bus.publish_event("t", _msg("t", b"%d" % index))
    info = await bus.get_subscription_info(subscription)
    assert info is not None
    assert info.state == "paused"

    async def held() -> int:
        current = await bus.get_subscription_info(subscription)
        return current.in_flight if current else -1

    for _ in range(1000):
        if await held() == 5:
            break
        await asyncio.sleep(0.005)
    assert await held() == 5, "the five messages are fetched and held"
    assert handler.values == [b"0"]

    assert await bus.resume_subscription(subscription)

    await eventually(lambda: len(handler.messages) == 6, "six messages")
    assert handler.values == [b"%d" % i for i in range(6)]


async def test_unknown_subscription_ids_are_typed_errors(bus: InMemoryEventBus) -> None:
    with pytest.raises(SubscriptionNotFoundError):
        await bus.unsubscribe_from_topic("nope")
    with pytest.raises(SubscriptionNotFoundError):
        await bus.pause_subscription("nope")
    with pytest.raises(SubscriptionNotFoundError):
        await bus.resume_subscription("nope")
    assert await bus.get_subscription_info("nope") is None


async def test_bad_input_is_refused_before_anything_is_sent(
    bus: InMemoryEventBus,
) -> None:
    with pytest.raises(InvalidTopicNameError):
        await bus.publish_event("bad topic", _msg("x", b""))
    with pytest.raises(InvalidHandlerError):
        await bus.subscribe_to_topic("t", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="group_id"):
        await bus.subscribe_to_topic("t", Recorder(), group_id="")
    with pytest.raises(ConfigurationError, match="partition_count"):
        await bus.create_topic("t", 0)

    assert await bus.list_topics() == []


async def test_oversize_messages_are_refused_with_both_sizes() -> None:
    async with InMemoryEventBus(settings=_settings(max_message_bytes=200)) as small:
        with pytest.raises(MessageTooLargeError) as caught:
            await small.publish_event("t", _msg("t", b"x" * 500))

        assert caught.value.limit == 200
        assert caught.value.size > 500
        assert await small.list_topics() == []


async def test_without_auto_create_missing_topics_are_errors() -> None:
    settings = _settings(auto_create_topics=False)
    async with InMemoryEventBus(settings=settings) as strict:
        with pytest.raises(TopicNotFoundError):
            await strict.publish_event("t", _msg("t", b""))
        with pytest.raises(TopicNotFoundError):
            await strict.subscribe_to_topic("t", Recorder())

        await strict.create_topic("t")
        await strict.publish_event("t", _msg("t", b""))


async def test_topic_lifecycle_is_idempotent(bus: InMemoryEventBus) -> None:
    assert await bus.create_topic("t", 4)
    assert not await bus.create_topic("t", 2)
    info = await bus.get_topic_info("t")
    assert info is not None
    assert info.partition_count == 4

    assert await bus.delete_topic("t")
    assert not await bus.delete_topic("t")
    assert await bus.get_topic_info("t") is None


async def test_closed_bus_refuses_work_and_close_is_idempotent() -> None:
    bus = InMemoryEventBus(settings=_settings())

    with pytest.raises(BusClosedError):
        await bus.publish_event("t", _msg("t", b""))

    await bus.start()
    await bus.start()
    await bus.close()
    await bus.close()
    with pytest.raises(BusClosedError):
        await bus.create_topic("t")


async def test_service_protocol(bus: InMemoryEventBus) -> None:
    health = await bus.get_service_health()
    assert health.status == "healthy"
    assert health.backend_reachable

    configuration = await bus.get_service_configuration()
    assert configuration.max_attempts == 3

    new = dataclasses.replace(configuration, max_attempts=5, prefetch=8)
    assert await bus.update_service_configuration(new)
    assert (await bus.get_service_configuration()).max_attempts == 5

    with pytest.raises(ConfigurationError, match="backend"):
        await bus.update_service_configuration(
            dataclasses.replace(configuration, backend="kafka")
        )
    with pytest.raises(ConfigurationError, match="invalid"):
        await bus.update_service_configuration(
            dataclasses.replace(configuration, max_attempts=0)
        )

    assert await bus.stop_service()
    assert not await bus.is_service_running()
    assert (await bus.get_service_health()).status == "unhealthy"
    assert await bus.start_service()
    metrics = await bus.get_service_metrics()
    assert metrics.restarts == 1
    assert metrics.configuration_updates == 1


async def test_health_is_degraded_while_a_subscription_is_paused(
    bus: InMemoryEventBus,
) -> None:
    subscription = await bus.subscribe_to_topic("t", Recorder())

    await bus.pause_subscription(subscription)

    health = await bus.get_service_health()
    assert health.status == "degraded"
    assert health.paused_subscriptions == 1


async def test_bus_metrics_count_traffic(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    handler = Recorder()
    await bus.subscribe_to_topic("t", handler, group_id="g")

    for index in range(10):
        await bus.publish_event("t", _msg("t", b"%d" % index))
    await eventually(lambda: len(handler.messages) == 10, "ten messages")

    metrics = await bus.get_bus_metrics()
    assert metrics.messages_published == 10
    assert metrics.messages_consumed == 10
    assert metrics.bytes_published == metrics.bytes_consumed > 0
    assert metrics.active_subscriptions == 1
    assert metrics.publish_latency_ms_p99 >= metrics.publish_latency_ms_avg > 0
    topic = await bus.get_topic_metrics("t")
    assert topic.consumer_groups == ("g",)
    assert topic.retained_messages == 10


async def test_generic_event_bus_takes_any_backend() -> None:
    async with EventBus(InMemoryBackend(), _settings()) as plain:
        await plain.create_topic("t")
        assert await plain.list_topics() == ["t"]
