"""Throughput of the Redis backend against raw redis-py, in the same run.

Five measurements on one server, each on a one-partition topic (one stream) so
both sides do the same work on the server:

- raw publish: pipelined ``XADD`` in batches;
- polybus publish: ``EventBus.publish_event`` with ``batch`` publishes in
  flight at once (the backend shares one pipeline among them);
- polybus batch publish: ``RedisBackend.publish`` with ``batch`` records per
  call, the backend alone, without the bus's per-message work;
- raw consume: ``XREADGROUP`` in batches, one ``XACK`` per batch;
- polybus consume: a group subscription through the dispatch layer, a no-op
  handler, acknowledged by the backend;
- backend consume: the backend's group stream feeding a sink that acks at once,
  the backend alone, without the dispatch layer.

The raw side writes envelopes of the same size as polybus does. The rounds are
interleaved and the best rate of each side is kept, which evens out a machine
that is busy with other work. Call :func:`run_benchmark` (the CLI can) or run
``bench/bench_redis.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from polybus.backend import Delivery, OutboundRecord
from polybus.bus import EventBus
from polybus.message import EventMessage
from polybus.settings import PolybusSettings
from polybus_redis.backend import RedisBackend
from polybus_redis.settings import RedisSettings

__all__ = ["BenchResult", "run_benchmark"]


@dataclass(frozen=True, slots=True)
class BenchResult:
    """Messages per second of each side."""

    count: int
    raw_publish: float
    polybus_publish: float
    backend_publish: float
    raw_consume: float
    polybus_consume: float
    backend_consume: float

    @property
    def publish_ratio(self) -> float:
        """polybus publish throughput over raw redis-py's."""
        return self.polybus_publish / self.raw_publish

    @property
    def consume_ratio(self) -> float:
        """polybus consume throughput over raw redis-py's."""
        return self.polybus_consume / self.raw_consume

    def report(self) -> str:
        """A small table of the results."""
        return "\n".join(
            [
                f"{self.count} messages per run",
                f"{'':10}{'raw redis-py':>16}{'polybus':>16}{'ratio':>8}",
                f"{'publish':10}{self.raw_publish:>14,.0f}/s"
                f"{self.polybus_publish:>14,.0f}/s{self.publish_ratio:>8.2f}",
                f"{'batch':10}{self.raw_publish:>14,.0f}/s"
                f"{self.backend_publish:>14,.0f}/s"
                f"{self.backend_publish / self.raw_publish:>8.2f}"
                "  (RedisBackend.publish, no bus)",
                f"{'consume':10}{self.raw_consume:>14,.0f}/s"
                f"{self.polybus_consume:>14,.0f}/s{self.consume_ratio:>8.2f}",
                f"{'stream':10}{self.raw_consume:>14,.0f}/s"
                f"{self.backend_consume:>14,.0f}/s"
                f"{self.backend_consume / self.raw_consume:>8.2f}"
                "  (RedisBackend stream, no dispatch)",
            ]
        )


async def run_benchmark(
    url: str = "redis://127.0.0.1:6379/0",
    count: int = 20_000,
    batch: int = 100,
    value_bytes: int = 100,
    rounds: int = 3,
) -> BenchResult:
    """Measure both sides against the server at ``url``; clean up afterwards.

    :param url: the Redis server.
    :param count: messages per measurement.
    :param batch: records per pipeline (raw) and publishes in flight (polybus).
    :param value_bytes: size of each message's value.
    :param rounds: interleaved rounds; the best rate of each side counts.
    """
    prefix = f"polybus-bench-{uuid.uuid4().hex[:8]}:"
    value = b"x" * value_bytes
    envelope = EventMessage("bench", value).to_bytes()
    client = Redis.from_url(url)

    best = [0.0] * 6
    try:
        for round_ in range(rounds):
            stream = f"{prefix}raw{round_}"
            rates = (
                await _raw_publish(client, stream, envelope, count, batch),
                *await _polybus(url, f"{prefix}{round_}:", value, count, batch),
                await _raw_consume(client, stream, count, batch),
            )
            (
                raw_publish,
                publish,
                batch_publish,
                consume,
                stream_consume,
                raw_consume,
            ) = rates
            measured = [
                raw_publish,
                publish,
                batch_publish,
                raw_consume,
                consume,
                stream_consume,
            ]
            best = [max(b, m) for b, m in zip(best, measured, strict=True)]
            await client.delete(stream)
    finally:
        keys = [k async for k in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    return BenchResult(count, *best)


async def _raw_publish(
    client: Redis, stream: str, envelope: bytes, count: int, batch: int
) -> float:
    started = time.perf_counter()

    for offset in range(0, count, batch):
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(min(batch, count - offset)):
                pipe.xadd(stream, {"d": envelope})
            await pipe.execute()

    return count / (time.perf_counter() - started)


async def _raw_consume(client: Redis, stream: str, count: int, batch: int) -> float:
    await client.xgroup_create(stream, "bench", id="0")
    started = time.perf_counter()
    seen = 0

    while seen < count:
        reply: Any = await client.xreadgroup(
            "bench", "raw", {stream: ">"}, count=batch, block=1000
        )
        entries = reply[0][1] if reply else []
        if entries:
            await client.xack(stream, "bench", *(entry_id for entry_id, _ in entries))
        seen += len(entries)

    return count / (time.perf_counter() - started)


async def _polybus(
    url: str, prefix: str, value: bytes, count: int, batch: int
) -> tuple[float, float, float, float]:
    settings = RedisSettings(url=url, key_prefix=prefix)
    core = PolybusSettings(
        default_partitions=1, prefetch=max(batch, 64), start_position="earliest"
    )

    async with EventBus(RedisBackend(settings), core) as bus:
        await bus.create_topic("bench", 1)
        started = time.perf_counter()
        for offset in range(0, count, batch):
            await asyncio.gather(
                *(
                    bus.publish_event("bench", EventMessage("bench", value))
                    for _ in range(min(batch, count - offset))
                )
            )
        publish = count / (time.perf_counter() - started)

        backend = bus.backend
        await backend.create_topic("batch", 1)
        envelope = EventMessage("batch", value).to_bytes()
        records = [
            OutboundRecord("batch", 0, None, envelope, uuid.uuid4())
            for _ in range(batch)
        ]
        started = time.perf_counter()
        for offset in range(0, count, batch):
            await backend.publish(records[: min(batch, count - offset)])
        backend_publish = count / (time.perf_counter() - started)

        done = asyncio.Event()
        handled = 0

        async def handle(message: EventMessage, context: dict[str, Any]) -> None:
            nonlocal handled
            handled += 1
            if handled == count:
                done.set()

        started = time.perf_counter()
        await bus.subscribe_to_topic("bench", handle, group_id="bench")
        await done.wait()
        consume = count / (time.perf_counter() - started)

        sink = _CountingSink(count)
        stream = backend.open_stream(
            "batch", "bench", sink, start="earliest", prefetch=core.prefetch
        )
        started = time.perf_counter()
        await stream.start()
        await sink.done.wait()
        backend_consume = count / (time.perf_counter() - started)
        await stream.stop_fetching()
        await stream.close()

    return publish, backend_publish, consume, backend_consume


class _CountingSink:
    """A sink that acks each delivery at once and counts them."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.done = asyncio.Event()

    async def deliver(self, delivery: Delivery) -> None:
        await delivery.ack()
        self.seen += 1
        if self.seen == self.count:
            self.done.set()

    async def revoke(self, partitions: Sequence[int]) -> None:
        """Nothing runs per partition here."""

    def assigned(self, partitions: Sequence[int]) -> None:
        """Nothing to record."""
