"""Throughput of polybus on Kafka against plain aiokafka, in the same run.

Two measurements, each made with plain aiokafka and through polybus on the same
broker, with the same producer settings (``acks=all``, the same linger and
batch size) and the same message values:

- **produce**: messages sent in batches of ``--batch``; aiokafka hands each
  batch to ``send()`` and gathers the futures, polybus calls
  ``EventPublisher.publish_batch`` (envelope encoding included);
- **consume + commit**: a consumer group reads a full topic from its start;
  aiokafka commits after every ``getmany``, polybus runs the handler and the
  commits of settled offsets. Timed from the first message to the last, so
  the group join is not counted.

Two more rows isolate the Kafka layer: ``backend produce`` calls
``KafkaBackend.publish`` with ready records (no envelope, no core), and
``backend consume+commit`` runs a ``KafkaStream`` whose sink acknowledges at
once (no dispatch layer). The produce-side topic of the backend rows is filled
twice (raw and backend), which is harmless: the consume rows read their own
topics.

The broker is the one named by ``POLYBUS_KAFKA_BOOTSTRAP``, else a Tansu process
started here. Run with ``uv run python plugins/kafka/bench/bench_kafka.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import logging
import os
import pstats
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from polybus.backend import Delivery, OutboundRecord
from polybus.message import EventMessage
from polybus.protocols import ProtocolEventMessage
from polybus.publisher import EventPublisher
from polybus.settings import PolybusSettings
from polybus.testing.tansu import TansuBroker
from polybus.types import ContextValue
from polybus_kafka import KafkaBackend, KafkaEventBus, KafkaSettings

logger = logging.getLogger("bench_kafka")

PARTITIONS = 4


@dataclass(frozen=True)
class Options:
    """What one run measures."""

    servers: str
    messages: int
    batch: int
    size: int
    linger_ms: int
    max_batch_size: int


@dataclass(frozen=True)
class Result:
    """Throughput of one measurement."""

    name: str
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds if self.seconds else 0.0


def kafka_settings(options: Options) -> KafkaSettings:
    """Backend settings matching the raw aiokafka clients."""
    return KafkaSettings(
        bootstrap_servers=options.servers.split(","),
        client_id="bench",
        linger_ms=options.linger_ms,
        max_batch_size=options.max_batch_size,
        enable_idempotence=False,
        session_timeout_ms=1_000,
        heartbeat_interval_ms=100,
        commit_interval_ms=200,
    )


def values(options: Options) -> list[bytes]:
    """The message values, the same for every measurement."""
    filler = b"x" * max(0, options.size - 8)
    return [b"%08d" % i + filler for i in range(options.messages)]


async def create_topic(options: Options, topic: str) -> None:
    """Make a topic with ``PARTITIONS`` partitions."""
    bus = KafkaEventBus(KafkaBackend(kafka_settings(options)), PolybusSettings())
    async with bus:
        await bus.create_topic(topic, PARTITIONS)


# -- produce ----------------------------------------------------------------------


async def produce_raw(options: Options, topic: str) -> Result:
    """Batches of ``send()`` futures, gathered, on a plain producer."""
    producer = AIOKafkaProducer(
        bootstrap_servers=options.servers,
        acks="all",
        linger_ms=options.linger_ms,
        max_batch_size=options.max_batch_size,
    )
    await producer.start()
    payloads = values(options)

    try:
        started = time.perf_counter()
        for first in range(0, len(payloads), options.batch):
            chunk = payloads[first : first + options.batch]
            futures = [
                await producer.send(topic, value, partition=i % PARTITIONS)
                for i, value in enumerate(chunk, first)
            ]
            await asyncio.gather(*futures)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    return Result("aiokafka produce", len(payloads), elapsed)


async def produce_polybus(options: Options, topic: str) -> Result:
    """``EventPublisher.publish_batch`` over the Kafka backend."""
    bus = KafkaEventBus(KafkaBackend(kafka_settings(options)), PolybusSettings())
    payloads = values(options)

    async with bus:
        publisher = EventPublisher(bus)
        messages: list[ProtocolEventMessage] = [
            EventMessage(topic, value) for value in payloads
        ]
        started = time.perf_counter()
        for first in range(0, len(messages), options.batch):
            result = await publisher.publish_batch(
                topic, messages[first : first + options.batch]
            )
            if not result.success:
                raise RuntimeError(f"publish failed: {result.failures[:3]}")
        elapsed = time.perf_counter() - started
    return Result("polybus produce", len(payloads), elapsed)


async def produce_backend(options: Options, topic: str) -> Result:
    """``KafkaBackend.publish`` alone: no envelope, no core, same batches."""
    backend = KafkaBackend(kafka_settings(options))
    payloads = values(options)
    records = [
        OutboundRecord(topic, i % PARTITIONS, None, value, uuid.uuid4())
        for i, value in enumerate(payloads)
    ]

    await backend.connect()
    try:
        started = time.perf_counter()
        for first in range(0, len(records), options.batch):
            outcomes = await backend.publish(records[first : first + options.batch])
            if any(outcomes):
                raise RuntimeError(f"publish failed: {outcomes[:3]}")
        elapsed = time.perf_counter() - started
    finally:
        await backend.close()
    return Result("backend produce", len(payloads), elapsed)


# -- consume ----------------------------------------------------------------------


async def consume_raw(options: Options, topic: str) -> Result:
    """A group consumer reading from the start, committing every batch."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=options.servers,
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=1_000,
        heartbeat_interval_ms=100,
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    count = 0
    first_at = 0.0

    try:
        while count < options.messages:
            batches = await consumer.getmany(timeout_ms=200, max_records=1_000)
            for records in batches.values():
                if records and not first_at:
                    first_at = time.perf_counter()
                count += len(records)
            if batches:
                await consumer.commit()
        elapsed = time.perf_counter() - first_at
    finally:
        await consumer.stop()
    return Result("aiokafka consume+commit", count, elapsed)


async def consume_polybus(options: Options, topic: str) -> Result:
    """A polybus group subscription from the start; the handler only counts."""
    core = PolybusSettings(start_position="earliest", prefetch=1_000)
    bus = KafkaEventBus(KafkaBackend(kafka_settings(options)), core)
    done = asyncio.Event()
    count = 0
    first_at = 0.0

    async def handle(message: EventMessage, context: dict[str, ContextValue]) -> None:
        nonlocal count, first_at
        if not first_at:
            first_at = time.perf_counter()
        count += 1
        if count >= options.messages:
            done.set()

    async with bus:
        await bus.subscribe_to_topic(
            topic, handle, group_id=f"pb-{uuid.uuid4().hex[:8]}"
        )
        await done.wait()
        elapsed = time.perf_counter() - first_at
    return Result("polybus consume+commit", count, elapsed)


class _CountingSink:
    """A sink that acknowledges at once: the stream without the dispatch layer."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first_at = 0.0
        self.done = asyncio.Event()

    async def deliver(self, delivery: Delivery) -> None:
        if not self.first_at:
            self.first_at = time.perf_counter()
        await delivery.ack()
        self.count += 1
        if self.count >= self.expected:
            self.done.set()

    async def revoke(self, partitions: Sequence[int]) -> None:
        return None

    def assigned(self, partitions: Sequence[int]) -> None:
        return None


async def consume_backend(options: Options, topic: str) -> Result:
    """A ``KafkaStream`` with a sink that only acknowledges: no core."""
    backend = KafkaBackend(kafka_settings(options))
    sink = _CountingSink(options.messages)

    await backend.connect()
    try:
        stream = backend.open_stream(
            topic, f"be-{uuid.uuid4().hex[:8]}", sink, start="earliest", prefetch=1_000
        )
        await stream.start()
        await sink.done.wait()
        elapsed = time.perf_counter() - sink.first_at
        await stream.stop_fetching()
        await stream.close()
    finally:
        await backend.close()
    return Result("backend consume+commit", sink.count, elapsed)


# -- running ----------------------------------------------------------------------


@contextlib.contextmanager
def broker() -> Iterator[str]:
    """The external broker, or a Tansu process for the run."""
    external = os.environ.get("POLYBUS_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return

    with TansuBroker() as tansu:
        yield tansu.bootstrap_servers


async def run(options: Options, rounds: int) -> list[tuple[Result, Result]]:
    """Each measurement ``rounds`` times, raw and polybus alternating."""
    pairs: list[tuple[Result, Result]] = []

    for _ in range(rounds):
        raw_topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
        pb_topic = f"bench-pb-{uuid.uuid4().hex[:8]}"
        be_topic = f"bench-be-{uuid.uuid4().hex[:8]}"
        for topic in (raw_topic, pb_topic, be_topic):
            await create_topic(options, topic)

        pairs.append(
            (
                await produce_raw(options, raw_topic),
                await produce_polybus(options, pb_topic),
            )
        )
        pairs.append(
            (
                await produce_raw(options, be_topic),
                await produce_backend(options, be_topic),
            )
        )
        pairs.append(
            (
                await consume_raw(options, raw_topic),
                await consume_polybus(options, pb_topic),
            )
        )
        pairs.append(
            (
                await consume_raw(options, raw_topic),
                await consume_backend(options, be_topic),
            )
        )
    return pairs


def report(pairs: list[tuple[Result, Result]]) -> None:
    """Print the best rate of each measurement and polybus's ratio to raw."""
    best: dict[str, Result] = {}
    for pair in pairs:
        for result in pair:
            if result.name not in best or result.rate > best[result.name].rate:
                best[result.name] = result

    print(f"{'measurement':<26} {'msgs/s':>12}")
    for result in best.values():
        print(f"{result.name:<26} {result.rate:>12,.0f}")

    for kind in ("produce", "consume+commit"):
        raw = best[f"aiokafka {kind}"].rate
        for layer in ("polybus", "backend"):
            ours = best[f"{layer} {kind}"].rate
            print(f"ratio {layer}/aiokafka {kind:<15} {ours / raw:.2f}")


def main() -> None:
    """Parse options, run against the broker, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--size", type=int, default=256, help="value bytes")
    parser.add_argument("--linger-ms", type=int, default=5)
    parser.add_argument("--max-batch-size", type=int, default=262_144)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="cProfile, top 25")
    args = parser.parse_args()

    logging.basicConfig(level=logging.ERROR)
    with broker() as servers:
        options = Options(
            servers,
            args.messages,
            args.batch,
            args.size,
            args.linger_ms,
            args.max_batch_size,
        )
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        pairs = asyncio.run(run(options, args.rounds))
        if profiler is not None:
            profiler.disable()

    report(pairs)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
