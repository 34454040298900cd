"""The dispatcher on its own: per-partition queues, backpressure and order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from polybus import ContextValue, EventMessage
from polybus.backend import Delivery
from polybus.dispatch import Dispatcher
from polybus.metrics import BusCounters
from polybus.settings import RetrySettings
from waiting import Eventually

pytestmark = pytest.mark.asyncio


class _NoDeadLetters:
    async def dead_letter(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("nothing should be dead-lettered")


class _Partition:
    """Deliveries of one partition, and the order they were acknowledged in."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.acked: list[str] = []

    def delivery(self, index: int) -> Delivery:
        async def ack() -> None:
            self.acked.append(str(index))

        payload = EventMessage("t", b"%d" % index).to_bytes()
        return Delivery(self.partition, str(index), payload, ack)


def _dispatcher(handler: object, counters: BusCounters, prefetch: int) -> Dispatcher:
    return Dispatcher(
        subscription_id="sub",
        topic="t",
        group_id="g",
        handler=handler,  # type: ignore[arg-type]
        retry=RetrySettings(),
        dead_letters=_NoDeadLetters(),
        counters=counters,
        prefetch=prefetch,
        drain_timeout=1.0,
        backend_name="test",
    )


async def test_a_full_queue_holds_the_stream_back_and_order_is_kept(
    eventually: Eventually,
) -> None:
    release = asyncio.Event()
    handled: list[bytes] = []

    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        await release.wait()
        handled.append(message.value)

    counters = BusCounters()
    dispatcher = _dispatcher(handler, counters, prefetch=2)
    source = _Partition(0)
    assert dispatcher.info().last_message_at is None

    # The worker takes the first delivery into its handler, two more wait.
    for index in range(3):
        await dispatcher.deliver(source.delivery(index))
    assert dispatcher.info().in_flight == 3

    blocked = asyncio.create_task(dispatcher.deliver(source.delivery(3)))
    await asyncio.sleep(0.05)
    assert not blocked.done(), "deliver returned although the queue was full"
    assert handled == []

    release.set()
    await asyncio.wait_for(blocked, timeout=5)
    await eventually(lambda: len(source.acked) == 4, "four acknowledgements")

    assert handled == [b"0", b"1", b"2", b"3"]
    assert source.acked == ["0", "1", "2", "3"]
    info = dispatcher.info()
    assert (info.messages_received, info.messages_acked, info.in_flight) == (4, 4, 0)
    assert info.last_message_at is not None
    assert info.last_message_at.tzinfo == UTC
    assert datetime.now(UTC) - info.last_message_at < timedelta(minutes=1)
    assert counters.topics["t"].consumed == 4
    await dispatcher.drain()


async def test_partitions_are_handled_side_by_side(eventually: Eventually) -> None:
    first_started = asyncio.Event()
    release = asyncio.Event()
    handled: list[tuple[object, bytes]] = []

    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        if context["partition"] == 0:
            first_started.set()
            await release.wait()
        handled.append((context["partition"], message.value))

    dispatcher = _dispatcher(handler, BusCounters(), prefetch=4)
    slow, fast = _Partition(0), _Partition(1)

    await dispatcher.deliver(slow.delivery(0))
    await first_started.wait()
    for index in range(3):
        await dispatcher.deliver(fast.delivery(index))
    await eventually(lambda: len(fast.acked) == 3, "the other partition's messages")

    assert slow.acked == []
    release.set()
    await eventually(lambda: slow.acked == ["0"], "the held message")
    assert handled[-1] == (0, b"0")
    await dispatcher.drain()


async def test_draining_leaves_queued_deliveries_unacknowledged() -> None:
    started = asyncio.Event()

    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        started.set()
        await asyncio.sleep(0.05)

    dispatcher = _dispatcher(handler, BusCounters(), prefetch=8)
    source = _Partition(0)
    for index in range(5):
        await dispatcher.deliver(source.delivery(index))
    await started.wait()

    await dispatcher.drain()

    assert source.acked == ["0"]
    assert dispatcher.state == "stopped"
