"""Throughput of the RabbitMQ backend through polybus against raw aio-pika.

Runs, in one process and against the same broker, each workload twice: once
through polybus (:class:`~polybus.bus.EventBus` over
:class:`~polybus_rabbitmq.RabbitMQBackend`) and once with aio-pika alone doing
the same broker work (persistent messages, publisher confirms, manual acks,
the same prefetch). Prints messages per second and the polybus/raw ratio.

Workloads:

``publish-sequential``
    one message at a time, each awaited until the broker confirms it.
``publish-pipelined``
    ``--window`` publishes in flight at once, confirms gathered.
``consume-ack``
    a queue filled beforehand is drained: each message handed to a handler and
    acknowledged.

Usage::

    uv run python plugins/rabbitmq/bench/bench_rabbitmq.py --messages 20000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from polybus.bus import EventBus
from polybus.message import EventMessage
from polybus.settings import PolybusSettings
from polybus.types import ContextValue
from polybus_rabbitmq import RabbitMQBackend, RabbitMQSettings

WORKLOADS = ("publish-sequential", "publish-pipelined", "consume-ack")


@dataclass(frozen=True, slots=True)
class Options:
    url: str
    messages: int
    size: int
    window: int
    prefetch: int
    rounds: int
    profile: bool


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    """Messages per second, wall clock."""
    cpu_us: float
    """CPU time of this process per message, in microseconds: the client's own
    cost, which the broker's load on a shared machine does not change."""


@dataclass(frozen=True, slots=True)
class Result:
    workload: str
    polybus: Rate
    raw: Rate

    @property
    def ratio(self) -> float:
        return self.polybus.per_second / self.raw.per_second


async def timed(count: int, work: Callable[[], Awaitable[None]]) -> Rate:
    """Throughput and client CPU cost of ``work``, which handles ``count``."""
    started = time.perf_counter()
    cpu = time.process_time()
    await work()
    cpu = time.process_time() - cpu
    return Rate(count / (time.perf_counter() - started), cpu / count * 1e6)


class Drain:
    """Times a queue being drained, from the first message to the last.

    Starting at the first message leaves out subscribing, which is a one-off
    cost and differs between polybus and a bare consumer.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.handled = 0
        self.done = asyncio.Event()
        self.first = (0.0, 0.0)
        self.last = (0.0, 0.0)

    def tick(self) -> None:
        self.handled += 1
        if self.handled == 1:
            self.first = (time.perf_counter(), time.process_time())
        if self.handled == self.count:
            self.last = (time.perf_counter(), time.process_time())
            self.done.set()

    async def rate(self) -> Rate:
        await asyncio.wait_for(self.done.wait(), timeout=300)
        messages = self.count - 1
        wall = self.last[0] - self.first[0]
        cpu = self.last[1] - self.first[1]
        return Rate(messages / wall, cpu / messages * 1e6)


def median(rates: list[Rate]) -> Rate:
    return Rate(
        statistics.median(r.per_second for r in rates),
        statistics.median(r.cpu_us for r in rates),
    )


async def windows(
    count: int, window: int, send: Callable[[int], Awaitable[None]]
) -> None:
    """Call ``send`` for 0..count-1 with at most ``window`` in flight."""
    for start in range(0, count, window):
        await asyncio.gather(
            *(send(i) for i in range(start, min(count, start + window)))
        )


class Bench:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.prefix = f"polybus-bench.{uuid.uuid4().hex[:8]}."
        self.settings = RabbitMQSettings(
            url=options.url, name_prefix=self.prefix, prefetch=options.prefetch
        )
        self.core = PolybusSettings(prefetch=options.prefetch)
        self.value = b"v" * options.size
        self.raw_queues: list[str] = []
        self.raw_exchanges: list[str] = []

    # -- polybus --------------------------------------------------------------

    async def polybus_publish(self, bus: EventBus, pipelined: bool) -> Rate:
        topic = f"publish-{uuid.uuid4().hex[:6]}"
        await bus.create_topic(topic, 1)
        sink = await bus.subscribe_to_topic(topic, _discard, group_id="sink")
        await bus.unsubscribe_from_topic(sink)
        count = self.options.messages

        async def send(index: int) -> None:
            await bus.publish_event(topic, EventMessage(topic, self.value))

        async def work() -> None:
            if pipelined:
                await windows(count, self.options.window, send)
            else:
                for index in range(count):
                    await send(index)

        return await timed(count, work)

    async def polybus_consume(self, bus: EventBus) -> Rate:
        topic = f"consume-{uuid.uuid4().hex[:6]}"
        count = self.options.messages
        await bus.create_topic(topic, 1)
        first = await bus.subscribe_to_topic(topic, _discard, group_id="drain")
        await bus.unsubscribe_from_topic(first)

        async def send(index: int) -> None:
            await bus.publish_event(topic, EventMessage(topic, self.value))

        await windows(count, self.options.window, send)

        drain = Drain(count)

        async def handle(
            message: EventMessage, context: dict[str, ContextValue]
        ) -> None:
            drain.tick()

        await bus.subscribe_to_topic(topic, handle, group_id="drain")
        return await drain.rate()

    # -- raw aio-pika ---------------------------------------------------------

    async def raw_publish(
        self, connection: aio_pika.abc.AbstractConnection, pipelined: bool
    ) -> Rate:
        channel = await connection.channel(publisher_confirms=True)
        name = f"{self.prefix}raw-{uuid.uuid4().hex[:6]}"
        exchange = await channel.declare_exchange(name, "direct", durable=True)
        queue = await channel.declare_queue(f"{name}:sink", durable=True)
        await queue.bind(exchange, routing_key="0")
        self.raw_queues.append(queue.name)
        self.raw_exchanges.append(name)
        payload = EventMessage("raw", self.value).to_bytes()
        count = self.options.messages

        async def send(index: int) -> None:
            await exchange.publish(
                aio_pika.Message(
                    payload,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/x-polybus-envelope",
                ),
                routing_key="0",
            )

        async def work() -> None:
            if pipelined:
                await windows(count, self.options.window, send)
            else:
                for index in range(count):
                    await send(index)

        rate = await timed(count, work)
        await channel.close()
        return rate

    async def raw_consume(self, connection: aio_pika.abc.AbstractConnection) -> Rate:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=self.options.prefetch)
        name = f"{self.prefix}raw-consume-{uuid.uuid4().hex[:6]}"
        queue = await channel.declare_queue(name, durable=True)
        self.raw_queues.append(name)
        payload = EventMessage("raw", self.value).to_bytes()
        count = self.options.messages

        async def send(index: int) -> None:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                routing_key=name,
            )

        await windows(count, self.options.window, send)

        drain = Drain(count)

        async def handle(message: AbstractIncomingMessage) -> None:
            EventMessage.from_bytes(message.body)
            await message.ack()
            drain.tick()

        await queue.consume(handle)
        rate = await drain.rate()
        await channel.close()
        return rate

    # -- the run --------------------------------------------------------------

    async def run(self) -> list[Result]:
        backend = RabbitMQBackend(self.settings)
        bus = EventBus(backend, self.core)
        parameters = self.settings.connection_parameters()
        parameters.pop("reconnect_interval")
        connection = await aio_pika.connect_robust(**parameters)
        rates: dict[str, tuple[list[Rate], list[Rate]]] = {
            name: ([], []) for name in WORKLOADS
        }

        try:
            async with bus:
                for _ in range(self.options.rounds):
                    for name in WORKLOADS:
                        ours, raw = rates[name]
                        raw.append(await self.raw(connection, name))
                        ours.append(await self.ours(bus, name))
                await self.clean_up(bus, backend)
        finally:
            await connection.close()

        return [
            Result(name, median(ours), median(raw))
            for name, (ours, raw) in rates.items()
        ]

    async def raw(self, connection: aio_pika.abc.AbstractConnection, name: str) -> Rate:
        if name == "consume-ack":
            return await self.raw_consume(connection)
        return await self.raw_publish(connection, name == "publish-pipelined")

    async def ours(self, bus: EventBus, name: str) -> Rate:
        if name == "consume-ack":
            return await self.polybus_consume(bus)
        return await self.polybus_publish(bus, name == "publish-pipelined")

    async def clean_up(self, bus: EventBus, backend: RabbitMQBackend) -> None:
        for topic in await bus.list_topics():
            await bus.delete_topic(topic)
        async with backend._channel() as channel:
            await channel.queue_delete(backend.topology.catalog)
            for queue in self.raw_queues:
                await channel.queue_delete(queue)
            for exchange in self.raw_exchanges:
                await channel.exchange_delete(exchange)


async def _discard(message: EventMessage, context: dict[str, ContextValue]) -> None:
    """Keeps publish queues drained."""


async def _ack_raw(message: AbstractIncomingMessage) -> None:
    await message.ack()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://127.0.0.1:5672/")
    parser.add_argument("--messages", type=int, default=3_000, help="per round")
    parser.add_argument("--size", type=int, default=256, help="value bytes")
    parser.add_argument("--window", type=int, default=256, help="publishes in flight")
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="median of rounds")
    parser.add_argument("--profile", action="store_true", help="cProfile the run")
    args = parser.parse_args()
    options = Options(
        args.url,
        args.messages,
        args.size,
        args.window,
        args.prefetch,
        args.rounds,
        args.profile,
    )

    profiler = cProfile.Profile() if options.profile else None
    if profiler:
        profiler.enable()
    results = asyncio.run(Bench(options).run())
    if profiler:
        profiler.disable()

    print(
        f"{options.messages} messages of {options.size} bytes, "
        f"window {options.window}, prefetch {options.prefetch}, "
        f"median of {options.rounds} rounds"
    )
    print(
        f"{'workload':<20} {'polybus msg/s':>14} {'aio-pika msg/s':>15} "
        f"{'ratio':>6} {'polybus cpu us/msg':>19} {'aio-pika cpu us/msg':>20}"
    )
    for r in results:
        print(
            f"{r.workload:<20} {r.polybus.per_second:>14,.0f} "
            f"{r.raw.per_second:>15,.0f} {r.ratio:>6.2f} "
            f"{r.polybus.cpu_us:>19,.0f} {r.raw.cpu_us:>20,.0f}"
        )
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
