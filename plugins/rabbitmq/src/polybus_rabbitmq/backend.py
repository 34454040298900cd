"""The RabbitMQ transport: topics as exchanges, consumer groups as queues.

Features:

- A topic is a durable direct exchange; a message's routing key is its partition
  number. Topic metadata (partition count, creation time, groups) lives in a
  stream queue on the broker (see :mod:`polybus_rabbitmq.catalog`), so every
  process sees the same topics without the management plugin.
- A consumer group is one durable single-active-consumer queue per partition
  (classic or quorum): one member reads a partition at a time, in order, and the
  group keeps what is published while it has no member. Members hand partitions
  over when one reads more than its share.
- A broadcast subscription is an exclusive, auto-delete queue bound to every
  partition.
- A topic log: every message is also routed to a stream queue per topic (see
  :mod:`polybus_rabbitmq.topic_log`), kept under its retention settings whether
  or not a group reads the topic, and listed without being consumed by
  ``read_topic``, which the dead-letter queue handler reads.
- Publisher confirms on every publish; a batch is written in order in one go
  and its confirms awaited together (see :mod:`polybus_rabbitmq.confirms`);
  persistent messages; transient failures (a broker restart, a lost
  connection, a negative confirm) are retried until ``operation_timeout_ms``,
  and a publish racing :meth:`RabbitMQBackend.close` fails with
  :class:`~polybus.errors.BackendUnavailableError`.
- A robust connection: after a reconnect, channels, queues, bindings and
  consumers come back by themselves.
- Bounded prefetch; one channel per partition queue, so a channel error stays
  where it happened and closing a channel hands its unacknowledged messages back
  to the group in order.

What it cannot promise is in :data:`CAPABILITIES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Final, TypeVar

import aio_pika
import aiormq
import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from pamqp.commands import Basic
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from polybus.backend import (
    Backend,
    Capabilities,
    DeliverySink,
    OutboundRecord,
    StartPosition,
    StoredRecord,
    Stream,
)
from polybus.errors import (
    BackendUnavailableError,
    ConfigurationError,
    MessageTooLargeError,
    PolybusError,
    TopicNotFoundError,
    UnsupportedOperationError,
)
from polybus.types import ContextValue, TopicInfo
from polybus.validation import validate_topic_name
from polybus_rabbitmq.catalog import Catalog, CatalogEntry
from polybus_rabbitmq.confirms import Outgoing, publish_confirmed
from polybus_rabbitmq.errors import MessageReturnedError
from polybus_rabbitmq.settings import RabbitMQSettings
from polybus_rabbitmq.stream import RabbitMQStream
from polybus_rabbitmq.topic_log import TopicLog
from polybus_rabbitmq.topology import Topology

__all__ = [
    "CAPABILITIES",
    "CAPABILITIES_WITHOUT_TOPIC_LOG",
    "RabbitMQBackend",
    "is_transient",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SIZE_REFUSAL: Final = re.compile(r"larger than configured max size (?P<limit>\d+)")

CONTENT_TYPE: Final = "application/x-polybus-envelope"
"""Content type of every message this backend publishes."""

CAPABILITIES: Final = Capabilities(
    persistent=True,
    shared_across_processes=True,
    partition_order=True,
    redelivers_unacked=True,
    duplicates_after_crash=True,
    earliest_start=False,
    topic_message_count=False,
    max_message_bytes=128 * 1024 * 1024,
    browse=True,
    limitations={
        "earliest_start": "a group's queues are made on its first subscribe and "
        "receive only messages routed after their binding, so "
        "start_position=earliest behaves like latest; the topic log keeps the "
        "older messages, but copying them into the new queues cannot be ordered "
        "against messages routed meanwhile without losing or doubling some",
        "topic_message_count": "messages wait in one queue per group and "
        "partition, and RabbitMQ reports a stream's (the topic log's) message "
        "count as 0; TopicInfo.message_count is None",
        "max_message_bytes": "the broker refuses messages over its "
        "max_message_size (128 MiB by default in RabbitMQ 3.10)",
        "offset": "queues have no offsets; a delivery's offset is its delivery "
        "tag on the consumer's channel, meaningful only to that channel; "
        "read_topic's offsets are positions in the topic log, unrelated to it",
        "read_topic": "reads the whole topic log on each call and appends a small "
        "end marker to it; it lists what the log's retention (topic_log_max_age, "
        "topic_log_max_bytes) still keeps, and nothing published to a topic "
        "before its log existed",
        "partition sharing": "members share partitions through "
        "single-active-consumer queues: a member active on more than its share "
        "steps down from the excess (checked every rebalance_interval_ms), so "
        "sharing settles after a join instead of at once, and an idle partition "
        "stays with the member that read it last",
        "broadcast during an outage": "a broadcast queue is exclusive to its "
        "connection; after a reconnect it is declared again and does not see "
        "what was published while the connection was down",
        "publish order under failure": "records of one batch that must be "
        "retried (lost connection, negative confirm, confirm timeout) go again "
        "after the records that were confirmed, so they may reach the broker in "
        "another order; publish_event (one record at a time) keeps order",
    },
)

CAPABILITIES_WITHOUT_TOPIC_LOG: Final = dataclasses.replace(
    CAPABILITIES,
    browse=False,
    limitations={
        **CAPABILITIES.limitations,
        "browse": "topic_log is off: a topic keeps no messages of its own, so "
        "read_topic (and the dead-letter queue handler) cannot list them, and a "
        "topic with neither groups nor broadcasts drops what is published to it",
    },
)
"""What a backend with ``topic_log=False`` can promise."""


def is_transient(exc: BaseException) -> bool:
    """Whether an operation that failed with ``exc`` may succeed when retried."""
    if isinstance(
        exc,
        TopicNotFoundError
        | ConfigurationError
        | MessageReturnedError
        | aiormq.exceptions.PublishError,
    ):
        return False

    if isinstance(exc, aiormq.exceptions.ChannelClosed):
        # A plain ChannelClosed comes from the connection going away; its
        # subclasses (NOT_FOUND, PRECONDITION_FAILED, ...) are the broker
        # refusing the request, which a retry would not change.
        return type(exc) is aiormq.exceptions.ChannelClosed

    return isinstance(
        exc,
        ConnectionError
        | TimeoutError
        | aiormq.exceptions.AMQPConnectionError
        | aiormq.exceptions.ChannelInvalidStateError
        | aiormq.exceptions.DeliveryError,
    )


def _broker_size_limit(reply: str) -> int | None:
    """The limit named by a ``message size ... larger than ...`` refusal."""
    match = _SIZE_REFUSAL.search(reply)
    return int(match["limit"]) if match else None


def _cancelled_from_outside() -> bool:
    """Whether the running task itself is being cancelled.

    aiormq and aio-pika reject the futures of a closing connection with
    :class:`asyncio.CancelledError`; a task that awaits one sees that error
    although nobody cancelled it.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def _backoff(attempt: int) -> float:
    """Pause before publish attempt ``attempt + 1``: exponential, with jitter."""
    return min(2.0, 0.05 * 2.0 ** (attempt - 1)) + random.uniform(0.0, 0.1)


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    logger.warning(
        "RabbitMQ operation failed (attempt %d): %r; retrying",
        state.attempt_number,
        error,
    )


class RabbitMQBackend(Backend):
    """A connection to one RabbitMQ virtual host.

    :param settings: connection and naming options; read from
        ``POLYBUS_RABBITMQ__*`` if omitted.
    """

    name = "rabbitmq"
    capabilities = CAPABILITIES

    def __init__(self, settings: RabbitMQSettings | None = None) -> None:
        self.settings = settings or RabbitMQSettings()
        if not self.settings.topic_log:
            self.capabilities = CAPABILITIES_WITHOUT_TOPIC_LOG
        self.topology = Topology(self.settings.name_prefix, self.settings.queue_type)
        self.catalog = Catalog(self.topology.catalog, self._confirming_channel)
        self.topic_log = TopicLog(
            self.topology, self.settings, self._confirming_channel
        )
        self.streams: set[RabbitMQStream] = set()
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._exchanges: set[str] = set()
        self._logged: set[str] = set()
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._flights: set[asyncio.Future[None]] = set()

    # -- lifecycle ------------------------------------------------------------

    @property
    def connection(self) -> AbstractRobustConnection:
        """The robust connection.

        :raises BackendUnavailableError: if the backend is not connected.
        """
        if self._connection is None or self._connection.is_closed:
            raise BackendUnavailableError(
                "the RabbitMQ backend is not connected; call connect() first"
            )
        return self._connection

    async def connect(self) -> None:
        async with self._lock:
            if self._connection is not None and not self._connection.is_closed:
                return

            if self._closing.is_set():
                self._closing = asyncio.Event()

            where = self.settings.describe()
            logger.debug("Connecting to RabbitMQ at %s", where)
            parameters = self.settings.connection_parameters()
            try:
                connection = await aio_pika.connect_robust(
                    timeout=self.settings.connect_timeout_ms / 1000,
                    client_properties={"connection_name": f"polybus-{os.getpid()}"},
                    **parameters,
                )
            except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
                detail = str(exc).replace(parameters["password"], "***")
                raise BackendUnavailableError(
                    f"cannot connect to RabbitMQ at {where}: "
                    f"{type(exc).__name__}: {detail}"
                ) from None

            self._connection = connection
            try:
                self._publisher = await connection.channel(publisher_confirms=True)
                await self._retrying(self.catalog.declare)
            except BaseException:
                await connection.close()
                self._connection = None
                raise
            logger.debug("Connected to RabbitMQ at %s", where)

    async def close(self) -> None:
        """Close the connection.

        Publishes from then on fail with :class:`BackendUnavailableError`, and
        so do retries and waits for a reconnection in progress. Messages
        already written get up to ``confirm_timeout_ms`` for their confirms
        before the connection closes; those still unconfirmed then fail with
        that error too.
        """
        self._closing.set()
        async with self._lock:
            if self._connection is None:
                return

            if self._flights:
                logger.debug(
                    "Waiting for the confirms of %d publishes", len(self._flights)
                )
                await asyncio.wait(
                    set(self._flights),
                    timeout=self.settings.confirm_timeout_ms / 1000,
                )
            connection, self._connection = self._connection, None
            logger.debug("Closing the RabbitMQ connection")
            for stream in list(self.streams):
                await stream.close()
            self._publisher = None
            self._exchanges.clear()
            self._logged.clear()
            await connection.close()
            logger.debug("RabbitMQ connection closed")

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self.settings.confirm_timeout_ms / 1000):
                async with self._channel() as channel:
                    await channel.queue_declare(self.topology.catalog, passive=True)
        except (TimeoutError, aiormq.exceptions.AMQPError, RuntimeError) as exc:
            raise BackendUnavailableError(
                f"RabbitMQ at {self.settings.describe()} did not answer: {exc!r}"
            ) from exc

    @contextlib.asynccontextmanager
    async def _channel(
        self, *, confirms: bool = False
    ) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """A short-lived channel, closed on exit.

        Used for declarations that may fail: a refused declaration closes its
        channel, and this one is thrown away instead of being restored.
        """
        transport = self.connection.transport
        if transport is None:
            raise BackendUnavailableError("the connection to RabbitMQ is reconnecting")

        channel = await transport.connection.channel(publisher_confirms=confirms)
        try:
            yield channel
        finally:
            if not channel.is_closed:
                with contextlib.suppress(aiormq.exceptions.AMQPError, RuntimeError):
                    await channel.close()

    def _confirming_channel(
        self,
    ) -> contextlib.AbstractAsyncContextManager[aiormq.abc.AbstractChannel]:
        return self._channel(confirms=True)

    async def _retrying(
        self, operation: Callable[..., Awaitable[T]], *args: object
    ) -> T:
        """Run ``operation``, retrying transient failures until the deadline.

        Nothing is retried once the backend is closing or closed, and a pause
        between attempts ends as soon as :meth:`close` is called.
        """
        retrying = AsyncRetrying(
            stop=stop_after_delay(self.settings.operation_timeout_ms / 1000),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.1),
            retry=retry_if_exception(self._worth_retrying),
            before_sleep=_log_retry,
            sleep=self._pause,
            reraise=True,
        )
        result: T = await retrying(operation, *args)
        return result

    def _worth_retrying(self, exc: BaseException) -> bool:
        return not self._is_closed() and is_transient(exc)

    def _is_closed(self) -> bool:
        """Whether the backend is closing, closed or was never connected."""
        return self._closing.is_set() or self._connection is None

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` between attempts, or until :meth:`close` is called."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    # -- topics ---------------------------------------------------------------

    async def create_topic(
        self,
        topic: str,
        partition_count: int,
        config: Mapping[str, ContextValue] | None = None,
    ) -> bool:
        validate_topic_name(topic)
        if partition_count < 1:
            raise ConfigurationError(
                f"partition_count must be a positive int, got {partition_count!r}"
            )

        await self._retrying(self._declare_exchange, topic)
        record_id = os.urandom(16).hex()
        created = await self._retrying(
            self.catalog.create, topic, partition_count, record_id
        )
        # Declared even when this process knew the log: it may have been deleted
        # with the topic by another one since.
        self._logged.discard(topic)
        await self._ensure_topic_log(topic)
        if created:
            logger.debug("Created topic %s with %d partitions", topic, partition_count)
        return created

    async def _declare_exchange(self, topic: str) -> None:
        async with self._channel() as channel:
            await channel.exchange_declare(
                self.topology.exchange(topic), exchange_type="direct", durable=True
            )
        self._exchanges.add(topic)

    async def delete_topic(self, topic: str) -> bool:
        validate_topic_name(topic)
        await self._retrying(self.catalog.sync)
        entry = self.catalog.topics.get(topic)
        if entry is None:
            return False

        for stream in [s for s in self.streams if s.topic == topic]:
            await stream.close()
        await self._retrying(self._delete_broker_objects, topic, entry)
        await self._retrying(self.catalog.delete, topic)
        self._exchanges.discard(topic)
        self._logged.discard(topic)
        logger.debug("Deleted topic %s", topic)
        return True

    async def _delete_broker_objects(self, topic: str, entry: CatalogEntry) -> None:
        async with self._channel() as channel:
            for group_id in sorted(entry.groups):
                for partition in range(entry.partition_count):
                    await channel.queue_delete(
                        self.topology.group_queue(topic, group_id, partition)
                    )
                await channel.queue_delete(self.topology.members_queue(topic, group_id))
            # The exchange before the log: a process declaring the log at the
            # same time then fails to bind it and deletes it again.
            await channel.exchange_delete(self.topology.exchange(topic))
            await channel.queue_delete(self.topology.log_queue(topic))

    async def describe_topic(self, topic: str) -> TopicInfo | None:
        validate_topic_name(topic)
        await self._retrying(self.catalog.sync)
        entry = self.catalog.topics.get(topic)
        if entry is None:
            return None

        return TopicInfo(
            name=topic,
            partition_count=entry.partition_count,
            created_at=entry.created_at,
            message_count=None,
            consumer_groups=tuple(sorted(entry.groups)),
            config={
                "exchange": self.topology.exchange(topic),
                "queue_type": self.settings.queue_type,
                "topic_log": (
                    self.topology.log_queue(topic) if self.settings.topic_log else None
                ),
            },
        )

    async def list_topics(self) -> list[str]:
        await self._retrying(self.catalog.sync)
        return sorted(self.catalog.topics)

    async def read_topic(
        self, topic: str, *, limit: int | None = None
    ) -> list[StoredRecord]:
        """Records of the topic log, partition by partition, oldest first.

        :raises TopicNotFoundError: if the topic does not exist.
        :raises UnsupportedOperationError: if ``topic_log`` is off.
        """
        validate_topic_name(topic)
        if not self.settings.topic_log:
            raise UnsupportedOperationError(
                self.name, "read_topic", "topic_log is off, so topics keep no log"
            )

        await self._retrying(self.catalog.sync)
        entry = self.catalog.topics.get(topic)
        if entry is None:
            raise TopicNotFoundError(topic)
        if limit is not None and limit <= 0:
            return []

        try:
            return await self._read_log(topic, entry.partition_count, limit)
        except TopicNotFoundError:
            # The log this process declared may be gone while the topic is not
            # (recreated elsewhere with topic_log off): declare it once more.
            self._logged.discard(topic)
            return await self._read_log(topic, entry.partition_count, limit)

    async def _read_log(
        self, topic: str, partition_count: int, limit: int | None
    ) -> list[StoredRecord]:
        if not await self._ensure_topic_log(topic):
            raise TopicNotFoundError(topic)

        return await self._retrying(self.topic_log.read, topic, partition_count, limit)

    async def _ensure_topic_log(self, topic: str) -> bool:
        """Declare the log of an existing topic once per connection.

        Topics made before the log existed (or while ``topic_log`` was off) get
        theirs here, on their first publish or read.

        :returns: ``False`` if the topic's exchange turned out to be gone.
        """
        if not self.settings.topic_log or topic in self._logged:
            return True

        entry = self.catalog.topics.get(topic)
        if entry is None:
            await self._retrying(self.catalog.sync)
            entry = self.catalog.topics.get(topic)
        if entry is None:
            # An exchange the catalog does not know (its catalog was deleted):
            # without a partition count there is nothing to bind.
            logger.warning(
                "Topic %s has an exchange but no catalog record; it gets no topic log",
                topic,
            )
            self._logged.add(topic)
            return True

        try:
            await self._retrying(self.topic_log.declare, topic, entry.partition_count)
        except TopicNotFoundError:
            return False
        self._logged.add(topic)
        return True

    async def add_group(self, topic: str, group_id: str) -> None:
        """Record that ``group_id`` reads ``topic`` (its queues go with the topic)."""
        await self._retrying(self.catalog.add_group, topic, group_id)

    async def member_count(self, topic: str, group_id: str) -> int:
        """Members of a group now, from its presence queue's consumer count."""
        async with self._channel() as channel:
            declared = await channel.queue_declare(
                self.topology.members_queue(topic, group_id), passive=True
            )
        return int(declared.consumer_count or 0)

    # -- publishing -----------------------------------------------------------

    async def publish(
        self, records: Sequence[OutboundRecord]
    ) -> list[BaseException | None]:
        """Send ``records`` with all their publisher confirms in flight together.

        The records go out in order, in a few large writes on the publishing
        channel, and their confirms are then awaited at once (see
        :mod:`polybus_rabbitmq.confirms`). Records that fail transiently (lost
        connection, negative confirm, no confirm for ``confirm_timeout_ms``) go
        again, together and in their order, until ``operation_timeout_ms``.

        :raises BackendUnavailableError: if the backend is closed, or closes
            before anything was sent.
        """
        if not records:
            return []

        try:
            return await self._publish(records)
        except asyncio.CancelledError as exc:
            if _cancelled_from_outside():
                raise
            # Closing a connection rejects what waits on it with
            # CancelledError; the caller was not cancelled.
            raise BackendUnavailableError(
                "the connection to RabbitMQ closed before anything was published"
            ) from exc

    async def _publish(
        self, records: Sequence[OutboundRecord]
    ) -> list[BaseException | None]:
        if self._is_closed():
            raise BackendUnavailableError(
                "the RabbitMQ backend is not connected (or was closed); call "
                "connect() first"
            )

        try:
            missing = await self._missing_topics({record.topic for record in records})
        except Exception as exc:
            if self._is_closed() and not isinstance(exc, PolybusError):
                raise BackendUnavailableError(
                    "the RabbitMQ backend was closed before anything was published"
                ) from exc
            raise

        limit = self.settings.max_message_bytes
        outcomes: list[BaseException | None] = [None] * len(records)
        pending: list[int] = []
        for index, record in enumerate(records):
            if record.topic in missing or len(record.payload) > limit:
                outcomes[index] = self._refusal(record)
            else:
                pending.append(index)
        if pending:
            await self._send(records, pending, outcomes)
        return outcomes

    def _refusal(self, record: OutboundRecord) -> BaseException:
        """Why ``record`` was not sent: too large, or its topic is missing."""
        limit = self.settings.max_message_bytes
        if len(record.payload) > limit:
            return MessageTooLargeError(record.topic, len(record.payload), limit)
        return TopicNotFoundError(record.topic)

    async def _missing_topics(self, topics: set[str]) -> set[str]:
        """Topics of ``topics`` whose exchange does not exist.

        The others get their topic log, if they have none yet.
        """
        missing: set[str] = set()

        for topic in topics - self._exchanges:
            if await self._retrying(self._exchange_exists, topic):
                self._exchanges.add(topic)
            else:
                missing.add(topic)

        for topic in topics - missing - self._logged:
            if not await self._ensure_topic_log(topic):
                missing.add(topic)
        return missing

    async def _exchange_exists(self, topic: str) -> bool:
        try:
            async with self._channel() as channel:
                await channel.exchange_declare(
                    self.topology.exchange(topic), passive=True
                )
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        return True

    async def _send(
        self,
        records: Sequence[OutboundRecord],
        pending: list[int],
        outcomes: list[BaseException | None],
    ) -> None:
        """Publish ``records[i]`` for each ``i`` of ``pending`` into ``outcomes``.

        Each attempt sends what is left in its order; what fails transiently is
        tried again after a pause, until the operation deadline or a close.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.operation_timeout_ms / 1000
        attempt = 1
        while True:
            results = await self._attempt([records[i] for i in pending], deadline)
            failed: list[int] = []
            for index, result in zip(pending, results, strict=True):
                outcome = self._interpret(records[index], result)
                outcomes[index] = outcome
                if outcome is not None and is_transient(outcome):
                    failed.append(index)
            if not failed:
                return

            pause = _backoff(attempt)
            if self._is_closed() or loop.time() + pause >= deadline:
                break
            logger.warning(
                "Publish of %d of %d records failed (attempt %d): %r; retrying",
                len(failed),
                len(pending),
                attempt,
                outcomes[failed[0]],
            )
            await self._pause(pause)
            pending = failed
            attempt += 1

        for index in failed:
            record = records[index]
            logger.debug(
                "Publish of message %s to %s failed: %r",
                record.message_id,
                record.topic,
                outcomes[index],
            )
            if self._is_closed():
                closed = BackendUnavailableError(
                    f"the RabbitMQ backend was closed before the broker confirmed "
                    f"message {record.message_id} to topic {record.topic!r}; it "
                    "may or may not have been stored"
                )
                closed.__cause__ = outcomes[index]
                outcomes[index] = closed

    async def _attempt(
        self, records: Sequence[OutboundRecord], deadline: float
    ) -> list[BaseException | None]:
        """One try at ``records``: each one's confirm or error, in order."""
        publisher = self._publisher
        if publisher is None or self._is_closed():
            closed = BackendUnavailableError("the RabbitMQ backend is closed")
            return [closed] * len(records)

        # close() lets the confirms of a write in progress come in first.
        flight: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flights.add(flight)
        try:
            channel = await self._publishing_channel(publisher, deadline)
            return await publish_confirmed(
                channel,
                [self._outgoing(record) for record in records],
                stall_timeout=self.settings.confirm_timeout_ms / 1000,
            )
        except asyncio.CancelledError as exc:
            if _cancelled_from_outside():
                raise
            lost = BackendUnavailableError("the connection to RabbitMQ closed")
            return [_caused(lost, exc)] * len(records)
        except Exception as exc:
            if type(exc) is Exception:
                # What aiormq rejects futures with when closed without a reason.
                lost = BackendUnavailableError("the connection to RabbitMQ closed")
                return [_caused(lost, exc)] * len(records)
            return [exc] * len(records)
        finally:
            self._flights.discard(flight)
            flight.set_result(None)

    async def _publishing_channel(
        self, publisher: AbstractRobustChannel, deadline: float
    ) -> aiormq.abc.AbstractChannel:
        """The open channel under ``publisher``, once it is back if it is not.

        :raises BackendUnavailableError: if :meth:`close` is called meanwhile.
        :raises TimeoutError: if it is not back by ``deadline``.
        """
        connection = self._connection
        if connection is not None and connection.connected.is_set():
            # Connected: this does not wait.
            with contextlib.suppress(aiormq.exceptions.ChannelInvalidStateError):
                channel = await publisher.get_underlay_channel()
                if not channel.is_closed:
                    return channel

        loop = asyncio.get_running_loop()
        reopened = asyncio.ensure_future(publisher.ready())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait(
                (reopened, closing),
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            closing.cancel()
            reopened.cancel()
        if reopened.done() and not reopened.cancelled():
            reopened.result()
            return await publisher.get_underlay_channel()
        if self._is_closed():
            raise BackendUnavailableError(
                "the RabbitMQ backend was closed while waiting for a reconnection"
            )
        raise TimeoutError("the connection to RabbitMQ did not come back in time")

    def _outgoing(self, record: OutboundRecord) -> Outgoing:
        return Outgoing(
            exchange=self.topology.exchange(record.topic),
            routing_key=str(record.partition),
            body=record.payload,
            properties=Basic.Properties(
                delivery_mode=2,
                content_type=CONTENT_TYPE,
                message_id=record.message_id.hex,
            ),
        )

    def _interpret(
        self, record: OutboundRecord, result: BaseException | None
    ) -> BaseException | None:
        """The outcome of ``record`` in polybus's terms.

        A publish the broker refuses closes the whole channel, so every record
        in flight on it fails with the same error; only the record it names is
        refused, the others go again.
        """
        if result is None:
            return None

        text = str(result)
        if isinstance(result, aiormq.exceptions.ChannelNotFoundEntity):
            if f"'{self.topology.exchange(record.topic)}'" in text:
                self._exchanges.discard(record.topic)
                self._logged.discard(record.topic)
                return _caused(TopicNotFoundError(record.topic), result)
            return _caused(
                BackendUnavailableError(
                    "the publishing channel was closed by another record"
                ),
                result,
            )
        if isinstance(result, aiormq.exceptions.ChannelPreconditionFailed):
            # The broker's max_message_size may be below ours.
            limit = _broker_size_limit(text)
            if limit is not None and f" {len(record.payload)} " in text:
                return _caused(
                    MessageTooLargeError(record.topic, len(record.payload), limit),
                    result,
                )
            return _caused(
                BackendUnavailableError(
                    "the publishing channel was closed by another record"
                ),
                result,
            )
        return result

    # -- streams --------------------------------------------------------------

    def open_stream(
        self,
        topic: str,
        group_id: str | None,
        sink: DeliverySink,
        *,
        start: StartPosition,
        prefetch: int,
    ) -> Stream:
        if start == "earliest":
            logger.debug(
                "Group %s on topic %s asked for earliest; RabbitMQ starts new "
                "groups at the binding (see CAPABILITIES)",
                group_id,
                topic,
            )
        return RabbitMQStream(self, topic, group_id, sink)
