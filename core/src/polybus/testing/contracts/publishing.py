"""Batch, compressed and retried publishing, and the dead-letter life cycle."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import get_args

from polybus.codecs import CODEC_HEADER
from polybus.dlq import HEADER_PREFIX, DeadLetterQueue
from polybus.message import EventMessage
from polybus.publisher import EventPublisher
from polybus.settings import RetrySettings
from polybus.testing.checks import check_delivery
from polybus.testing.harness import Collector, Harness
from polybus.types import ContextValue, LiteralCompressionType

__all__ = [
    "batch_counts_match_arrivals",
    "dead_letter_life_cycle",
    "every_compression_round_trips",
    "publish_retry_rides_out_a_restart",
    "publish_each",
    "publish_retry_rides_out_an_outage",
]

logger = logging.getLogger(__name__)


def _batch(topic: str, count: int, stem: str) -> list[EventMessage]:
    return [
        EventMessage(
            topic=topic,
            value=f"{stem}-{index} ".encode() * 40,
            key=b"k%d" % (index % 7),
            headers={"seq": index, "stem": stem},
        )
        for index in range(count)
    ]


async def batch_counts_match_arrivals(h: Harness) -> None:
    """``publish_batch`` reports every message the broker took, and all arrive."""
    bus = await h.bus()
    topic = await h.topic(bus, 3)
    group = Collector("group")
    await bus.subscribe_to_topic(topic, group.handler(), group_id=h.name("g"))
    batch = _batch(topic, 60, "batch")

    result = await EventPublisher(bus).publish_batch(topic, list(batch))

    assert (result.success_count, result.failure_count) == (60, 0), (
        f"batch result: {result.success_count} sent, {result.failure_count} "
        f"failed: {result.failures}"
    )
    await h.wait_handled(group, batch)
    await h.fence(bus, topic, [group])
    check_delivery(
        batch, group.handled, label="group", key_order=h.capabilities.partition_order
    )


async def every_compression_round_trips(h: Harness) -> None:
    """Values compressed with each codec reach handlers as they were sent."""
    bus = await h.bus()
    topic = await h.topic(bus, 2)
    group = Collector("group")
    await bus.subscribe_to_topic(topic, group.handler(), group_id=h.name("g"))
    publisher = EventPublisher(bus)

    sent: list[EventMessage] = []
    for codec in get_args(LiteralCompressionType):
        batch = _batch(topic, 5, codec)
        result = await publisher.publish_batch(topic, list(batch), compression=codec)
        assert result.success, f"{codec}: {result.failures}"
        assert result.compression == codec
        sent += batch

    await h.wait_handled(group, sent)
    await h.fence(bus, topic, [group])
    check_delivery(
        sent, group.handled, label="group", key_order=h.capabilities.partition_order
    )
    leaked = [m.message_id for m in group.handled if CODEC_HEADER in m.headers]
    assert not leaked, f"handlers saw the codec header on {leaked}"
    metrics = await publisher.get_publisher_metrics()
    assert metrics.compression_ratio > 1.0, (
        f"compression ratio {metrics.compression_ratio}: nothing was compressed"
    )


async def publish_retry_rides_out_a_restart(h: Harness) -> None:
    """``publish_with_retry`` succeeds while the broker restarts under it."""
    h.require("persistent")
    if h.restart_server is None:
        import pytest

        pytest.skip("no polybus_restart_server fixture: cannot restart the broker")

    bus = await h.bus()
    topic = await h.topic(bus, 2)
    publisher = EventPublisher(bus)
    batch = _batch(topic, 30, "retry")

    async def restart() -> None:
        if inspect.iscoroutinefunction(h.restart_server):
            await h.restart_server()
        else:
            assert h.restart_server is not None
            outcome = await asyncio.to_thread(h.restart_server)
            if inspect.isawaitable(outcome):
                await outcome

    async def publish_all() -> list[bool]:
        return [
            await publisher.publish_with_retry(topic, m, max_retries=30, backoff_ms=50)
            for m in batch
        ]

    restarting = asyncio.create_task(restart())
    outcomes = await publish_all()
    await restarting

    failed = [m.message_id for m, ok in zip(batch, outcomes, strict=True) if not ok]
    assert not failed, f"publish_with_retry gave up on {failed}"

    group = Collector("group")
    after = await h.bus(start_position="earliest")
    await after.subscribe_to_topic(topic, group.handler(), group_id=h.name("g"))
    await h.wait_handled(group, batch, timeout=60)


async def publish_retry_rides_out_an_outage(h: Harness) -> None:
    """``publish_with_retry`` succeeds once a cut-off broker is reachable again.

    The publishes start while the broker is cut off, so the client must
    notice, retry (or hold the publish) until it is restored, and then send
    every message; a group on another bus must get each of them.
    """
    outage = h.outage
    if outage is None:
        import pytest

        pytest.skip("no polybus_outage fixture: cannot cut the broker off")

    bus = await h.bus(factory=outage.factory)
    topic = await h.topic(bus, 2)
    publisher = EventPublisher(bus)
    batch = _batch(topic, 20, "outage")
    group = Collector("group")
    consuming = await h.bus(factory=outage.factory)
    await consuming.subscribe_to_topic(topic, group.handler(), group_id=h.name("g"))
    assert await publisher.publish_with_retry(topic, batch[0], max_retries=0), (
        "the first publish, before any outage, failed"
    )
    refused_before = outage.turned_away()

    await outage.cut()
    publishing = asyncio.create_task(publish_each(publisher, topic, batch[1:]))
    try:
        await h.wait_until(
            lambda: outage.turned_away() > refused_before or publishing.done(),
            lambda: "no client tried to reconnect while cut off",
        )
        assert not publishing.done() or publishing.exception() is not None, (
            "every publish succeeded while the broker was unreachable"
        )
    finally:
        await outage.restore()
    outcomes = await publishing

    failed = [m.message_id for m, ok in zip(batch[1:], outcomes, strict=True) if not ok]
    assert not failed, f"publish_with_retry gave up on {failed}"
    await h.wait_handled(group, batch, timeout=60)


async def publish_each(
    publisher: EventPublisher, topic: str, batch: list[EventMessage]
) -> list[bool]:
    """``publish_with_retry`` each message in turn, patiently; the outcomes."""
    return [
        await publisher.publish_with_retry(topic, m, max_retries=40, backoff_ms=50)
        for m in batch
    ]


async def dead_letter_life_cycle(h: Harness) -> None:
    """Fail, dead-letter, list, analyse, retry once, clear, from another process.

    Two processes retry one dead letter at the same moment: exactly one of
    them replays it.
    """
    h.require("browse")
    retry = RetrySettings(max_attempts=2, backoff_ms=2, backoff_max_ms=5, jitter_ms=1)
    bus = await h.bus(retry=retry)
    topic = await h.topic(bus, 1)
    group_id = h.name("g")
    group = Collector("group")

    async def fail_first_time(
        message: EventMessage, context: dict[str, ContextValue]
    ) -> None:
        if not message.headers.get(f"{HEADER_PREFIX}replay_count"):
            raise ValueError(f"order {message.headers.get('seq')} has no customer")

    await bus.subscribe_to_topic(
        topic, group.handler(behaviour=fail_first_time), group_id=group_id
    )
    published = await h.publish(bus, topic, 3)
    await h.wait_until(
        lambda: bus.counters.topics[topic].dead_lettered == 3,
        lambda: f"dead letters so far: {bus.counters.topics[topic].dead_lettered}",
    )

    dlq = DeadLetterQueue(await h.bus())
    letters = await dlq.get_dlq_messages(topic)
    assert sorted(x.original_message.message_id for x in letters) == sorted(
        m.message_id for m in published
    ), f"dead letters listed: {[x.original_message.message_id for x in letters]}"
    assert {(x.exception_type, x.consumer_group, x.attempt_count) for x in letters} == {
        ("ValueError", group_id, 2)
    }
    analysis = await dlq.analyze_failure_patterns(topic, 1)
    assert analysis.total_failures == 3
    assert analysis.by_exception_type == {"ValueError": 3}

    replayed = letters[0]
    elsewhere = DeadLetterQueue(await h.bus())
    outcomes = await asyncio.gather(
        dlq.retry_failed_message(replayed.dlq_message_id),
        elsewhere.retry_failed_message(replayed.dlq_message_id),
    )
    assert sorted(outcomes) == [False, True], (
        f"two processes retrying one dead letter at once: {outcomes}"
    )
    assert not await dlq.retry_failed_message(replayed.dlq_message_id), (
        "a dead letter was retried twice"
    )
    await h.wait_handled(group, [replayed.original_message])
    await h.fence(bus, topic, [group])
    handled = [
        m for m in group.handled if m.message_id == replayed.original_message.message_id
    ]
    assert len(handled) == 1, f"the retried dead letter was handled {len(handled)}x"

    assert await dlq.clear_dlq_messages(topic, older_than_hours=0) == 2
    assert await dlq.get_dlq_messages(topic) == []
    after = await dlq.analyze_failure_patterns(topic, 1)
    assert after.retry_outcomes == {"retried": 1, "cleared": 2}, after.retry_outcomes
