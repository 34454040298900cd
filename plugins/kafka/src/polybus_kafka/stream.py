"""Streams: one aiokafka consumer per subscription, feeding the dispatch layer.

A stream runs three kinds of task:

- the *fetch loop* calls ``getmany`` again and again, even while handlers are
  slow, so the member never misses its poll deadline. It puts what it gets
  into one buffer per partition and pauses a partition in the consumer once
  its buffer holds ``buffer_per_partition`` messages (at least ``prefetch``);
  the partition resumes when the buffer has drained to half of that. Pausing
  drops what aiokafka fetched ahead for the partition, so the threshold is
  kept well above one fetch.
- one *feeder* per partition hands the buffered messages to the sink in order,
  waiting when the sink is full (that wait is the backpressure);
- the *committer* stores, every ``commit_interval_ms``, the end of each
  partition's run of settled messages (see :mod:`polybus_kafka.progress`).

A group stream is a member of a Kafka consumer group with manual commits. On a
rebalance the listener stops the feeders of the revoked partitions, waits for
the sink to finish or drop their work, commits what was settled, and only then
lets the partitions go. A broadcast stream has no group: it is assigned every
partition of the topic and starts at its end.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from polybus.backend import Delivery, DeliverySink, StartPosition, Stream
from polybus.errors import BackendUnavailableError
from polybus_kafka._connection import client_options, translate_error
from polybus_kafka.progress import PartitionProgress

if TYPE_CHECKING:
    from polybus_kafka.backend import KafkaBackend

__all__ = ["KafkaStream"]

logger = logging.getLogger(__name__)

_POLL_TIMEOUT_MS = 200
"""Longest a single ``getmany`` waits, so stopping is noticed quickly."""


class KafkaStream(Stream):
    """A subscription's read of one topic, as a group member or a broadcast.

    :param backend: the backend whose settings and metadata the stream uses.
    :param topic: the topic to read.
    :param group_id: the consumer group, or ``None`` for a broadcast.
    :param sink: where deliveries go (the dispatch layer).
    :param start: where a group without a committed offset starts.
    :param prefetch: the dispatch layer's per-partition queue; the stream
        buffers at least this many messages before pausing a partition.
    """

    def __init__(
        self,
        backend: KafkaBackend,
        topic: str,
        group_id: str | None,
        sink: DeliverySink,
        *,
        start: StartPosition,
        prefetch: int,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self._backend = backend
        self._sink = sink
        self._start = start
        self._prefetch = prefetch
        self._hold_at = max(prefetch, backend.settings.buffer_per_partition)
        self._consumer: AIOKafkaConsumer | None = None
        self._feeds: dict[int, _PartitionFeed] = {}
        self._progress: dict[int, PartitionProgress] = {}
        self._owned: set[int] = set()
        self._unfixed: set[int] = set()
        self._held: set[int] = set()
        self._paused = False
        self._ready = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._fetch_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Join the group (or assign every partition) and fix the positions.

        :raises BackendUnavailableError: if the brokers cannot be reached or no
            assignment arrives within the request timeout.
        """
        settings = self._backend.settings
        consumer = AIOKafkaConsumer(**self._consumer_options())
        self._consumer = consumer

        logger.debug("Starting stream on %s (group %s)", self.topic, self.group_id)
        try:
            if self.group_id is not None:
                consumer.subscribe([self.topic], listener=_Listener(self))
            await consumer.start()
            if self.group_id is None:
                await self._assign_every_partition(consumer)
        except (KafkaError, OSError) as exc:
            await self.close()
            raise translate_error(exc, f"subscribe to topic {self.topic!r}") from exc
        except BaseException:
            await self.close()
            raise

        self._fetch_task = asyncio.create_task(
            self._fetch_loop(consumer), name=f"polybus-kafka-fetch-{self.topic}"
        )
        if self.group_id is not None:
            self._commit_task = asyncio.create_task(
                self._commit_loop(), name=f"polybus-kafka-commit-{self.topic}"
            )

        wait = (settings.session_timeout_ms * 3 + settings.request_timeout_ms) / 1000
        try:
            await asyncio.wait_for(self._ready.wait(), timeout=wait)
        except TimeoutError:
            await self.close()
            raise BackendUnavailableError(
                f"subscription to topic {self.topic!r} (group {self.group_id}) got "
                f"no partition assignment within {wait:.1f}s; is the group "
                "coordinator reachable?"
            ) from None
        logger.debug("Stream on %s (group %s) live", self.topic, self.group_id)

    def _consumer_options(self) -> dict[str, Any]:
        settings = self._backend.settings
        options = client_options(settings, "consumer")
        options.update(
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self._start,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
        )
        if settings.rebalance_timeout_ms is not None:
            options["rebalance_timeout_ms"] = settings.rebalance_timeout_ms
        return options

    async def _assign_every_partition(self, consumer: AIOKafkaConsumer) -> None:
        count = await self._backend.partition_count(self.topic)
        partitions = [TopicPartition(self.topic, p) for p in range(count)]

        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            position = await consumer.position(tp)
            self._progress[tp.partition] = PartitionProgress(position)

        self._owned.update(range(count))
        self._sink.assigned(range(count))
        self._ready.set()

    async def stop_fetching(self) -> None:
        """Stop the fetch loop and the feeders; the group membership stays."""
        task, self._fetch_task = self._fetch_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        await self._stop_feeds(list(self._feeds))

    async def close(self) -> None:
        """Commit what is settled and leave the group. Calling it twice is fine."""
        if self._closed:
            return
        self._closed = True

        await self.stop_fetching()
        task, self._commit_task = self._commit_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        await self._commit(self._progress)
        self._progress.clear()
        await self._stop_consumer()
        logger.debug("Stream on %s (group %s) closed", self.topic, self.group_id)

    async def _stop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return

        try:
            await consumer.stop()
        except (KafkaError, OSError) as exc:
            logger.warning(
                "Consumer of topic %s stopped uncleanly: %r", self.topic, exc
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # TODO: aiokafka (0.14) lets the cancellation of a fetch that was
            # backing off after a connection error escape consumer.stop(),
            # before the client is closed (a relative of aio-libs/aiokafka#647).
            # It happens when the broker is down; close the client here so no
            # connection is left open.
            logger.warning(
                "Consumer of topic %s was stopped while its broker was "
                "unreachable; closing its connections",
                self.topic,
            )
            await consumer._client.close()

    async def pause(self) -> None:
        """Pause every assigned partition in the consumer; heartbeats go on."""
        self._paused = True
        if self._consumer is not None:
            self._consumer.pause(*self._consumer.assignment())

    async def resume(self) -> None:
        """Fetch again every partition that is not held back by a full buffer."""
        self._paused = False
        if self._consumer is not None:
            self._resume(self._consumer.assignment())

    def _resume(self, partitions: Iterable[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None or self._paused:
            return

        ready = [tp for tp in partitions if tp.partition not in self._held]
        assigned = consumer.assignment()
        consumer.resume(*(tp for tp in ready if tp in assigned))

    # -- rebalances -----------------------------------------------------------

    async def _partitions_revoked(self, partitions: Sequence[int]) -> None:
        """Finish or drop the work of ``partitions``, commit, let them go."""
        logger.debug("Partitions %s of %s revoked", list(partitions), self.topic)
        self._owned.difference_update(partitions)
        try:
            await self._stop_feeds(partitions)

            await self._sink.revoke(partitions)

            settled = {p: self._progress[p] for p in partitions if p in self._progress}
            await self._commit(settled)
        finally:
            for partition in partitions:
                self._progress.pop(partition, None)
                self._held.discard(partition)
                self._unfixed.discard(partition)

    def _partitions_assigned(self, partitions: Sequence[int]) -> None:
        logger.debug("Partitions %s of %s assigned", list(partitions), self.topic)
        self._owned.update(partitions)
        self._unfixed.update(partitions)
        if self._paused and self._consumer is not None:
            self._consumer.pause(*(TopicPartition(self.topic, p) for p in partitions))
        self._sink.assigned(partitions)

        if not partitions:
            self._ready.set()

    async def _fix_positions(self, consumer: AIOKafkaConsumer) -> None:
        """Resolve the start of newly assigned partitions and commit it.

        Committing the start at once makes it the group's position: a group
        that starts at ``latest`` and loses its only member before it settled
        anything still receives what was published after the member joined.
        """
        for partition in sorted(self._unfixed):
            tp = TopicPartition(self.topic, partition)
            position = await consumer.position(tp)
            self._progress.setdefault(partition, PartitionProgress(position))

        fixed = {p: self._progress[p] for p in self._unfixed if p in self._progress}
        if await self._commit(fixed):
            self._unfixed.difference_update(fixed)
            self._ready.set()

    # -- fetching -------------------------------------------------------------

    async def _fetch_loop(self, consumer: AIOKafkaConsumer) -> None:
        settings = self._backend.settings
        backoff = max(settings.retry_backoff_ms, 50) / 1000

        while True:
            try:
                if self._unfixed:
                    await self._fix_positions(consumer)

                # Half the hold mark per call, so one large fetch alone never
                # pauses a partition whose feeder keeps up.
                batches = await consumer.getmany(
                    timeout_ms=_POLL_TIMEOUT_MS,
                    max_records=max(1, self._hold_at // 2),
                )
            except IllegalStateError:
                # A partition went away between two steps. Forget it, and let
                # the rebalance listener run before trying again.
                assigned = {tp.partition for tp in consumer.assignment()}
                self._unfixed.intersection_update(assigned)
                await asyncio.sleep(backoff / 10)
                continue
            except (KafkaError, OSError) as exc:
                logger.warning(
                    "Fetching topic %s failed, retrying in %.2fs: %r",
                    self.topic,
                    backoff,
                    exc,
                )
                await asyncio.sleep(backoff)
                continue
            except Exception:
                # A stream that stopped fetching would look alive and be silent;
                # better to say so loudly and keep trying.
                logger.exception(
                    "Unexpected error fetching topic %s; retrying in %.2fs",
                    self.topic,
                    backoff,
                )
                await asyncio.sleep(backoff)
                continue

            for tp, records in batches.items():
                self._buffer(consumer, tp, records)

            if batches:
                # getmany returns at once while aiokafka holds fetched data;
                # let the feeders run before filling their buffers further.
                await asyncio.sleep(0)

    def _buffer(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        records: list[ConsumerRecord[bytes, bytes]],
    ) -> None:
        partition = tp.partition
        if partition not in self._owned:
            # Fetched while the partition was being revoked: the next owner
            # reads these from the last commit.
            return

        progress = self._progress.get(partition)
        if progress is None:
            progress = self._progress[partition] = PartitionProgress()

        feed = self._feeds.get(partition)
        if feed is None:
            feed = self._feeds[partition] = _PartitionFeed(self, partition)

        # The hot path of consuming: one Delivery per record, nothing more.
        settle = self._settle
        handed_out = progress.handed_out
        deliveries: list[Delivery] = []
        for record in records:
            value = record.value
            if value is None:
                continue
            offset = record.offset
            handed_out(offset)
            ack = functools.partial(settle, partition, progress, offset)
            deliveries.append(Delivery(partition, str(offset), value, ack))
        feed.extend(deliveries)

        if len(feed) >= self._hold_at and partition not in self._held:
            self._held.add(partition)
            consumer.pause(tp)

    def _drained(self, partition: int) -> None:
        """A feeder's buffer is low again: fetch its partition once more."""
        if partition in self._held:
            self._held.discard(partition)
            self._resume([TopicPartition(self.topic, partition)])

    async def _stop_feeds(self, partitions: Iterable[int]) -> None:
        feeds = [self._feeds.pop(p) for p in partitions if p in self._feeds]
        await asyncio.gather(*(feed.stop() for feed in feeds))

    async def _settle(
        self, partition: int, progress: PartitionProgress, offset: int
    ) -> None:
        # A delivery of a partition that was revoked since belongs to an old
        # assignment: its offset is no longer ours to commit.
        if self._progress.get(partition) is progress:
            progress.settle(offset)

    # -- committing -----------------------------------------------------------

    async def _commit_loop(self) -> None:
        interval = self._backend.settings.commit_interval_ms / 1000

        while True:
            await asyncio.sleep(interval)
            try:
                await self._commit(self._progress)
            except Exception:
                logger.exception(
                    "Unexpected error committing %s for group %s; will retry",
                    self.topic,
                    self.group_id,
                )

    async def _commit(self, progress: dict[int, PartitionProgress]) -> bool:
        """Commit what is due for the given partitions.

        :returns: ``True`` if nothing was due or the commit was stored.
        """
        consumer = self._consumer
        if consumer is None or self.group_id is None:
            return True

        async with self._commit_lock:
            # A revoked partition can no longer be committed by this member;
            # asking would fail the commit of every other partition with it.
            assigned = {tp.partition for tp in consumer.assignment()}
            due: dict[int, int] = {}
            for partition, part in progress.items():
                offset = part.due()
                if offset is not None and partition in assigned:
                    due[partition] = offset
            if not due:
                return True

            offsets = {TopicPartition(self.topic, p): o for p, o in due.items()}
            # aiokafka retries a retriable commit error without end (a deleted
            # topic answers UnknownTopicOrPartition forever), so the commit is
            # bounded here.
            timeout = self._backend.settings.request_timeout_ms / 1000
            try:
                await asyncio.wait_for(consumer.commit(offsets), timeout)
            except TimeoutError:
                logger.warning(
                    "Commit of %s for group %s did not complete within %.1fs; "
                    "will retry",
                    self.topic,
                    self.group_id,
                    timeout,
                )
                return False
            except (CommitFailedError, IllegalStateError) as exc:
                logger.warning(
                    "Commit of %s for group %s was refused after a rebalance; "
                    "messages settled since the last commit may be delivered "
                    "again: %r",
                    self.topic,
                    self.group_id,
                    exc,
                )
                return False
            except (KafkaError, OSError) as exc:
                logger.warning(
                    "Commit of %s for group %s failed, will retry: %r",
                    self.topic,
                    self.group_id,
                    exc,
                )
                return False

            for partition, offset in due.items():
                progress[partition].committed(offset)
            return True


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Passes aiokafka's rebalance callbacks to the stream."""

    def __init__(self, stream: KafkaStream) -> None:
        self._stream = stream

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in revoked)
        if partitions:
            await self._stream._partitions_revoked(partitions)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._stream._partitions_assigned(sorted(tp.partition for tp in assigned))


class _PartitionFeed:
    """Hands one partition's fetched messages to the sink, in order."""

    def __init__(self, stream: KafkaStream, partition: int) -> None:
        self._stream = stream
        self._partition = partition
        self._buffer: deque[Delivery] = deque()
        self._filled = asyncio.Event()
        self._task = asyncio.create_task(
            self._run(), name=f"polybus-kafka-feed-{stream.topic}-{partition}"
        )

    def __len__(self) -> int:
        return len(self._buffer)

    def extend(self, deliveries: list[Delivery]) -> None:
        """Queue deliveries behind the others, in order."""
        if deliveries:
            self._buffer.extend(deliveries)
            self._filled.set()

    async def _run(self) -> None:
        stream = self._stream
        buffer = self._buffer
        deliver = stream._sink.deliver
        held = stream._held
        partition = self._partition
        low_water = stream._hold_at // 2

        while True:
            if not buffer:
                self._filled.clear()
                await self._filled.wait()
                continue

            await deliver(buffer.popleft())
            if partition in held and len(buffer) <= low_water:
                stream._drained(partition)

    async def stop(self) -> None:
        """Stop handing out; what is still buffered is dropped unsettled."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._buffer.clear()
