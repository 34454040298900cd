"""Batches with their confirms in flight, per-message outcomes, and close.

Against the real broker: order is checked by reading what the broker stored,
negative confirms come from a queue that refuses publishes once full, and
returns from ``mandatory`` publishes nobody can route.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiormq
import aiormq.abc
import aiormq.exceptions
import pytest
from pamqp.commands import Basic
from pamqp.common import FieldTable
from yarl import URL

from polybus.backend import OutboundRecord
from polybus.errors import BackendUnavailableError
from polybus.testing.outage import TcpOutage
from polybus_rabbitmq import MessageReturnedError, RabbitMQBackend, RabbitMQSettings
from polybus_rabbitmq.confirms import (
    WRITE_BYTES,
    Outgoing,
    _settle,
    publish_confirmed,
    writes_batches,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

logger = logging.getLogger(__name__)

Eventually = Callable[..., Awaitable[None]]
"""The ``eventually`` fixture of ``tests/conftest.py``."""
SettingsFactory = Callable[..., RabbitMQSettings]
"""The ``rabbitmq_settings`` fixture of ``tests/rabbitmq/conftest.py``."""

BATCHED = pytest.mark.parametrize(
    "batched", [True, False], ids=["one-write", "basic-publish-each"]
)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def record(topic: str, partition: int, payload: bytes) -> OutboundRecord:
    return OutboundRecord(topic, partition, None, payload, uuid.uuid4())


def outgoing(queue: str, body: bytes, *, mandatory: bool = False) -> Outgoing:
    """A message for ``queue`` through the default exchange."""
    return Outgoing(
        exchange="",
        routing_key=queue,
        body=body,
        properties=Basic.Properties(delivery_mode=2, message_id=uuid.uuid4().hex),
        mandatory=mandatory,
    )


@asynccontextmanager
async def connected(settings: RabbitMQSettings) -> AsyncIterator[RabbitMQBackend]:
    backend = RabbitMQBackend(settings)
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.close()


async def publishing_channel(backend: RabbitMQBackend) -> aiormq.abc.AbstractChannel:
    """The aiormq channel under the backend's publishing channel."""
    publisher = backend._publisher
    assert publisher is not None
    return await publisher.get_underlay_channel()


async def exclusive_queue(
    channel: aiormq.abc.AbstractChannel, arguments: FieldTable | None = None
) -> str:
    """A queue of the backend's connection, gone when it closes."""
    declared = await channel.queue_declare("", exclusive=True, arguments=arguments)
    assert declared.queue is not None
    return declared.queue


# -- the batch path -------------------------------------------------------------


async def test_installed_aiormq_writes_batches_in_one_go(
    rabbitmq_settings: SettingsFactory,
) -> None:
    async with connected(rabbitmq_settings()) as backend:
        assert writes_batches(await publishing_channel(backend))
        async with backend._channel(confirms=True) as channel:
            assert writes_batches(channel)
        async with backend._channel() as channel:
            assert not writes_batches(channel), "no confirms, no batch writes"


async def test_batch_keeps_partition_order_across_writes(
    rabbitmq_settings: SettingsFactory,
) -> None:
    topic = unique("ordered")
    partitions = 3
    value = b"v" * 1024
    # Several writes' worth, partitions interleaved, in two concurrent batches.
    count = 3 * WRITE_BYTES // len(value)
    first = [record(topic, i % partitions, b"a%05d" % i + value) for i in range(count)]
    second = [record(topic, i % partitions, b"b%05d" % i + value) for i in range(99)]

    async with connected(rabbitmq_settings()) as backend:
        await backend.create_topic(topic, partitions)
        outcomes = await asyncio.gather(backend.publish(first), backend.publish(second))
        assert list(outcomes) == [[None] * len(first), [None] * len(second)]
        stored = await backend.read_topic(topic)

    for partition in range(partitions):
        kept = [r.payload[:6] for r in stored if r.partition == partition]
        for batch in (first, second):
            sent = [r.payload[:6] for r in batch if r.partition == partition]
            assert [p for p in kept if p[:1] == sent[0][:1]] == sent


@BATCHED
async def test_messages_for_one_queue_arrive_in_batch_order(
    rabbitmq_settings: SettingsFactory, eventually: Eventually, batched: bool
) -> None:
    count = 2 * WRITE_BYTES // 1024 + 7
    received: list[bytes] = []

    async def receive(message: aiormq.abc.DeliveredMessage) -> None:
        received.append(message.body[:8])

    async with (
        connected(rabbitmq_settings()) as backend,
        backend._channel(confirms=True) as channel,
    ):
        queue = await exclusive_queue(channel)
        await channel.basic_consume(queue, receive, no_ack=True)
        bodies = [b"%08d" % i + b"x" * 1016 for i in range(count)]
        outcomes = await publish_confirmed(
            channel,
            [outgoing(queue, body) for body in bodies],
            stall_timeout=10,
            batched=batched,
        )
        assert outcomes == [None] * count
        await eventually(lambda: len(received) == count, f"{count} messages")

    assert received == [body[:8] for body in bodies]


@BATCHED
async def test_negative_confirms_fail_only_their_messages(
    rabbitmq_settings: SettingsFactory, batched: bool
) -> None:
    async with (
        connected(rabbitmq_settings()) as backend,
        backend._channel(confirms=True) as channel,
    ):
        # Once it holds 3 messages, the queue has the broker nack the rest.
        queue = await exclusive_queue(
            channel, {"x-max-length": 3, "x-overflow": "reject-publish"}
        )
        outcomes = await publish_confirmed(
            channel,
            [outgoing(queue, b"%d" % i) for i in range(6)],
            stall_timeout=10,
            batched=batched,
        )

    assert outcomes[:3] == [None] * 3
    for outcome in outcomes[3:]:
        assert isinstance(outcome, aiormq.exceptions.DeliveryError)
        assert isinstance(outcome.frame, Basic.Nack)


@BATCHED
@pytest.mark.parametrize("channel_kind", ["aiormq", "aio-pika"])
async def test_returned_messages_fail_only_their_messages(
    rabbitmq_settings: SettingsFactory, batched: bool, channel_kind: str
) -> None:
    # aiormq's own channels raise on a return; aio-pika's hand it back instead.
    async with (
        connected(rabbitmq_settings()) as backend,
        backend._channel(confirms=True) as declaring,
    ):
        queue = await exclusive_queue(declaring)
        if channel_kind == "aiormq":
            channel = declaring
        else:
            channel = await publishing_channel(backend)
        nowhere = unique("polybus-test.nowhere")
        outcomes = await publish_confirmed(
            channel,
            [
                outgoing(queue, b"kept", mandatory=True),
                outgoing(nowhere, b"returned", mandatory=True),
                outgoing(queue, b"kept too"),
                outgoing(nowhere, b"dropped, not mandatory"),
            ],
            stall_timeout=10,
            batched=batched,
        )
        stored = await declaring.queue_declare(queue, passive=True)

    assert outcomes[0] is None
    assert isinstance(outcomes[1], MessageReturnedError)
    assert outcomes[1].routing_key == nowhere
    assert outcomes[1].reply_code == 312  # NO_ROUTE
    assert outcomes[2:] == [None, None]
    assert stored.message_count == 2


async def test_confirms_that_stop_coming_time_out() -> None:
    """The waiting alone, on plain futures: confirms that stop coming."""
    loop = asyncio.get_running_loop()
    now, soon, later, never = (loop.create_future() for _ in range(4))
    now.set_result(Basic.Ack(delivery_tag=1))
    # Each confirm restarts the 0.2 s stall clock: 0.15 s and 0.3 s are in time.
    loop.call_later(0.15, soon.set_result, Basic.Ack(delivery_tag=2))
    loop.call_later(0.3, later.set_result, Basic.Ack(delivery_tag=3))
    messages = [outgoing("q", b"%d" % i) for i in range(4)]

    started = time.monotonic()
    outcomes = await _settle([now, soon, later, never], messages, 0.2)
    elapsed = time.monotonic() - started

    assert outcomes[:3] == [None, None, None]
    assert isinstance(outcomes[3], TimeoutError)
    assert never.cancelled()
    assert 0.45 <= elapsed < 2


# -- per-record outcomes through the backend ------------------------------------


async def test_cancelled_publish_leaves_the_channel_usable(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    topic = unique("cancelled")
    large = b"L" * (256 * 1024)
    cancelled = 0

    async with connected(rabbitmq_settings()) as backend:
        await backend.create_topic(topic, 2)
        await backend.publish([record(topic, 0, b"warm")])
        channel = await publishing_channel(backend)
        assert isinstance(channel, aiormq.Channel)

        for _ in range(3):
            # More than the connection's write queue holds, so the write waits
            # partway; cancelled there or while its confirms are awaited.
            batch = [record(topic, i % 2, large) for i in range(60)]
            task = asyncio.ensure_future(backend.publish(batch))
            await eventually(going_out(channel, task), "the batch to go out")
            task.cancel()
            try:
                outcomes = await task
            except asyncio.CancelledError:
                cancelled += 1
            else:
                assert outcomes == [None] * len(batch)

        after = [record(topic, i % 2, b"after %d" % i) for i in range(50)]
        assert await backend.publish(after) == [None] * 50
        stored = {r.payload for r in await backend.read_topic(topic)}

    assert cancelled >= 1
    assert {r.payload for r in after} <= stored


def going_out(channel: aiormq.Channel, task: asyncio.Future[Any]) -> Callable[[], bool]:
    """Whether ``task`` has started writing on ``channel`` (or is done)."""
    before = channel.delivery_tag
    return lambda: channel.delivery_tag > before or task.done()


# -- close while publishing -----------------------------------------------------


class Outcomes:
    """What each publisher saw, by payload."""

    def __init__(self) -> None:
        self.confirmed: list[bytes] = []
        self.closed: list[bytes] = []
        self.unexpected: list[tuple[bytes, BaseException]] = []

    def note(self, payload: bytes, outcome: BaseException | None) -> None:
        if outcome is None:
            self.confirmed.append(payload)
        elif isinstance(outcome, BackendUnavailableError):
            self.closed.append(payload)
        else:
            self.unexpected.append((payload, outcome))

    async def publish_until_refused(
        self, backend: RabbitMQBackend, topic: str, name: int
    ) -> None:
        """Publish batches of growing size until a publish is refused."""
        sequence = 0
        while True:
            size = 1 + sequence % 40
            batch = [
                record(topic, (name + i) % 3, b"%d-%d-%d" % (name, sequence, i))
                for i in range(size)
            ]
            sequence += 1
            try:
                outcomes = await backend.publish(batch)
            except BackendUnavailableError:
                self.closed.extend(r.payload for r in batch)
                return
            except asyncio.CancelledError as exc:
                # Nobody cancels these tasks: this would be the leak.
                self.unexpected.extend((r.payload, exc) for r in batch)
                return
            for item, outcome in zip(batch, outcomes, strict=True):
                self.note(item.payload, outcome)
            if any(outcome is not None for outcome in outcomes):
                return


@pytest.mark.parametrize("how", ["close", "connection-first"])
async def test_close_during_publishes_confirms_or_refuses_each(
    rabbitmq_settings: SettingsFactory, eventually: Eventually, how: str
) -> None:
    """Each publish racing a close is confirmed and stored, or refused typed.

    ``connection-first`` closes the connection under the backend before
    closing the backend, so confirms in flight are rejected the way aiormq
    rejects them on close: with :class:`asyncio.CancelledError`.
    """
    settings = rabbitmq_settings()
    topic = unique("closing")
    seen = Outcomes()

    backend = RabbitMQBackend(settings)
    await backend.connect()
    await backend.create_topic(topic, 3)
    publishers = [
        asyncio.ensure_future(seen.publish_until_refused(backend, topic, name))
        for name in range(24)
    ]
    await eventually(lambda: len(seen.confirmed) >= 500, "traffic before the close")

    started = time.monotonic()
    if how == "connection-first":
        await backend.connection.close()
    await backend.close()
    await asyncio.wait_for(asyncio.gather(*publishers), timeout=30)
    elapsed = time.monotonic() - started

    with pytest.raises(BackendUnavailableError):
        await backend.publish([record(topic, 0, b"after the close")])

    assert seen.unexpected == []
    assert all(task.done() and not task.cancelled() for task in publishers)
    # Well under operation_timeout_ms: nothing retried after the close.
    assert elapsed < settings.confirm_timeout_ms / 1000 + 5
    assert len(seen.closed) >= len(publishers), "each publisher was refused"
    logger.info(
        "%d confirmed, %d refused by the close, in %.2fs",
        len(seen.confirmed),
        len(seen.closed),
        elapsed,
    )

    async with connected(settings) as reader:
        stored = Counter(r.payload for r in await reader.read_topic(topic))
    missing = [payload for payload in seen.confirmed if payload not in stored]
    assert missing == [], f"{len(missing)} confirmed messages were not stored"


async def test_close_during_an_outage_refuses_waiting_publishes(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    url = URL(rabbitmq_settings().url)
    topic = unique("outage-close")
    with TcpOutage((url.host or "127.0.0.1", url.port or 5672)) as relay:
        settings = rabbitmq_settings(
            url=str(url.with_port(relay.port)), reconnect_interval_ms=100
        )
        backend = RabbitMQBackend(settings)
        await backend.connect()
        await backend.create_topic(topic, 2)
        assert await backend.publish([record(topic, 0, b"before")]) == [None]

        await relay.cut()
        seen = Outcomes()
        publishers = [
            asyncio.ensure_future(seen.publish_until_refused(backend, topic, name))
            for name in range(8)
        ]
        await eventually(lambda: relay.turned_away >= 1, "a reconnection attempt")

        started = time.monotonic()
        await backend.close()
        await asyncio.wait_for(asyncio.gather(*publishers), timeout=30)
        elapsed = time.monotonic() - started

    assert seen.unexpected == []
    assert seen.confirmed == [], "nothing can be confirmed while cut off"
    assert len(seen.closed) >= len(publishers)
    assert elapsed < settings.operation_timeout_ms / 1000 / 4


async def test_publish_on_a_closed_backend_fails_at_once(
    rabbitmq_settings: SettingsFactory,
) -> None:
    settings = rabbitmq_settings()
    topic = unique("closed")
    backend = RabbitMQBackend(settings)

    started = time.monotonic()
    with pytest.raises(BackendUnavailableError):
        await backend.publish([record(topic, 0, b"before connect")])

    await backend.connect()
    await backend.create_topic(topic, 1)
    await backend.close()
    with pytest.raises(BackendUnavailableError):
        await backend.publish([record(topic, 0, b"after close")])
    assert time.monotonic() - started < settings.operation_timeout_ms / 1000 / 4

    await backend.connect()
    try:
        assert await backend.publish([record(topic, 0, b"reconnected")]) == [None]
    finally:
        await backend.close()
