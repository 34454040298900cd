"""One subscription's read of a topic: a group member or a broadcast.

Each queue is read on a channel of its own. A group member consumes every
partition queue of its group; single-active-consumer makes it the reader of the
partitions where it registered first and a standby on the others. A member that
finds itself reading more than its share of the partitions (partition count over
the number of members, counted on the group's presence queue) hands the excess
over: it finishes the running handler, then closes that partition's channel,
which gives its unacknowledged messages back to the queue and activates the next
member in one step on the broker, so the partition's order holds; it then
registers again as a standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiormq.exceptions
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustQueue,
)

from polybus.backend import Delivery, DeliverySink, Stream
from polybus.errors import TopicNotFoundError
from polybus_rabbitmq.errors import QueueArgumentsMismatchError

if TYPE_CHECKING:
    from polybus_rabbitmq.backend import RabbitMQBackend

__all__ = ["RabbitMQStream", "delivery_count"]

logger = logging.getLogger(__name__)

_SETTLE_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How often the broker has handed ``message`` out, this time included.

    Quorum queues count deliveries in ``x-delivery-count``; classic queues only
    say whether a message was delivered before, which counts as two.
    """
    count = (message.headers or {}).get("x-delivery-count")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count + 1
    return 2 if message.redelivered else 1


def _is_stale(message: AbstractIncomingMessage) -> bool:
    """Whether the channel that delivered ``message`` is gone (it was requeued)."""
    try:
        message.channel  # noqa: B018 - the property raises once the channel closed
    except aiormq.exceptions.ChannelInvalidStateError:
        return True
    return False


class _Consumer:
    """One queue read through its own channel."""

    def __init__(
        self, partition: int | None, queue_name: str, channel: AbstractRobustChannel
    ) -> None:
        self.partition = partition
        self.queue_name = queue_name
        self.channel = channel
        self.buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.feeder: asyncio.Task[None] | None = None
        self.revoking: asyncio.Task[Any] | None = None
        self.queue: AbstractRobustQueue | None = None
        self.consumer_tag: str | None = None
        self.active = False
        self.closing = False


class RabbitMQStream(Stream):
    """A subscription's queues, channels and the task feeding each to the sink."""

    def __init__(
        self,
        backend: RabbitMQBackend,
        topic: str,
        group_id: str | None,
        sink: DeliverySink,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self._backend = backend
        self._sink = sink
        self._partition_count = 0
        self._consumers: dict[int, _Consumer] = {}
        self._broadcast: _Consumer | None = None
        self._presence: _Consumer | None = None
        self._abandoned: list[asyncio.Future[None]] = []
        self._rebalancer: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._fetching = False
        self._closed = False

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        info = await self._backend.describe_topic(self.topic)
        if info is None:
            raise TopicNotFoundError(self.topic)

        self._partition_count = info.partition_count
        self._fetching = True
        self._backend.streams.add(self)
        try:
            if self.group_id is None:
                await self._start_broadcast()
            else:
                await self._start_group(self.group_id, info.consumer_groups)
        except BaseException:
            await self.close()
            raise

        self._sink.assigned(range(self._partition_count))
        logger.debug(
            "Reading topic %s (group %s) on %d partitions",
            self.topic,
            self.group_id,
            self._partition_count,
        )

    async def _start_group(self, group_id: str, known: Sequence[str]) -> None:
        if group_id not in known:
            await self._backend.add_group(self.topic, group_id)

        opened = await asyncio.gather(
            *(self._open_partition(p) for p in range(self._partition_count)),
            return_exceptions=True,
        )
        for result in opened:
            if isinstance(result, _Consumer) and result.partition is not None:
                self._consumers[result.partition] = result
        for result in opened:
            if isinstance(result, BaseException):
                raise result

        self._presence = await self._join_presence(group_id)
        self._rebalancer = asyncio.create_task(
            self._rebalance_loop(), name=f"polybus-rabbitmq-rebalance-{self.topic}"
        )

    async def _start_broadcast(self) -> None:
        topology = self._backend.topology
        channel = await self._open_channel()
        consumer = _Consumer(None, topology.broadcast_queue(self.topic), channel)
        self._broadcast = consumer
        self._watch(consumer)

        queue = await self._declare(
            consumer, durable=False, exclusive=True, auto_delete=True
        )
        for partition in range(self._partition_count):
            await self._bind(queue, partition)
        await self._consume(consumer, queue)

    async def stop_fetching(self) -> None:
        # Consumers stay registered: what arrives now stays unacknowledged and
        # goes back to the queue, in order, when close() closes the channels.
        # Cancelling them here would let another member read later messages
        # while this one still drains earlier ones.
        self._fetching = False
        if self._rebalancer is not None:
            # Let a hand-over in progress finish, so no channel is left half
            # replaced.
            self._wakeup.set()
            await asyncio.gather(self._rebalancer, return_exceptions=True)
            self._rebalancer = None

        for consumer in self._all_consumers():
            await _stop_feeder(consumer)

    async def close(self) -> None:
        if self._closed:
            return

        await self.stop_fetching()
        self._closed = True
        for consumer in self._all_consumers():
            await self._close_consumer(consumer)
        if self._presence is not None:
            await _close_channel(self._presence.channel)
        await asyncio.gather(*self._abandoned, return_exceptions=True)
        self._backend.streams.discard(self)
        logger.debug("Stopped reading topic %s (group %s)", self.topic, self.group_id)

    def _all_consumers(self) -> list[_Consumer]:
        consumers = list(self._consumers.values())
        if self._broadcast is not None:
            consumers.append(self._broadcast)
        return consumers

    # -- channels and queues --------------------------------------------------

    async def _open_channel(self) -> AbstractRobustChannel:
        channel: AbstractRobustChannel = await self._backend.connection.channel(
            publisher_confirms=False
        )
        await channel.set_qos(prefetch_count=self._backend.settings.prefetch)
        return channel

    async def _open_partition(self, partition: int) -> _Consumer:
        assert self.group_id is not None
        name = self._backend.topology.group_queue(self.topic, self.group_id, partition)
        consumer = _Consumer(partition, name, await self._open_channel())
        self._watch(consumer)

        try:
            queue = await self._declare(
                consumer,
                durable=True,
                arguments=self._backend.topology.group_arguments(),
            )
            await self._bind(queue, partition)
            await self._consume(consumer, queue)
        except BaseException:
            await self._close_consumer(consumer)
            raise

        return consumer

    async def _declare(
        self,
        consumer: _Consumer,
        *,
        durable: bool,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> AbstractRobustQueue:
        try:
            return await consumer.channel.declare_queue(
                consumer.queue_name,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments,
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            reply = str(exc.args[0]) if exc.args else str(exc)
            raise QueueArgumentsMismatchError.from_reply(
                consumer.queue_name, reply
            ) from exc

    async def _bind(self, queue: AbstractRobustQueue, partition: int) -> None:
        try:
            await queue.bind(
                self._backend.topology.exchange(self.topic),
                routing_key=str(partition),
            )
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise TopicNotFoundError(self.topic) from exc

    async def _join_presence(self, group_id: str) -> _Consumer:
        """Consume from the group's presence queue, so members can be counted."""
        name = self._backend.topology.members_queue(self.topic, group_id)
        presence = _Consumer(None, name, await self._open_channel())
        presence.closing = True  # nothing to revoke if its channel goes
        self._watch(presence)

        try:
            queue = await self._declare(
                presence,
                durable=True,
                arguments=self._backend.topology.members_arguments(),
            )
            presence.queue = queue
            presence.consumer_tag = await queue.consume(_ignore, no_ack=True)
            await self._watch_cancel(presence)
        except BaseException:
            await _close_channel(presence.channel)
            raise
        return presence

    async def _consume(self, consumer: _Consumer, queue: AbstractRobustQueue) -> None:
        consumer.feeder = asyncio.create_task(
            self._feed(consumer), name=f"polybus-rabbitmq-{consumer.queue_name}"
        )
        consumer.queue = queue
        consumer.consumer_tag = await queue.consume(
            functools.partial(self._receive, consumer)
        )
        await self._watch_cancel(consumer)

    async def _watch_cancel(self, consumer: _Consumer) -> None:
        """Notice when the broker cancels the consumer: its queue was deleted."""
        underlay = await consumer.channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(
            functools.partial(self._on_broker_cancel, consumer)
        )

    async def _on_broker_cancel(
        self, consumer: _Consumer, frame: aiormq.spec.Basic.Cancel
    ) -> None:
        """Give up a queue the broker deleted, instead of declaring it again.

        aio-pika would restore the consumer, and declaring the queue to do so
        would bring a deleted topic's queue back. Forgetting the consumer here,
        before the recovery runs, prevents that.
        """
        tag = consumer.consumer_tag
        if tag is None or frame.consumer_tag != tag or consumer.queue is None:
            return

        consumer.consumer_tag = None
        await consumer.queue.cancel(tag, nowait=True)
        logger.warning(
            "Queue %s was deleted (was topic %s deleted?); this subscription no "
            "longer reads it",
            consumer.queue_name,
            self.topic,
        )
        self._abandoned.append(asyncio.ensure_future(self._abandon(consumer)))

    async def _abandon(self, consumer: _Consumer) -> None:
        if consumer.partition is not None:
            await self._sink.revoke([consumer.partition])
        await self._close_consumer(consumer)

    def _watch(self, consumer: _Consumer) -> None:
        consumer.channel.close_callbacks.add(
            functools.partial(self._on_channel_lost, consumer)
        )
        consumer.channel.reopen_callbacks.add(
            functools.partial(self._on_channel_restored, consumer)
        )

    async def _on_channel_restored(self, consumer: _Consumer, _channel: object) -> None:
        logger.info("Channel of queue %s restored", consumer.queue_name)
        await self._watch_cancel(consumer)

    def _on_channel_lost(
        self, consumer: _Consumer, _channel: object, exc: BaseException | None
    ) -> None:
        """Drop what the sink holds from a lost channel: the broker requeued it."""
        if consumer.closing or self._closed:
            return

        logger.warning(
            "Channel of queue %s lost (%r); its unacknowledged messages go back "
            "to the queue and reading resumes once the channel is restored",
            consumer.queue_name,
            exc,
        )
        consumer.active = False
        if consumer.partition is not None:
            partitions = [consumer.partition]
        else:
            partitions = list(range(self._partition_count))
        consumer.revoking = asyncio.ensure_future(self._sink.revoke(partitions))

    async def _close_consumer(self, consumer: _Consumer) -> None:
        consumer.closing = True
        await _stop_feeder(consumer)
        await _close_channel(consumer.channel)

    # -- deliveries -----------------------------------------------------------

    async def _receive(
        self, consumer: _Consumer, message: AbstractIncomingMessage
    ) -> None:
        # aio-pika runs this as one task per message, in arrival order; it must
        # not wait, so that the buffer keeps that order.
        consumer.buffer.put_nowait(message)
        if not consumer.active:
            consumer.active = True
            self._wakeup.set()

    async def _feed(self, consumer: _Consumer) -> None:
        """Hand the consumer's messages to the sink one at a time, in order.

        One task per consumer awaits each ``deliver`` before the next: the
        sink's backpressure then holds the rest in the buffer, in order (many
        tasks waiting on a full sink could overtake one another).
        """
        while True:
            message = await consumer.buffer.get()
            if consumer.revoking is not None:
                await asyncio.gather(consumer.revoking, return_exceptions=True)
                consumer.revoking = None
            if _is_stale(message):
                continue

            partition = consumer.partition
            if partition is None:
                partition = _partition_of(message, self._partition_count)
            delivery = Delivery(
                partition=partition,
                offset=str(message.delivery_tag),
                payload=message.body,
                ack=functools.partial(_ack, message, consumer.queue_name),
                delivery_count=delivery_count(message),
            )
            await self._sink.deliver(delivery)

    # -- sharing partitions ---------------------------------------------------

    def _stopping(self) -> bool:
        return not self._fetching

    async def _rebalance_loop(self) -> None:
        interval = self._backend.settings.rebalance_interval_ms / 1000

        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=interval)
            self._wakeup.clear()
            if self._stopping():
                return

            try:
                await self._rebalance()
            except (
                aiormq.exceptions.AMQPError,
                aiormq.exceptions.ChannelInvalidStateError,
                ConnectionError,
                TimeoutError,
            ) as exc:
                logger.debug("Rebalance of %s skipped: %r", self.topic, exc)

    async def _rebalance(self) -> None:
        """Step down from the partitions beyond this member's share."""
        assert self.group_id is not None
        active = sorted(p for p, c in self._consumers.items() if c.active)
        if len(active) < 2:
            return

        members = await self._backend.member_count(self.topic, self.group_id)
        share = max(1, math.ceil(self._partition_count / max(members, 1)))
        for partition in active[share:]:
            if self._stopping():
                return
            await self._step_down(partition)

    async def _step_down(self, partition: int) -> None:
        logger.debug(
            "Handing partition %d of %s (group %s) to another member",
            partition,
            self.topic,
            self.group_id,
        )
        old = self._consumers[partition]
        await _stop_feeder(old)
        await self._sink.revoke([partition])

        # Registered before the old channel closes, so this member queues up
        # behind the members already waiting on the partition.
        self._consumers[partition] = await self._open_partition(partition)
        await self._close_consumer(old)


def _partition_of(message: AbstractIncomingMessage, partition_count: int) -> int:
    try:
        partition = int(message.routing_key or "")
    except ValueError:
        return 0
    return partition if 0 <= partition < partition_count else 0


async def _ack(message: AbstractIncomingMessage, queue: str) -> None:
    if message.processed:
        return

    try:
        await message.ack()
    except _SETTLE_ERRORS as exc:
        logger.warning(
            "Could not acknowledge delivery %s of queue %s (%r); the broker will "
            "deliver it again",
            message.delivery_tag,
            queue,
            exc,
        )


async def _ignore(message: AbstractIncomingMessage) -> None:
    """The presence queue receives nothing; nothing to do if it ever does."""


async def _stop_feeder(consumer: _Consumer) -> None:
    """Stop handing the consumer's messages on; they stay unacknowledged."""
    feeder, consumer.feeder = consumer.feeder, None
    if feeder is not None:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)


async def _close_channel(channel: AbstractRobustChannel) -> None:
    # Closed by us even when the broker closed it already: a robust channel
    # that was not closed by its owner reopens itself.
    with contextlib.suppress(*_SETTLE_ERRORS, RuntimeError):
        await channel.close()
