"""The topic log: read_topic, retention without groups, and the dead-letter queue."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiormq.exceptions
import pytest

from polybus import DeadLetterQueue, ProtocolDLQHandler
from polybus.backend import OutboundRecord
from polybus.bus import EventBus
from polybus.errors import TopicNotFoundError, UnsupportedOperationError
from polybus.message import EventMessage
from polybus.settings import PolybusSettings, RetrySettings
from polybus.types import ContextValue
from polybus_rabbitmq import RabbitMQBackend, RabbitMQSettings

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

Context = dict[str, ContextValue]
Eventually = Callable[..., Awaitable[None]]
"""The ``eventually`` fixture of ``tests/conftest.py``."""
SettingsFactory = Callable[..., RabbitMQSettings]
"""The ``rabbitmq_settings`` fixture of ``tests/rabbitmq/conftest.py``."""


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def connected(settings: RabbitMQSettings) -> AsyncIterator[RabbitMQBackend]:
    backend = RabbitMQBackend(settings)
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.close()


@asynccontextmanager
async def running_bus(settings: RabbitMQSettings) -> AsyncIterator[EventBus]:
    core = PolybusSettings(
        retry=RetrySettings(
            max_attempts=2, backoff_ms=1, backoff_max_ms=2, jitter_ms=0
        ),
        drain_timeout_ms=2_000,
    )
    bus = EventBus(RabbitMQBackend(settings), core)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


def record(topic: str, partition: int, payload: bytes) -> OutboundRecord:
    return OutboundRecord(topic, partition, None, payload, uuid.uuid4())


async def queue_exists(backend: RabbitMQBackend, queue: str) -> bool:
    try:
        async with backend._channel() as channel:
            await channel.queue_declare(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    return True


async def test_read_topic_lists_each_partition_in_publish_order(
    rabbitmq_settings: SettingsFactory,
) -> None:
    topic = unique("log")
    sent = [record(topic, index % 3, b"m%02d" % index) for index in range(30)]

    async with connected(rabbitmq_settings()) as backend:
        await backend.create_topic(topic, 3)
        assert await backend.publish(sent[:10]) == [None] * 10
        for one in sent[10:]:
            assert await backend.publish([one]) == [None]

        records = await backend.read_topic(topic)
        again = await backend.read_topic(topic)
        limited = await backend.read_topic(topic, limit=12)

    assert [r.partition for r in records] == sorted(r.partition for r in records)
    by_partition: dict[int, list[bytes]] = defaultdict(list)
    for stored in records:
        by_partition[stored.partition].append(stored.payload)
    for partition in range(3):
        expected = [r.payload for r in sent if r.partition == partition]
        assert by_partition[partition] == expected, f"partition {partition}"
    for partition in range(3):
        offsets = [int(r.offset) for r in records if r.partition == partition]
        assert offsets == sorted(offsets)
    assert again == records, "a read consumes nothing and skips end markers"
    assert limited == records[:12]


async def test_topic_without_groups_keeps_what_is_published(
    rabbitmq_settings: SettingsFactory,
) -> None:
    topic = unique("unread")
    settings = rabbitmq_settings()

    async with running_bus(settings) as bus:
        for value in (b"one", b"two", b"three"):
            await bus.publish_event(topic, EventMessage(topic, value))

    async with connected(settings) as other:
        records = await other.read_topic(topic)

    values = [EventMessage.from_bytes(r.payload).value for r in records]
    assert values == [b"one", b"two", b"three"]


async def test_concurrent_reads_agree(rabbitmq_settings: SettingsFactory) -> None:
    topic = unique("readers")

    async with connected(rabbitmq_settings()) as backend:
        await backend.create_topic(topic, 2)
        await backend.publish([record(topic, i % 2, b"%d" % i) for i in range(20)])

        reads = await asyncio.gather(*(backend.read_topic(topic) for _ in range(4)))

    assert len(reads[0]) == 20
    assert all(read == reads[0] for read in reads)


async def test_delete_topic_removes_its_log(rabbitmq_settings: SettingsFactory) -> None:
    topic = unique("doomed-log")

    async with connected(rabbitmq_settings()) as backend:
        log = backend.topology.log_queue(topic)
        await backend.create_topic(topic, 2)
        await backend.publish([record(topic, 0, b"old"), record(topic, 1, b"old")])
        assert await queue_exists(backend, log)

        assert await backend.delete_topic(topic) is True
        assert not await queue_exists(backend, log)
        with pytest.raises(TopicNotFoundError):
            await backend.read_topic(topic)

        await backend.create_topic(topic, 2)
        assert await backend.read_topic(topic) == [], "a new topic starts empty"


async def test_log_deleted_under_a_running_backend_comes_back(
    rabbitmq_settings: SettingsFactory,
) -> None:
    topic = unique("lost-log")

    async with connected(rabbitmq_settings()) as backend:
        await backend.create_topic(topic, 1)
        await backend.publish([record(topic, 0, b"gone with the log")])
        async with backend._channel() as channel:
            await channel.queue_delete(backend.topology.log_queue(topic))

        assert await backend.read_topic(topic) == []
        assert await queue_exists(backend, backend.topology.log_queue(topic))


async def test_existing_topic_gets_its_log_on_first_publish(
    rabbitmq_settings: SettingsFactory,
) -> None:
    topic = unique("older")

    async with connected(rabbitmq_settings(topic_log=False)) as old:
        assert not old.capabilities.browse
        await old.create_topic(topic, 2)
        await old.publish([record(topic, 0, b"before the log")])
        assert not await queue_exists(old, old.topology.log_queue(topic))
        with pytest.raises(UnsupportedOperationError, match="read_topic"):
            await old.read_topic(topic)

    async with connected(rabbitmq_settings()) as new:
        assert new.capabilities.browse
        assert await new.publish([record(topic, 1, b"after")]) == [None]
        records = await new.read_topic(topic)

    assert [(r.partition, r.payload) for r in records] == [(1, b"after")]


async def test_log_keeps_retention_it_was_made_with(
    rabbitmq_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("retention")

    async with connected(rabbitmq_settings(topic_log_max_age="1D")) as first:
        await first.create_topic(topic, 1)

    settings = rabbitmq_settings(topic_log_max_age="2h", topic_log_max_bytes=10_000)
    async with connected(settings) as second:
        await second.create_topic(topic, 1)
        await second.publish([record(topic, 0, b"kept")])
        records = await second.read_topic(topic)

    assert [r.payload for r in records] == [b"kept"]
    assert any(
        r.levelno == logging.WARNING and "keeps its own" in r.getMessage()
        for r in caplog.records
    )


async def test_read_topic_of_missing_topic_is_topic_not_found(
    rabbitmq_settings: SettingsFactory,
) -> None:
    async with connected(rabbitmq_settings()) as backend:
        with pytest.raises(TopicNotFoundError):
            await backend.read_topic(unique("ghost"))


class InvalidOrder(ValueError):
    """A handler's own failure."""


async def test_dead_letter_queue_life_cycle(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    topic = unique("orders")
    fixed: list[EventMessage] = []

    async def handler(message: EventMessage, context: Context) -> None:
        if message.headers.get("polybus.dlq.replay_count"):
            fixed.append(message)
            return
        raise InvalidOrder(f"order {message.value.decode()} has no customer")

    async with running_bus(rabbitmq_settings()) as bus:
        dlq = DeadLetterQueue(bus)
        assert isinstance(dlq, ProtocolDLQHandler)
        await bus.subscribe_to_topic(topic, handler, group_id="billing")
        for index in range(3):
            await bus.publish_event(topic, EventMessage(topic, b"%d" % index))
        await eventually(
            lambda: bus.counters.topics[topic].dead_lettered == 3, "3 dead letters"
        )

        letters = await dlq.get_dlq_messages(topic)

        assert len(letters) == 3
        first = letters[0]
        assert first.original_topic == topic
        assert first.consumer_group == "billing"
        assert first.exception_type == "InvalidOrder"
        assert first.attempt_count == 2
        assert first.failure_reason.endswith("has no customer")
        assert "InvalidOrder" in first.stack_trace
        assert {m.original_message.value for m in letters} == {b"0", b"1", b"2"}
        assert len(await dlq.get_dlq_messages(topic, limit=2)) == 2

        analysis = await dlq.analyze_failure_patterns(topic, time_range_hours=1)
        assert analysis.total_failures == 3
        assert analysis.by_exception_type == {"InvalidOrder": 3}
        assert analysis.affected_groups == ("billing",)

        assert await dlq.retry_failed_message(first.dlq_message_id)
        assert not await dlq.retry_failed_message(first.dlq_message_id)
        await eventually(lambda: len(fixed) == 1, "the replayed order handled")
        assert fixed[0].message_id == first.original_message.message_id
        assert fixed[0].headers["polybus.dlq.replay_count"] == 1
        assert len(await dlq.get_dlq_messages(topic)) == 2

        assert await dlq.clear_dlq_messages(topic, older_than_hours=1) == 0
        assert await dlq.clear_dlq_messages(topic, older_than_hours=0) == 2
        assert await dlq.get_dlq_messages(topic) == []

        after = await dlq.analyze_failure_patterns(topic, time_range_hours=1)
        assert after.total_failures == 3
        assert after.retried == 1
        assert after.retry_outcomes == {"retried": 1, "cleared": 2}
