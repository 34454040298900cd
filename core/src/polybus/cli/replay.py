"""The replay job: real events through real consumer groups on any backend.

Each event of a corpus is published to a topic per event type
(``<prefix>.<event>``) with its partition key, and consumed by two consumer
groups with handlers doing real work:

- ``audit`` parses every payload and records it;
- ``repo-stats`` counts events per repository; an event that names no
  repository cannot be counted and is rejected with ``nack(requeue=False)``,
  so it lands in the topic's dead-letter queue.

The job waits until every group has settled every event, then reports per-topic
counts, throughput, failures and dead letters. A corpus without events (an empty
file, or only blank lines) is done at once: nothing is left to settle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from polybus.bus import EventBus
from polybus.cli.corpus import CorpusEvent
from polybus.errors import ConfigurationError
from polybus.message import EventMessage
from polybus.types import ContextValue

__all__ = ["GROUPS", "ReplayReport", "TopicReport", "run_replay"]

logger = logging.getLogger(__name__)

GROUPS = ("audit", "repo-stats")


@dataclass(slots=True)
class TopicReport:
    """What happened to one topic's events."""

    published: int = 0
    handled: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    dead_lettered: int = 0
    failed_attempts: int = 0


@dataclass(slots=True)
class ReplayReport:
    """The outcome of a replay."""

    backend: str
    events: int
    topics: dict[str, TopicReport]
    publish_seconds: float
    total_seconds: float
    completed: bool
    repositories: Counter[str]

    @property
    def publish_rate(self) -> float:
        """Events published per second."""
        return self.events / self.publish_seconds if self.publish_seconds else 0.0

    @property
    def settled(self) -> int:
        """Deliveries settled over every group."""
        return sum(
            sum(t.handled.values()) + sum(t.rejected.values())
            for t in self.topics.values()
        )

    @property
    def end_to_end_rate(self) -> float:
        """Deliveries settled per second, from first publish to last settle."""
        return self.settled / self.total_seconds if self.total_seconds else 0.0


class _Tally:
    """Counts what the handlers did, and tells when every group is done."""

    def __init__(self, expected: int, on_progress: Callable[[int], None]) -> None:
        self.expected = expected
        self.topics: defaultdict[str, TopicReport] = defaultdict(TopicReport)
        self.repositories: Counter[str] = Counter()
        self.done = asyncio.Event()
        self._seen: set[tuple[str, str]] = set()
        self._settled = 0
        self._on_progress = on_progress
        if expected <= 0:
            # Nothing will ever settle: a corpus without events is done at once.
            self.done.set()

    def settle(self, group: str, message: EventMessage, *, handled: bool) -> None:
        report = self.topics[message.topic]
        mark = (group, str(message.message_id))
        if mark in self._seen:
            report.duplicates += 1
            return
        self._seen.add(mark)

        if handled:
            report.handled[group] += 1
        else:
            report.rejected[group] += 1

        self._settled += 1
        self._on_progress(1)
        if self._settled >= self.expected:
            self.done.set()


async def run_replay(
    bus: EventBus,
    events: Sequence[CorpusEvent],
    *,
    topic_prefix: str = "replay.github",
    partitions: int = 3,
    timeout: float = 120.0,
    keep_topics: bool = False,
    on_progress: Callable[[int], None] = lambda _: None,
) -> ReplayReport:
    """Replay ``events`` on a started bus and report what happened.

    With no events it returns at once, completed, without creating a topic.

    :raises ConfigurationError: if ``timeout`` is not a finite number of seconds
        above 0.
    """
    if not math.isfinite(timeout) or timeout <= 0:
        raise ConfigurationError(
            f"timeout must be a finite number of seconds above 0, got {timeout}"
        )
    tally = _Tally(len(events) * len(GROUPS), on_progress)
    topics = sorted({f"{topic_prefix}.{e.event}" for e in events})

    await _prepare_topics(bus, topics, partitions)
    subscriptions = await _subscribe(bus, topics, tally)

    started = time.perf_counter()
    await _publish(bus, events, topic_prefix, tally)
    publish_seconds = time.perf_counter() - started

    try:
        await asyncio.wait_for(tally.done.wait(), timeout=timeout)
        completed = True
    except TimeoutError:
        completed = False
        logger.error(
            "Replay timed out after %.0fs with deliveries still unsettled", timeout
        )
    total_seconds = time.perf_counter() - started

    for subscription_id in subscriptions:
        await bus.unsubscribe_from_topic(subscription_id)

    for topic in topics:
        report = tally.topics[topic]
        metrics = await bus.get_topic_metrics(topic)
        report.dead_lettered = metrics.messages_dead_lettered
        report.failed_attempts = metrics.messages_failed

    if not keep_topics:
        await _delete_topics(bus, topics, bus.settings.dead_letter.topic_suffix)

    return ReplayReport(
        backend=bus.backend.name,
        events=len(events),
        topics={t: tally.topics[t] for t in topics},
        publish_seconds=publish_seconds,
        total_seconds=total_seconds,
        completed=completed,
        repositories=tally.repositories,
    )


async def _prepare_topics(bus: EventBus, topics: list[str], partitions: int) -> None:
    for topic in topics:
        await bus.create_topic(topic, partitions)


async def _subscribe(bus: EventBus, topics: list[str], tally: _Tally) -> list[str]:
    async def audit(message: EventMessage, context: dict[str, ContextValue]) -> None:
        json.loads(message.value)
        tally.settle("audit", message, handled=True)

    async def repo_stats(
        message: EventMessage, context: dict[str, ContextValue]
    ) -> None:
        payload = json.loads(message.value)
        repository = payload.get("repository")
        if not isinstance(repository, dict) or "full_name" not in repository:
            tally.settle("repo-stats", message, handled=False)
            await message.nack(requeue=False)
            return

        tally.repositories[repository["full_name"]] += 1
        tally.settle("repo-stats", message, handled=True)

    handlers = {"audit": audit, "repo-stats": repo_stats}
    subscribing = [
        bus.subscribe_to_topic(topic, handlers[group], group_id=f"replay-{group}")
        for topic in topics
        for group in GROUPS
    ]
    return list(await asyncio.gather(*subscribing))


async def _publish(
    bus: EventBus, events: Sequence[CorpusEvent], prefix: str, tally: _Tally
) -> None:
    for event in events:
        topic = f"{prefix}.{event.event}"
        message = EventMessage(
            topic=topic,
            value=event.body(),
            key=event.key.encode() if event.key is not None else None,
            headers={
                "event_type": event.event,
                "action": event.action,
                "content_type": "application/json",
            },
        )
        await bus.publish_event(topic, message, partition_key=event.key)
        tally.topics[topic].published += 1


async def _delete_topics(bus: EventBus, topics: list[str], suffix: str) -> None:
    for topic in topics:
        await bus.delete_topic(topic)
        await bus.delete_topic(f"{topic}{suffix}")
