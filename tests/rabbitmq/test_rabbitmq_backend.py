"""The RabbitMQ backend through the event bus, against the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiormq.exceptions
import pytest

from polybus.backend import OutboundRecord
from polybus.bus import EventBus
from polybus.errors import TopicNotFoundError
from polybus.message import EventMessage
from polybus.settings import PolybusSettings, RetrySettings
from polybus.types import ContextValue
from polybus_rabbitmq import (
    QueueArgumentsMismatchError,
    RabbitMQBackend,
    RabbitMQSettings,
)
from polybus_rabbitmq.settings import QueueType

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

Context = dict[str, ContextValue]
Eventually = Callable[..., Awaitable[None]]
"""The ``eventually`` fixture of ``tests/conftest.py``."""
SettingsFactory = Callable[..., RabbitMQSettings]
"""The ``rabbitmq_settings`` fixture of ``tests/rabbitmq/conftest.py``."""


def core_settings(**overrides: object) -> PolybusSettings:
    options: dict[str, object] = {
        "retry": RetrySettings(max_attempts=2, backoff_ms=10, backoff_max_ms=50),
        "drain_timeout_ms": 2_000,
    }
    options.update(overrides)
    return PolybusSettings.model_validate(options)


@asynccontextmanager
async def running_bus(
    settings: RabbitMQSettings, **core: object
) -> AsyncIterator[EventBus]:
    """A started bus on its own connection, closed on exit."""
    bus = EventBus(RabbitMQBackend(settings), core_settings(**core))
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


class Collector:
    """A handler that records what it sees, optionally slowly or failing."""

    def __init__(
        self,
        name: str = "collector",
        *,
        delay: float = 0.0,
        sink: list[tuple[str, EventMessage, Context]] | None = None,
    ) -> None:
        self.name = name
        self.delay = delay
        self.seen: list[tuple[EventMessage, Context]] = []
        self.shared = sink

    async def __call__(self, message: EventMessage, context: Context) -> None:
        self.seen.append((message, context))
        if self.shared is not None:
            self.shared.append((self.name, message, context))
        if self.delay:
            await asyncio.sleep(self.delay)

    @property
    def values(self) -> list[bytes]:
        return [message.value for message, _ in self.seen]


async def publish_all(bus: EventBus, topic: str, values: list[bytes]) -> None:
    for value in values:
        await bus.publish_event(topic, EventMessage(topic, value))


async def test_publish_and_subscribe_round_trip(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    topic = unique("orders")
    handler = Collector()

    async with running_bus(rabbitmq_settings()) as bus:
        await bus.subscribe_to_topic(topic, handler, group_id="billing")
        message = EventMessage(
            topic,
            b"\x00payload\xff",
            key=b"customer-1",
            headers={"n": 3, "f": 1.5, "ok": True, "none": None, "l": [1, "a"]},
        )
        await bus.publish_event(topic, message)

        await eventually(lambda: len(handler.seen) == 1, "the message")

    received, context = handler.seen[0]
    assert received.value == b"\x00payload\xff"
    assert received.key == b"customer-1"
    assert received.headers == message.headers
    assert received.message_id == message.message_id
    assert context["backend"] == "rabbitmq"
    assert context["delivery_count"] == 1
    assert context["group_id"] == "billing"


async def test_group_members_share_work(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    topic = unique("work")
    settings = rabbitmq_settings()
    shared: list[tuple[str, EventMessage, Context]] = []
    first = Collector("first", delay=0.003, sink=shared)
    second = Collector("second", delay=0.003, sink=shared)

    async with running_bus(settings) as one, running_bus(settings) as two:
        await one.create_topic(topic, partition_count=4)
        await one.subscribe_to_topic(topic, first, group_id="workers")
        await two.subscribe_to_topic(topic, second, group_id="workers")

        for index in range(200):
            key = f"key-{index % 16}".encode()
            await one.publish_event(
                topic, EventMessage(topic, str(index).encode(), key=key)
            )

        await eventually(lambda: len(shared) >= 200, "every message handled", 30)

    handled = sorted(int(message.value) for _, message, _ in shared)
    assert handled == list(range(200)), "each message handled once"
    assert first.seen, "the first member handled nothing"
    assert second.seen, "the second member handled nothing"


async def test_per_key_order_holds_across_members(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    topic = unique("ordered")
    settings = rabbitmq_settings()
    shared: list[tuple[str, EventMessage, Context]] = []

    async with running_bus(settings) as one, running_bus(settings) as two:
        await one.create_topic(topic, partition_count=3)
        await one.subscribe_to_topic(
            topic, Collector("a", delay=0.002, sink=shared), group_id="g"
        )
        await two.subscribe_to_topic(
            topic, Collector("b", delay=0.002, sink=shared), group_id="g"
        )

        for sequence in range(30):
            for key in range(8):
                value = f"{key}:{sequence}".encode()
                await one.publish_event(
                    topic, EventMessage(topic, value, key=str(key).encode())
                )

        await eventually(lambda: len(shared) >= 240, "every message handled", 30)

    per_key: dict[str, list[int]] = defaultdict(list)
    for _, message, _ in shared:
        name, position = message.value.decode().split(":")
        per_key[name].append(int(position))
    for name, sequences in per_key.items():
        assert sequences == list(range(30)), f"key {name} out of order: {sequences}"


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_unsettled_messages_come_back_after_unsubscribe(
    rabbitmq_settings: SettingsFactory, eventually: Eventually, queue_type: QueueType
) -> None:
    topic = unique("redeliver")
    settings = rabbitmq_settings(queue_type=queue_type)
    release = asyncio.Event()
    started: list[EventMessage] = []

    async def stuck(message: EventMessage, context: Context) -> None:
        started.append(message)
        await release.wait()

    later = Collector("later")
    async with running_bus(settings, drain_timeout_ms=200) as bus:
        first = await bus.subscribe_to_topic(topic, stuck, group_id="g")
        await publish_all(bus, topic, [b"one", b"two", b"three"])
        await eventually(lambda: len(started) == 1, "the first handler call")

        await bus.unsubscribe_from_topic(first)
        await bus.subscribe_to_topic(topic, later, group_id="g")

        await eventually(lambda: len(later.seen) == 3, "the three messages again")

    assert later.values == [b"one", b"two", b"three"]
    counts = [context["delivery_count"] for _, context in later.seen]
    assert isinstance(counts[0], int)
    assert counts[0] >= 2, f"first message should be marked redelivered: {counts}"


async def test_failing_handler_dead_letters_original_bytes(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    topic = unique("fragile")
    dead = Collector("dead")

    async def failing(message: EventMessage, context: Context) -> None:
        raise ValueError(f"cannot handle {message.value!r}")

    async with running_bus(rabbitmq_settings()) as bus:
        await bus.subscribe_to_topic(f"{topic}.dlq", dead, group_id="ops")
        await bus.subscribe_to_topic(topic, failing, group_id="g")
        original = EventMessage(topic, b"poison", headers={"h": 1})
        await bus.publish_event(topic, original)

        await eventually(lambda: len(dead.seen) == 1, "the dead letter")

    letter, _ = dead.seen[0]
    assert letter.value == original.to_bytes()
    assert letter.headers["polybus.dlq.attempts"] == 2
    assert letter.headers["polybus.dlq.exception_type"] == "ValueError"
    assert letter.headers["polybus.dlq.original_topic"] == topic


async def test_broadcast_sees_only_while_subscribed(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    topic = unique("news")
    first, second = Collector(), Collector()

    async with running_bus(rabbitmq_settings()) as bus:
        await bus.create_topic(topic, partition_count=2)
        await bus.publish_event(topic, EventMessage(topic, b"before"))
        one = await bus.subscribe_to_topic(topic, first)
        await bus.subscribe_to_topic(topic, second)
        await publish_all(bus, topic, [b"a", b"b", b"c"])

        await eventually(
            lambda: len(first.seen) == 3 and len(second.seen) == 3,
            "both broadcasts to see all three",
        )
        await bus.unsubscribe_from_topic(one)
        await bus.publish_event(topic, EventMessage(topic, b"after"))
        await eventually(lambda: len(second.seen) == 4, "the last message")

    assert sorted(first.values) == [b"a", b"b", b"c"]
    assert sorted(second.values) == [b"a", b"after", b"b", b"c"]


async def test_group_keeps_messages_while_it_has_no_member(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    topic = unique("backlog")
    settings = rabbitmq_settings()
    handler = Collector()

    async with running_bus(settings) as bus:
        first = await bus.subscribe_to_topic(topic, Collector(), group_id="g")
        await bus.unsubscribe_from_topic(first)
        await publish_all(bus, topic, [b"1", b"2", b"3"])

    async with running_bus(settings) as bus:
        await bus.subscribe_to_topic(topic, handler, group_id="g")
        await eventually(lambda: len(handler.seen) == 3, "the backlog")

    assert handler.values == [b"1", b"2", b"3"]


async def test_metadata_is_shared_between_processes(
    rabbitmq_settings: SettingsFactory,
) -> None:
    topic = unique("shared")
    settings = rabbitmq_settings()

    async with running_bus(settings) as one:
        assert await one.create_topic(topic, partition_count=3) is True
        info = await one.get_topic_info(topic)

        async with running_bus(settings) as other:
            seen = await other.get_topic_info(topic)
            assert await other.create_topic(topic, partition_count=5) is False
            assert topic in await other.list_topics()

    assert info is not None
    assert seen is not None
    assert seen.partition_count == 3
    assert seen.created_at == info.created_at


async def test_concurrent_creates_agree_on_one_creator(
    rabbitmq_settings: SettingsFactory,
) -> None:
    topic = unique("race")
    settings = rabbitmq_settings()
    backends = [RabbitMQBackend(settings) for _ in range(3)]

    for backend in backends:
        await backend.connect()
    try:
        results = await asyncio.gather(
            *(b.create_topic(topic, index + 1) for index, b in enumerate(backends))
        )
        infos = [await b.describe_topic(topic) for b in backends]
    finally:
        for backend in backends:
            await backend.close()

    assert sorted(results) == [False, False, True]
    counts = {info.partition_count for info in infos if info is not None}
    assert counts == {results.index(True) + 1}


async def test_delete_topic_removes_queues_and_metadata(
    rabbitmq_settings: SettingsFactory,
) -> None:
    topic = unique("doomed")
    settings = rabbitmq_settings()

    async with running_bus(settings, auto_create_topics=False) as bus:
        await bus.create_topic(topic, partition_count=2)
        subscription = await bus.subscribe_to_topic(topic, Collector(), group_id="g")
        await bus.unsubscribe_from_topic(subscription)
        info = await bus.get_topic_info(topic)
        assert info is not None
        assert info.consumer_groups == ("g",)

        assert await bus.delete_topic(topic) is True
        assert await bus.get_topic_info(topic) is None
        assert topic not in await bus.list_topics()
        assert await bus.delete_topic(topic) is False
        with pytest.raises(TopicNotFoundError):
            await bus.publish_event(topic, EventMessage(topic, b"x"))

        backend = bus.backend
        assert isinstance(backend, RabbitMQBackend)
        names = [
            backend.topology.group_queue(topic, "g", 0),
            backend.topology.group_queue(topic, "g", 1),
            backend.topology.members_queue(topic, "g"),
        ]
        for name in names:
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                async with backend._channel() as channel:
                    await channel.queue_declare(name, passive=True)


async def test_publish_to_missing_exchange_is_topic_not_found(
    rabbitmq_settings: SettingsFactory,
) -> None:
    backend = RabbitMQBackend(rabbitmq_settings())
    await backend.connect()
    try:
        topic = unique("ghost")
        present = unique("present")
        await backend.create_topic(present, 1)
        records = [
            OutboundRecord(topic, 0, None, b"x", uuid.uuid4()),
            OutboundRecord(present, 0, None, b"y", uuid.uuid4()),
        ]
        outcomes = await backend.publish(records)
    finally:
        await backend.close()

    assert isinstance(outcomes[0], TopicNotFoundError)
    assert outcomes[1] is None


async def test_queue_with_other_arguments_gives_typed_error(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    topic = unique("clash")
    settings = rabbitmq_settings()
    handler = Collector()

    async with running_bus(settings) as bus:
        await bus.create_topic(topic, partition_count=1)
        backend = bus.backend
        assert isinstance(backend, RabbitMQBackend)
        queue = backend.topology.group_queue(topic, "g", 0)
        async with backend._channel() as channel:
            await channel.queue_declare(
                queue,
                durable=True,
                arguments={"x-queue-type": "quorum", "x-single-active-consumer": True},
            )

        with pytest.raises(QueueArgumentsMismatchError) as caught:
            await bus.subscribe_to_topic(topic, Collector(), group_id="g")

        await bus.subscribe_to_topic(topic, handler, group_id="other")
        await bus.publish_event(topic, EventMessage(topic, b"still fine"))
        await eventually(lambda: len(handler.seen) == 1, "the other group's message")

    assert caught.value.queue == queue
    assert caught.value.argument == "x-queue-type"
    assert queue in str(caught.value)


async def test_topic_deleted_elsewhere_is_not_brought_back(
    rabbitmq_settings: SettingsFactory,
    eventually: Eventually,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = unique("remote-delete")
    settings = rabbitmq_settings()

    async with running_bus(settings) as reader, running_bus(settings) as admin:
        await reader.create_topic(topic, partition_count=2)
        await reader.subscribe_to_topic(topic, Collector(), group_id="g")
        assert await admin.delete_topic(topic) is True

        def given_up() -> int:
            return sum("no longer reads it" in r.getMessage() for r in caplog.records)

        await eventually(lambda: given_up() == 3, "the reader to let go of 3 queues")
        backend = admin.backend
        assert isinstance(backend, RabbitMQBackend)
        names = [
            backend.topology.group_queue(topic, "g", 0),
            backend.topology.group_queue(topic, "g", 1),
            backend.topology.members_queue(topic, "g"),
        ]
        for name in names:
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                async with backend._channel() as channel:
                    await channel.queue_declare(name, passive=True)
        assert await admin.get_topic_info(topic) is None


async def test_catalog_deleted_under_a_running_backend_comes_back(
    rabbitmq_settings: SettingsFactory,
) -> None:
    backend = RabbitMQBackend(rabbitmq_settings())
    before = unique("before")
    await backend.connect()
    try:
        assert await backend.create_topic(before, 1) is True
        async with backend._channel() as channel:
            await channel.queue_delete(backend.topology.catalog)

        after = unique("after")
        assert await backend.create_topic(after, 2) is True
        assert await backend.list_topics() == [after]
    finally:
        async with backend._channel() as channel:
            await channel.exchange_delete(backend.topology.exchange(before))
            await channel.queue_delete(backend.topology.log_queue(before))
        await backend.close()


async def test_publish_to_topic_deleted_elsewhere_fails_alone(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    settings = rabbitmq_settings()
    gone, kept = unique("gone"), unique("kept")
    handler = Collector()

    async with running_bus(settings) as bus, running_bus(settings) as admin:
        await bus.subscribe_to_topic(kept, handler, group_id="g")
        await bus.publish_event(gone, EventMessage(gone, b"first"))
        assert await admin.delete_topic(gone) is True

        with pytest.raises(TopicNotFoundError):
            await bus.publish_event(gone, EventMessage(gone, b"second"))
        await bus.publish_event(kept, EventMessage(kept, b"still published"))
        await eventually(lambda: len(handler.seen) == 1, "the other topic's message")

    assert handler.values == [b"still published"]
