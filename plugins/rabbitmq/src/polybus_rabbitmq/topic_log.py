"""Each topic's retained log: a stream queue bound to every partition.

A group's queues hold only what is routed after their binding, and a classic
queue cannot be read without taking its messages away from its group. So each
topic also routes every message to a stream queue, ``<prefix><topic>:log``,
which keeps it under its retention settings whether or not a group reads the
topic, and which any number of readers replay from its start without consuming
it. :meth:`TopicLog.read` lists it for ``read_topic`` and so for the
dead-letter queue.

A stream gives no end-of-log mark, and RabbitMQ reports its message count as
0, so a read appends an end marker to the log itself (sent through the default
exchange, so it reaches no group) and reads up to it: everything confirmed
before the read started lies before the marker. Readers skip every marker.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import aiormq.abc
import aiormq.exceptions
from pamqp.commands import Basic

from polybus.backend import StoredRecord
from polybus.errors import BackendUnavailableError, TopicNotFoundError
from polybus_rabbitmq.settings import RabbitMQSettings
from polybus_rabbitmq.topology import Topology

__all__ = ["END_MARKER_TYPE", "TopicLog"]

logger = logging.getLogger(__name__)

ChannelFactory = Callable[[], AbstractAsyncContextManager[aiormq.abc.AbstractChannel]]

END_MARKER_TYPE: Final = "polybus.log-end"
"""AMQP ``type`` of the end markers a read appends to a topic log."""

_PREFETCH: Final = 500
_ACK_EVERY: Final = _PREFETCH // 4


def log_arguments(settings: RabbitMQSettings) -> dict[str, Any]:
    """Arguments of a topic log, from its retention settings."""
    arguments: dict[str, Any] = {"x-queue-type": "stream"}
    if settings.topic_log_max_bytes is not None:
        arguments["x-max-length-bytes"] = settings.topic_log_max_bytes
    if settings.topic_log_max_age is not None:
        arguments["x-max-age"] = settings.topic_log_max_age
    if settings.topic_log_segment_bytes is not None:
        arguments["x-stream-max-segment-size-bytes"] = settings.topic_log_segment_bytes
    return arguments


class TopicLog:
    """Declares, deletes and reads topic logs.

    :param topology: names of the broker objects.
    :param settings: retention of new logs, and how long a read may stall.
    :param channel: opens a channel with publisher confirms, closed on exit.
    """

    def __init__(
        self, topology: Topology, settings: RabbitMQSettings, channel: ChannelFactory
    ) -> None:
        self.topology = topology
        self.arguments = log_arguments(settings)
        self._stall_timeout = settings.confirm_timeout_ms / 1000
        self._channel = channel

    async def declare(self, topic: str, partition_count: int) -> None:
        """Make sure the log of ``topic`` exists and receives every partition.

        :raises TopicNotFoundError: if the topic's exchange is gone; a log
            declared for it is deleted again, so none is left behind.
        """
        queue = self.topology.log_queue(topic)
        exchange = self.topology.exchange(topic)

        await self._declare_queue(queue)

        try:
            async with self._channel() as channel:
                for partition in range(partition_count):
                    await channel.queue_bind(
                        queue, exchange, routing_key=str(partition)
                    )
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            # The topic was deleted meanwhile (its exchange first, then its
            # log): a log declared now would outlive it.
            await self.delete(topic)
            raise TopicNotFoundError(topic) from exc

        logger.debug("Topic log %s receives %d partitions", queue, partition_count)

    async def _declare_queue(self, queue: str) -> None:
        try:
            async with self._channel() as channel:
                await channel.queue_declare(
                    queue, durable=True, arguments=self.arguments
                )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            # Made with other retention settings: keep it as it is rather than
            # refuse the topic; a policy can change a stream's retention.
            logger.warning(
                "Topic log %s exists with other arguments than %s (%s); it keeps "
                "its own",
                queue,
                self.arguments,
                exc,
            )
            async with self._channel() as channel:
                await channel.queue_declare(queue, passive=True)

    async def delete(self, topic: str) -> None:
        """Delete the log of ``topic``, if it has one."""
        async with self._channel() as channel:
            await channel.queue_delete(self.topology.log_queue(topic))

    async def read(
        self, topic: str, partition_count: int, limit: int | None
    ) -> list[StoredRecord]:
        """The records of the log, partition by partition, oldest first.

        :param limit: most records returned; only the first ``limit`` of each
            partition are kept while reading.
        :raises TopicNotFoundError: if the log is gone.
        :raises BackendUnavailableError: if the read stalls before its end.
        """
        queue = self.topology.log_queue(topic)
        exchange = self.topology.exchange(topic)
        partitions: list[list[StoredRecord]] = [[] for _ in range(partition_count)]
        inbox: asyncio.Queue[aiormq.abc.DeliveredMessage | None] = asyncio.Queue()

        async def receive(message: aiormq.abc.DeliveredMessage) -> None:
            inbox.put_nowait(message)

        async def cancelled(frame: object) -> None:
            inbox.put_nowait(None)

        async with self._channel() as channel:
            marker = await self._append_marker(channel, topic, queue)

            channel.on_consumer_cancel_callbacks.add(cancelled)
            await channel.basic_qos(prefetch_count=_PREFETCH)
            await channel.basic_consume(
                queue, receive, arguments={"x-stream-offset": "first"}
            )

            unacknowledged = 0
            while True:
                message = await self._next(inbox, queue)
                if message is None:
                    raise TopicNotFoundError(topic)

                unacknowledged += 1
                if unacknowledged >= _ACK_EVERY and message.delivery_tag is not None:
                    # Streams hand out messages against acknowledged credit.
                    await channel.basic_ack(message.delivery_tag, multiple=True)
                    unacknowledged = 0

                properties = message.header.properties
                if properties.message_id == marker:
                    break
                if message.exchange != exchange:
                    continue  # another read's end marker

                record = _stored(message, partition_count)
                if record is None:
                    continue
                kept = partitions[record.partition]
                if limit is None or len(kept) < limit:
                    kept.append(record)

        records = [record for kept in partitions for record in kept]
        return records if limit is None else records[:limit]

    async def _append_marker(
        self, channel: aiormq.abc.AbstractChannel, topic: str, queue: str
    ) -> str:
        """Append an end marker to the log; return its id once confirmed."""
        marker = uuid.uuid4().hex
        try:
            await channel.basic_publish(
                b"",
                exchange="",
                routing_key=queue,
                mandatory=True,
                properties=Basic.Properties(
                    message_id=marker, message_type=END_MARKER_TYPE, delivery_mode=2
                ),
            )
        except aiormq.exceptions.PublishError as exc:
            # Returned unroutable: the log is not there.
            raise TopicNotFoundError(topic) from exc
        return marker

    async def _next(
        self,
        inbox: asyncio.Queue[aiormq.abc.DeliveredMessage | None],
        queue: str,
    ) -> aiormq.abc.DeliveredMessage | None:
        try:
            async with asyncio.timeout(self._stall_timeout):
                return await inbox.get()
        except TimeoutError:
            raise BackendUnavailableError(
                f"reading topic log {queue!r} stalled: no message for "
                f"{self._stall_timeout:g} s before its end marker"
            ) from None


def _stored(
    message: aiormq.abc.DeliveredMessage, partition_count: int
) -> StoredRecord | None:
    """The record a log message holds, or ``None`` if it is not one of ours."""
    headers = message.header.properties.headers or {}
    offset = headers.get("x-stream-offset")
    try:
        partition = int(message.routing_key or "")
    except ValueError:
        partition = -1
    if not isinstance(offset, int) or not 0 <= partition < partition_count:
        logger.warning(
            "Skipping a message of routing key %r in a topic log: not a partition "
            "of %d",
            message.routing_key,
            partition_count,
        )
        return None

    return StoredRecord(partition=partition, offset=str(offset), payload=message.body)
