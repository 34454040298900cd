"""The event bus: the protocols' face over one backend and the dispatch layer."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import logging
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Self
from uuid import uuid4

from polybus.backend import Backend, OutboundRecord, StartPosition, Stream
from polybus.dispatch import Dispatcher, Handler
from polybus.dlq import DEAD_LETTER_HEADROOM, DeadLetterWriter
from polybus.errors import (
    BusClosedError,
    ConfigurationError,
    InvalidHandlerError,
    InvalidMessageError,
    MessageTooLargeError,
    PolybusError,
    SubscriptionNotFoundError,
    TopicNotFoundError,
)
from polybus.message import EventMessage, as_event_message
from polybus.metrics import BusCounters
from polybus.partitioner import partition_for_key
from polybus.protocols import ProtocolEventHandler, ProtocolEventMessage
from polybus.settings import PolybusSettings
from polybus.types import (
    EventBusConfiguration,
    EventBusHealth,
    EventBusMetrics,
    EventBusServiceMetrics,
    LiteralHealthStatus,
    SubscriptionInfo,
    TopicInfo,
    TopicMetrics,
)
from polybus.validation import validate_topic_name

__all__ = ["MAX_PARTITIONS", "EventBus"]

logger = logging.getLogger(__name__)

MAX_PARTITIONS: Final = 10_000
"""Most partitions a topic may have: beyond that a typo, not a design."""


@dataclasses.dataclass(slots=True)
class _Subscription:
    dispatcher: Dispatcher
    stream: Stream


class EventBus:
    """An event bus over one backend.

    Use it as an async context manager, or call :meth:`start` and :meth:`close`::

        async with create_event_bus() as bus:
            await bus.subscribe_to_topic("orders", handle, group_id="billing")
            await bus.publish_event("orders", EventMessage("orders", b"{}"))

    :param backend: a backend built by its plugin.
    :param settings: core settings; read from the environment if omitted.
    """

    def __init__(self, backend: Backend, settings: PolybusSettings | None = None):
        self.backend = backend
        self.settings = settings or PolybusSettings()
        self.counters = BusCounters()
        self.dead_letters = DeadLetterWriter(
            self._publish_dead_letter, self.settings.dead_letter
        )
        self._subscriptions: dict[str, _Subscription] = {}
        self._partition_counts: dict[str, tuple[int, float]] = {}
        self._metadata_locks: dict[str, asyncio.Lock] = {}
        self._round_robin = itertools.count()
        self._running = False
        self._closing = False
        self._started_at: datetime | None = None
        self._starts = 0
        self._configuration_updates = 0
        self._lock = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the backend. Calling it on a running bus does nothing."""
        async with self._lock:
            if self._running:
                return

            logger.debug("Starting event bus on backend %s", self.backend.name)
            await self.backend.connect()
            self._running = True
            self._started_at = datetime.now(UTC)
            self._starts += 1
            logger.debug("Event bus started on backend %s", self.backend.name)

    async def close(self) -> None:
        """Drain every subscription and disconnect. Idempotent."""
        async with self._lock:
            if not self._running:
                return

            logger.debug("Stopping event bus on backend %s", self.backend.name)
            self._closing = True
            for subscription_id in list(self._subscriptions):
                try:
                    await self._unsubscribe(subscription_id)
                except Exception:
                    logger.exception(
                        "Subscription %s did not stop cleanly; its unsettled "
                        "messages stay with the broker",
                        subscription_id,
                    )

            self._running = False
            self._closing = False
            self._partition_counts.clear()
            await self.backend.close()
            logger.debug("Event bus on backend %s stopped", self.backend.name)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        """Whether the bus is started."""
        return self._running

    def _check_running(self) -> None:
        if not self._running:
            raise BusClosedError(
                "the event bus is not running; use `async with` or call start()"
            )

    # -- publishing -----------------------------------------------------------

    async def publish_event(
        self,
        topic: str,
        message: ProtocolEventMessage,
        partition_key: str | None = None,
    ) -> None:
        """Publish one message; return once the backend has taken it.

        The partition comes from ``partition_key``, else the message key, with
        Kafka's murmur2 partitioner; messages without either go round robin.

        :raises InvalidTopicNameError: if the topic name is not valid.
        :raises MessageTooLargeError: if the envelope exceeds the maximum size.
        :raises TopicNotFoundError: if the topic does not exist and topics are
            not created automatically.
        """
        self._check_running()
        validate_topic_name(topic)
        record = await self.record_for(topic, message, partition_key)

        await self._send(record)

    async def _send(self, record: OutboundRecord) -> None:
        """Hand one record to the backend, count it, and raise what it refused."""
        started = time.perf_counter()
        try:
            (outcome,) = await self.backend.publish([record])
        except BaseException:
            self.counters.publish_failures += 1
            raise

        if outcome is not None:
            self.counters.publish_failures += 1
            if isinstance(outcome, TopicNotFoundError):
                self._partition_counts.pop(record.topic, None)
            raise outcome

        self.note_published(record.topic, len(record.payload))
        self.counters.publish_latency.add((time.perf_counter() - started) * 1000)

    def note_published(self, topic: str, size: int, count: int = 1) -> None:
        """Count ``count`` messages of ``size`` bytes in all as published."""
        counters = self.counters.topics[topic]
        counters.published += count
        counters.bytes_published += size

    async def record_for(
        self,
        topic: str,
        message: ProtocolEventMessage,
        partition_key: str | None,
        *,
        max_bytes: int | None = None,
    ) -> OutboundRecord:
        """The record for ``message`` on ``topic``: envelope, size check, partition.

        :param max_bytes: size limit; ``max_message_bytes`` unless given.
        :raises MessageTooLargeError: if the envelope exceeds the maximum size.
        :raises TopicNotFoundError: if the topic is missing and not auto-created.
        :raises InvalidMessageError: if ``partition_key`` is not a str.
        """
        if partition_key is not None and not isinstance(partition_key, str):
            raise InvalidMessageError("partition_key", partition_key, "a str or None")

        event, payload = self.envelope(topic, message, max_bytes=max_bytes)
        count = await self.partition_count(topic)
        return self.route(event, payload, partition_key, count)

    def envelope(
        self,
        topic: str,
        message: ProtocolEventMessage,
        *,
        max_bytes: int | None = None,
    ) -> tuple[EventMessage, bytes]:
        """``message`` as published to ``topic``, and its size-checked envelope.

        The first step of :meth:`record_for`, for callers that prepare many
        messages of one topic and look its partition count up once.

        :param max_bytes: size limit; ``max_message_bytes`` unless given.
        :raises MessageTooLargeError: if the envelope exceeds the maximum size.
        """
        event = as_event_message(message)
        if event.topic != topic:
            event = dataclasses.replace(event, topic=topic)

        payload = event.to_bytes()
        limit = max_bytes if max_bytes is not None else self.settings.max_message_bytes
        if len(payload) > limit:
            raise MessageTooLargeError(topic, len(payload), limit)
        return event, payload

    def route(
        self,
        event: EventMessage,
        payload: bytes,
        partition_key: str | None,
        partition_count: int,
    ) -> OutboundRecord:
        """The record of an envelope made by :meth:`envelope`, on its partition.

        The partition comes from ``partition_key``, else the message key, with
        Kafka's murmur2 partitioner; messages without either go round robin.
        """
        key = partition_key.encode() if partition_key is not None else event.key
        if key is not None:
            partition = partition_for_key(key, partition_count)
        else:
            partition = next(self._round_robin) % partition_count

        return OutboundRecord(
            event.topic, partition, event.key, payload, event.message_id
        )

    async def _publish_dead_letter(self, topic: str, message: EventMessage) -> None:
        # A dead letter is its original plus bounded failure headers, so it may
        # exceed the limit its original met by that much.
        limit = self.settings.max_message_bytes + DEAD_LETTER_HEADROOM
        record = await self.record_for(topic, message, None, max_bytes=limit)
        await self._send(record)

    async def partition_count(self, topic: str) -> int:
        """Partitions of ``topic``, cached for ``metadata_max_age_ms``.

        A missing topic is created when ``auto_create_topics`` is set.

        :raises TopicNotFoundError: if the topic is missing and not auto-created.
        """
        cached = self._partition_counts.get(topic)
        max_age = self.settings.metadata_max_age_ms / 1000
        if cached is not None and time.monotonic() - cached[1] < max_age:
            return cached[0]

        # One metadata lookup per topic at a time: a burst of publishes on a
        # cold cache waits for the first lookup instead of repeating it.
        lock = self._metadata_locks.setdefault(topic, asyncio.Lock())
        async with lock:
            cached = self._partition_counts.get(topic)
            if cached is not None and time.monotonic() - cached[1] < max_age:
                return cached[0]
            return await self._refresh_partition_count(topic)

    async def _refresh_partition_count(self, topic: str) -> int:
        info = await self.backend.describe_topic(topic)
        if info is None:
            if not self.settings.auto_create_topics:
                raise TopicNotFoundError(topic)
            await self.backend.create_topic(topic, self.settings.default_partitions)
            info = await self.backend.describe_topic(topic)
            if info is None:
                raise TopicNotFoundError(topic)

        self._partition_counts[topic] = (info.partition_count, time.monotonic())
        return info.partition_count

    # -- subscriptions --------------------------------------------------------

    async def subscribe_to_topic(
        self,
        topic: str,
        handler: ProtocolEventHandler | Handler,
        group_id: str | None = None,
    ) -> str:
        """Subscribe ``handler``; return once the subscription is live.

        With ``group_id`` the subscription joins a durable consumer group whose
        members share the topic's partitions; without it, it sees every message
        published while it is subscribed.
        """
        self._check_running()
        validate_topic_name(topic)
        if not _is_async_callable(handler):
            raise InvalidHandlerError(handler)
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise ConfigurationError(
                f"group_id must be a non-empty str or None, got {group_id!r}"
            )

        await self.partition_count(topic)
        subscription_id = str(uuid4())
        dispatcher = Dispatcher(
            subscription_id=subscription_id,
            topic=topic,
            group_id=group_id,
            handler=handler,
            retry=self.settings.retry,
            dead_letters=self.dead_letters,
            counters=self.counters,
            prefetch=self.settings.prefetch,
            drain_timeout=self.settings.drain_timeout_ms / 1000,
            backend_name=self.backend.name,
        )
        stream = self.backend.open_stream(
            topic,
            group_id,
            dispatcher,
            start=_start_position(self.settings.start_position),
            prefetch=self.settings.prefetch,
        )

        await stream.start()
        if self._closing or not self._running:
            await stream.stop_fetching()
            await dispatcher.drain()
            await stream.close()
            raise BusClosedError("the event bus closed while the subscription started")
        self._subscriptions[subscription_id] = _Subscription(dispatcher, stream)
        logger.debug(
            "Subscription %s live on topic %s (group %s)",
            subscription_id,
            topic,
            group_id,
        )
        return subscription_id

    async def unsubscribe_from_topic(self, subscription_id: str) -> None:
        """Stop a subscription after its running handlers finish.

        Messages fetched but not yet handled stay unacknowledged, so the group
        receives them again.
        """
        self._subscription(subscription_id)

        await self._unsubscribe(subscription_id)

    async def _unsubscribe(self, subscription_id: str) -> None:
        subscription = self._subscriptions.pop(subscription_id)
        await subscription.stream.stop_fetching()
        await subscription.dispatcher.drain()
        await subscription.stream.close()
        logger.debug("Subscription %s stopped", subscription_id)

    def _subscription(self, subscription_id: str) -> _Subscription:
        found = (
            self._subscriptions.get(subscription_id)
            if isinstance(subscription_id, str)
            else None
        )
        if found is None:
            raise SubscriptionNotFoundError(subscription_id)
        return found

    async def pause_subscription(self, subscription_id: str) -> bool:
        """Hold a subscription before its next message; nothing is lost.

        :returns: ``True`` once paused (also when it already was).
        :raises SubscriptionNotFoundError: if no such subscription is live.
        """
        subscription = self._subscription(subscription_id)

        subscription.dispatcher.pause()
        await subscription.stream.pause()
        return True

    async def resume_subscription(self, subscription_id: str) -> bool:
        """Continue a paused subscription where it stopped.

        :returns: ``True`` once running (also when it was not paused).
        :raises SubscriptionNotFoundError: if no such subscription is live.
        """
        subscription = self._subscription(subscription_id)

        await subscription.stream.resume()
        subscription.dispatcher.resume()
        return True

    async def get_subscription_info(
        self, subscription_id: str
    ) -> SubscriptionInfo | None:
        """A snapshot of a live subscription, or ``None``."""
        try:
            subscription = self._subscription(subscription_id)
        except SubscriptionNotFoundError:
            return None
        return subscription.dispatcher.info()

    def subscriptions(self) -> list[SubscriptionInfo]:
        """Snapshots of every live subscription."""
        return [s.dispatcher.info() for s in self._subscriptions.values()]

    # -- topics ---------------------------------------------------------------

    async def create_topic(self, topic: str, partition_count: int = 1) -> bool:
        """Create a topic; ``False`` if it already exists."""
        self._check_running()
        validate_topic_name(topic)
        if (
            not isinstance(partition_count, int)
            or isinstance(partition_count, bool)
            or not 1 <= partition_count <= MAX_PARTITIONS
        ):
            raise ConfigurationError(
                f"partition_count must be an int from 1 to {MAX_PARTITIONS}, got "
                f"{partition_count!r}"
            )

        created = await self.backend.create_topic(topic, partition_count)
        self._partition_counts.pop(topic, None)
        return created

    async def delete_topic(self, topic: str) -> bool:
        """Delete a topic, its messages and groups; ``False`` if it did not exist."""
        self._check_running()
        validate_topic_name(topic)

        deleted = await self.backend.delete_topic(topic)
        self._partition_counts.pop(topic, None)
        return deleted

    async def get_topic_info(self, topic: str) -> TopicInfo | None:
        """What the backend knows of a topic, or ``None`` if it does not exist."""
        self._check_running()
        validate_topic_name(topic)
        return await self.backend.describe_topic(topic)

    async def list_topics(self) -> list[str]:
        """Names of every topic on the backend."""
        self._check_running()
        return await self.backend.list_topics()

    # -- metrics --------------------------------------------------------------

    async def get_bus_metrics(self) -> EventBusMetrics:
        """Counters of this bus since it was made."""
        total = self.counters.total()
        topics = len(await self.backend.list_topics()) if self._running else 0
        uptime = (
            (datetime.now(UTC) - self._started_at).total_seconds()
            if self._running and self._started_at
            else 0.0
        )
        return EventBusMetrics(
            backend=self.backend.name,
            messages_published=total.published,
            bytes_published=total.bytes_published,
            publish_failures=self.counters.publish_failures,
            messages_consumed=total.consumed,
            bytes_consumed=total.bytes_consumed,
            messages_failed=total.failed,
            messages_retried=total.retried,
            messages_dead_lettered=total.dead_lettered,
            active_subscriptions=len(self._subscriptions),
            topics=topics,
            publish_latency_ms_avg=self.counters.publish_latency.mean,
            publish_latency_ms_p99=self.counters.publish_latency.percentile(0.99),
            uptime_seconds=uptime,
        )

    async def get_topic_metrics(self, topic: str) -> TopicMetrics:
        """Counters of one topic as seen by this bus."""
        validate_topic_name(topic)
        info = await self.backend.describe_topic(topic) if self._running else None
        counters = self.counters.topics.get(topic)
        subscriptions = [
            s.dispatcher
            for s in self._subscriptions.values()
            if s.dispatcher.topic == topic
        ]
        groups = sorted({d.group_id for d in subscriptions if d.group_id})
        return TopicMetrics(
            topic=topic,
            partition_count=info.partition_count if info else 0,
            messages_published=counters.published if counters else 0,
            bytes_published=counters.bytes_published if counters else 0,
            messages_consumed=counters.consumed if counters else 0,
            messages_failed=counters.failed if counters else 0,
            messages_dead_lettered=counters.dead_lettered if counters else 0,
            subscriptions=len(subscriptions),
            consumer_groups=tuple(groups),
            retained_messages=info.message_count if info else None,
        )

    # -- service --------------------------------------------------------------

    async def start_service(self) -> bool:
        """Start the bus; ``True`` once running."""
        await self.start()
        return True

    async def stop_service(self) -> bool:
        """Drain and stop the bus; ``True`` once stopped. It can start again."""
        await self.close()
        return True

    async def is_service_running(self) -> bool:
        """Whether the bus is started."""
        return self._running

    async def get_service_configuration(self) -> EventBusConfiguration:
        """The settings that can be read and updated at run time."""
        s = self.settings
        return EventBusConfiguration(
            backend=self.backend.name,
            max_message_bytes=s.max_message_bytes,
            auto_create_topics=s.auto_create_topics,
            default_partitions=s.default_partitions,
            max_attempts=s.retry.max_attempts,
            retry_backoff_ms=s.retry.backoff_ms,
            retry_backoff_max_ms=s.retry.backoff_max_ms,
            prefetch=s.prefetch,
            dead_letter_suffix=s.dead_letter.topic_suffix,
            drain_timeout_ms=s.drain_timeout_ms,
        )

    async def update_service_configuration(
        self, configuration: EventBusConfiguration
    ) -> bool:
        """Apply new settings to messages handled from now on.

        :raises ConfigurationError: if it names another backend, or a value is
            out of range; nothing is changed then.
        """
        if configuration.backend != self.backend.name:
            raise ConfigurationError(
                f"the backend of a bus cannot change (is {self.backend.name!r}, "
                f"asked for {configuration.backend!r}); make a new bus instead"
            )

        try:
            updated = self.settings.model_copy(
                update={
                    "max_message_bytes": configuration.max_message_bytes,
                    "auto_create_topics": configuration.auto_create_topics,
                    "default_partitions": configuration.default_partitions,
                    "prefetch": configuration.prefetch,
                    "drain_timeout_ms": configuration.drain_timeout_ms,
                    "retry": self.settings.retry.model_copy(
                        update={
                            "max_attempts": configuration.max_attempts,
                            "backoff_ms": configuration.retry_backoff_ms,
                            "backoff_max_ms": configuration.retry_backoff_max_ms,
                        }
                    ),
                    "dead_letter": self.settings.dead_letter.model_copy(
                        update={"topic_suffix": configuration.dead_letter_suffix}
                    ),
                }
            )
            validated = PolybusSettings.model_validate(updated.model_dump())
        except ValueError as exc:
            raise ConfigurationError(f"invalid configuration: {exc}") from exc

        self.settings = validated
        self.dead_letters = DeadLetterWriter(
            self._publish_dead_letter, validated.dead_letter
        )
        for subscription in self._subscriptions.values():
            subscription.dispatcher.retry = validated.retry
            subscription.dispatcher.drain_timeout = validated.drain_timeout_ms / 1000
        self._configuration_updates += 1
        return True

    async def get_service_health(self) -> EventBusHealth:
        """Ping the backend and report the service's health."""
        issues: list[str] = []
        latency: float | None = None
        reachable = False

        if self._running:
            started = time.perf_counter()
            try:
                await self.backend.ping()
            except (TimeoutError, PolybusError, OSError) as exc:
                issues.append(f"backend {self.backend.name} unreachable: {exc}")
            else:
                reachable = True
                latency = (time.perf_counter() - started) * 1000
        else:
            issues.append("service is not running")

        paused = sum(
            1 for s in self._subscriptions.values() if s.dispatcher.state == "paused"
        )
        if paused:
            issues.append(f"{paused} subscription(s) paused")

        status: LiteralHealthStatus
        if not self._running or not reachable:
            status = "unhealthy"
        elif issues:
            status = "degraded"
        else:
            status = "healthy"

        return EventBusHealth(
            status=status,
            backend=self.backend.name,
            running=self._running,
            backend_reachable=reachable,
            latency_ms=latency,
            active_subscriptions=len(self._subscriptions) - paused,
            paused_subscriptions=paused,
            issues=tuple(issues),
            checked_at=datetime.now(UTC),
        )

    async def get_service_metrics(self) -> EventBusServiceMetrics:
        """Service counters with the bus metrics."""
        bus = await self.get_bus_metrics()
        return EventBusServiceMetrics(
            running=self._running,
            started_at=self._started_at,
            uptime_seconds=bus.uptime_seconds,
            restarts=max(0, self._starts - 1),
            configuration_updates=self._configuration_updates,
            bus=bus,
        )


def _is_async_callable(handler: object) -> bool:
    """Whether calling ``handler`` gives a coroutine, as far as can be told."""
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - the method itself
    return call is not None and inspect.iscoroutinefunction(call)


def _start_position(value: str) -> StartPosition:
    return "earliest" if value == "earliest" else "latest"
