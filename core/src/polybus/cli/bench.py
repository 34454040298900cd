"""Throughput of the configured backend through the whole polybus stack.

Publish runs with several concurrent publishers while the consuming group is
paused, then again in batches through ``publish_batch``; consumption is then
timed from resume until the group has handled every message of both rounds.
Per-backend benchmarks that set polybus against the raw client live in each
plugin's ``bench`` folder.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass
from uuid import uuid4

from polybus.bus import EventBus
from polybus.errors import BackendUnavailableError, ConfigurationError
from polybus.message import EventMessage
from polybus.publisher import EventPublisher
from polybus.types import ContextValue

__all__ = ["BenchResult", "run_bench"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BenchResult:
    """Measured throughput."""

    backend: str
    messages: int
    payload_bytes: int
    partitions: int
    publishers: int
    publish_seconds: float
    batch_publish_seconds: float
    batch_size: int
    consume_seconds: float

    @property
    def publish_rate(self) -> float:
        """Messages published per second."""
        return self.messages / self.publish_seconds

    @property
    def batch_publish_rate(self) -> float:
        """Messages published per second through ``publish_batch``."""
        return self.messages / self.batch_publish_seconds

    @property
    def consume_rate(self) -> float:
        """Messages handled per second."""
        return self.messages / self.consume_seconds


async def run_bench(
    bus: EventBus,
    *,
    messages: int = 10_000,
    payload_bytes: int = 256,
    partitions: int = 4,
    publishers: int = 8,
    batch_size: int = 500,
    timeout: float = 300.0,
) -> BenchResult:
    """Publish and consume ``messages`` on a started bus and time both.

    The messages are published twice, one by one with ``publish_event`` and in
    batches with ``publish_batch``, and the group consumes both rounds.

    :raises ConfigurationError: if a count is below 1, the payload size is
        negative, or ``timeout`` is not a finite number of seconds above 0.
    :raises BackendUnavailableError: if the group has not handled every message
        within ``timeout``.
    """
    _check_counts(
        messages=messages,
        partitions=partitions,
        publishers=publishers,
        batch_size=batch_size,
    )
    if payload_bytes < 0:
        raise ConfigurationError(
            f"payload_bytes must not be negative, got {payload_bytes}"
        )
    if not math.isfinite(timeout) or timeout <= 0:
        raise ConfigurationError(
            f"timeout must be a finite number of seconds above 0, got {timeout}"
        )

    topic = f"polybus-bench-{uuid4().hex[:12]}"
    await bus.create_topic(topic, partitions)

    handled = 0
    finished = asyncio.Event()

    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        nonlocal handled
        handled += 1
        if handled >= 2 * messages:
            finished.set()

    subscription = await bus.subscribe_to_topic(topic, handler, group_id="bench")
    await bus.pause_subscription(subscription)

    try:
        value = os.urandom(payload_bytes)
        publish_seconds = await _publish(bus, topic, messages, value, publishers)
        batch_seconds = await _publish_batches(bus, topic, messages, value, batch_size)

        started = time.perf_counter()
        await bus.resume_subscription(subscription)
        try:
            await asyncio.wait_for(finished.wait(), timeout=timeout)
        except TimeoutError:
            raise BackendUnavailableError(
                f"the bench group handled {handled} of {2 * messages} messages "
                f"within {timeout:g}s"
            ) from None
        consume_seconds = time.perf_counter() - started
    finally:
        await bus.unsubscribe_from_topic(subscription)
        await bus.delete_topic(topic)

    return BenchResult(
        backend=bus.backend.name,
        messages=messages,
        payload_bytes=payload_bytes,
        partitions=partitions,
        publishers=publishers,
        publish_seconds=publish_seconds,
        batch_publish_seconds=batch_seconds,
        batch_size=batch_size,
        consume_seconds=consume_seconds / 2,
    )


def _check_counts(**counts: int) -> None:
    for name, count in counts.items():
        if count < 1:
            raise ConfigurationError(f"{name} must be at least 1, got {count}")


async def _publish(
    bus: EventBus, topic: str, messages: int, value: bytes, publishers: int
) -> float:
    async def publisher(index: int) -> None:
        for number in range(index, messages, publishers):
            message = EventMessage(topic, value, key=b"k%d" % (number % 64))
            await bus.publish_event(topic, message)

    started = time.perf_counter()
    await asyncio.gather(*(publisher(i) for i in range(publishers)))
    return time.perf_counter() - started


async def _publish_batches(
    bus: EventBus, topic: str, messages: int, value: bytes, batch_size: int
) -> float:
    publisher = EventPublisher(bus)
    batches = [
        [
            EventMessage(topic, value, key=b"k%d" % (number % 64))
            for number in range(start, min(start + batch_size, messages))
        ]
        for start in range(0, messages, batch_size)
    ]

    started = time.perf_counter()
    for batch in batches:
        result = await publisher.publish_batch(topic, list(batch))
        if not result.success:
            raise BackendUnavailableError(
                f"{result.failure_count} messages of a batch were not taken: "
                f"{result.failures[0].error}"
            )
    return time.perf_counter() - started
