"""The in-memory backend: a broker that lives inside the service's process."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Mapping, Sequence

from polybus.backend import (
    Backend,
    Capabilities,
    Delivery,
    DeliverySink,
    OutboundRecord,
    StartPosition,
    StoredRecord,
    Stream,
)
from polybus.errors import MessageTooLargeError, TopicNotFoundError
from polybus.types import ContextValue, MemoryUsage, TopicInfo
from polybus_in_memory.settings import InMemorySettings
from polybus_in_memory.store import (
    Group,
    InMemoryStore,
    Membership,
    Partition,
    Topic,
)

__all__ = ["CAPABILITIES", "InMemoryBackend"]

logger = logging.getLogger(__name__)

CAPABILITIES = Capabilities(
    persistent=False,
    shared_across_processes=False,
    partition_order=True,
    redelivers_unacked=True,
    duplicates_after_crash=True,
    earliest_start=True,
    topic_message_count=True,
    max_message_bytes=None,
    browse=True,
    limitations={
        "durability": "messages live in the process's memory and are gone when "
        "it exits",
        "cross-process": "only buses sharing one InMemoryBackend store see the "
        "same topics",
    },
)


class InMemoryBackend(Backend):
    """Topics, partitions and groups in a dict, with real redelivery and order."""

    name = "in_memory"
    capabilities = CAPABILITIES

    def __init__(
        self,
        settings: InMemorySettings | None = None,
        *,
        store: InMemoryStore | None = None,
    ) -> None:
        self.settings = settings or InMemorySettings()
        self.store = store if store is not None else InMemoryStore()
        self.delay_ms = self.settings.network_delay_ms
        self._streams: set[InMemoryStream] = set()
        self._connected = False

    @property
    def topics(self) -> dict[str, Topic]:
        """The topics of the store."""
        return self.store.topics

    # -- lifecycle ------------------------------------------------------------

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        # Like a dropped connection: this backend's streams leave their groups,
        # so their partitions and unacknowledged messages go to other members.
        for stream in list(self._streams):
            await stream.close()
        self._connected = False

    async def ping(self) -> None:
        await self._network_delay()

    async def _network_delay(self) -> None:
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)

    # -- topics ---------------------------------------------------------------

    async def create_topic(
        self,
        topic: str,
        partition_count: int,
        config: Mapping[str, ContextValue] | None = None,
    ) -> bool:
        if topic in self.topics:
            return False

        partitions = [Partition() for _ in range(partition_count)]
        self.topics[topic] = Topic(topic, partitions)
        logger.debug("Created topic %s with %d partitions", topic, partition_count)
        return True

    async def delete_topic(self, topic: str) -> bool:
        removed = self.topics.pop(topic, None)
        if removed is None:
            return False

        for stream in [s for s in self.store.streams if s.topic == topic]:
            await stream.stop_fetching()
        for key in [k for k in self.store.memberships if k[0] == topic]:
            del self.store.memberships[key]
        logger.debug("Deleted topic %s", topic)
        return True

    async def describe_topic(self, topic: str) -> TopicInfo | None:
        stored = self.topics.get(topic)
        if stored is None:
            return None

        return TopicInfo(
            name=topic,
            partition_count=len(stored.partitions),
            created_at=stored.created_at,
            message_count=stored.message_count(),
            consumer_groups=tuple(sorted(stored.groups)),
            config={
                "retention_messages": self.settings.retention_messages,
                "retention_ms": self.settings.retention_ms,
            },
        )

    async def list_topics(self) -> list[str]:
        return sorted(self.topics)

    def topic(self, topic: str) -> Topic:
        """The stored topic, or TopicNotFoundError."""
        try:
            return self.topics[topic]
        except KeyError:
            raise TopicNotFoundError(topic) from None

    # -- publishing -----------------------------------------------------------

    async def publish(
        self, records: Sequence[OutboundRecord]
    ) -> list[BaseException | None]:
        await self._network_delay()

        outcomes: list[BaseException | None] = []
        for record in records:
            outcomes.append(self._append(record))
        return outcomes

    def _append(self, record: OutboundRecord) -> BaseException | None:
        stored = self.topics.get(record.topic)
        if stored is None:
            return TopicNotFoundError(record.topic)

        if len(record.payload) > self.settings.max_message_bytes:
            return MessageTooLargeError(
                record.topic, len(record.payload), self.settings.max_message_bytes
            )

        if not 0 <= record.partition < len(stored.partitions):
            return TopicNotFoundError(f"{record.topic}[{record.partition}]")

        partition = stored.partitions[record.partition]
        partition.append(record.key, record.payload)
        partition.trim(self.settings.retention_messages, self.settings.retention_ms)
        return None

    async def read_topic(
        self, topic: str, *, limit: int | None = None
    ) -> list[StoredRecord]:
        stored = self.topic(topic)

        records: list[StoredRecord] = []
        for index, partition in enumerate(stored.partitions):
            for record in partition.records:
                if limit is not None and len(records) >= limit:
                    return records
                records.append(StoredRecord(index, str(record.offset), record.payload))
        return records

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
        return InMemoryStream(self, topic, group_id, sink, start)

    def membership(self, topic: str, group_id: str) -> Membership:
        """Members of a durable group."""
        return self.store.memberships.setdefault((topic, group_id), Membership())

    def streams_of(self, topic: str) -> int:
        """Live streams reading ``topic``."""
        return sum(1 for s in self.store.streams if s.topic == topic and s.live)

    # -- in-memory extras --------------------------------------------------------

    def clear(self) -> None:
        """Forget every topic, message and group of the store."""
        self.store.clear()

    def memory_usage(self) -> MemoryUsage:
        """Bytes held by retained records, per topic and in all."""
        per_topic: dict[str, int] = {}
        payload = 0
        total = 0
        count = 0

        for name, stored in self.topics.items():
            topic_bytes = 0
            for partition in stored.partitions:
                for record in partition.records:
                    payload += len(record.payload)
                    topic_bytes += record.size()
                    count += 1
            per_topic[name] = topic_bytes
            total += topic_bytes

        return MemoryUsage(
            total_bytes=total,
            payload_bytes=payload,
            message_count=count,
            topic_count=len(self.topics),
            per_topic_bytes=per_topic,
        )


class InMemoryStream(Stream):
    """One subscription's read of a topic, as a group member or a broadcast."""

    _ids = itertools.count()

    def __init__(
        self,
        backend: InMemoryBackend,
        topic: str,
        group_id: str | None,
        sink: DeliverySink,
        start: StartPosition,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.live = False
        self._backend = backend
        self._sink = sink
        self._start = start
        self._group: Group | None = None
        self._readers: dict[int, asyncio.Task[None]] = {}
        self._order = next(self._ids)

    async def start(self) -> None:
        stored = self._backend.topic(self.topic)
        if self._start == "earliest":
            offsets = stored.start_offsets()
        else:
            offsets = stored.end_offsets()

        if self.group_id is None:
            self._group = Group.at(None, offsets)
        else:
            group = stored.groups.get(self.group_id)
            if group is None:
                group = Group.at(self.group_id, offsets)
                stored.groups[self.group_id] = group
            self._group = group

        self.live = True
        self._backend._streams.add(self)
        self._backend.store.streams.add(self)

        if self.group_id is None:
            self._assign(range(len(stored.partitions)))
            return

        membership = self._backend.membership(self.topic, self.group_id)
        async with membership.lock:
            membership.members.append(self)
            await _rebalance(membership, len(stored.partitions))

    async def stop_fetching(self) -> None:
        self.live = False
        readers = list(self._readers.values())
        self._readers.clear()

        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    async def close(self) -> None:
        await self.stop_fetching()
        self._backend._streams.discard(self)
        self._backend.store.streams.discard(self)

        if self.group_id is None:
            return

        key = (self.topic, self.group_id)
        membership = self._backend.store.memberships.get(key)
        stored = self._backend.topics.get(self.topic)
        if membership is None or stored is None or self not in membership.members:
            return

        async with membership.lock:
            membership.members.remove(self)
            await _rebalance(membership, len(stored.partitions))

    # -- partitions -----------------------------------------------------------

    @property
    def partitions(self) -> set[int]:
        """Partitions this stream reads now."""
        return set(self._readers)

    def _assign(self, partitions: range | set[int]) -> None:
        for partition in partitions:
            if partition not in self._readers and self.live:
                self._readers[partition] = asyncio.create_task(
                    self._read(partition),
                    name=f"polybus-memory-{self.topic}-{partition}",
                )
        self._sink.assigned(sorted(self._readers))

    async def _revoke(self, partitions: set[int]) -> None:
        readers = [self._readers.pop(p) for p in partitions if p in self._readers]
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

        await self._sink.revoke(sorted(partitions))
        self._sink.assigned(sorted(self._readers))

    async def _read(self, index: int) -> None:
        group = self._group
        assert group is not None
        stored = self._backend.topics.get(self.topic)
        if stored is None:
            return

        partition = stored.partitions[index]
        group.skip_trimmed(index, partition.start_offset)
        position = group.committed[index]

        while True:
            await partition.wait_beyond(position)
            record = partition.read(position)
            if record is None:
                continue

            await self._backend._network_delay()
            delivery = Delivery(
                partition=index,
                offset=str(record.offset),
                payload=record.payload,
                ack=functools.partial(_ack, group, index, record.offset),
                delivery_count=group.count_delivery(index, record.offset),
            )
            await self._sink.deliver(delivery)
            position = record.offset + 1


async def _ack(group: Group, partition: int, offset: int) -> None:
    group.ack(partition, offset)


async def _rebalance(membership: Membership, partition_count: int) -> None:
    """Spread partitions over the members, revoking before reassigning."""
    members = sorted(membership.members, key=lambda m: m._order)
    wanted: dict[InMemoryStream, set[int]] = {m: set() for m in members}
    for partition in range(partition_count):
        if members:
            wanted[members[partition % len(members)]].add(partition)

    revocations = [
        member._revoke(member.partitions - wanted[member]) for member in members
    ]
    await asyncio.gather(*revocations)

    for member in members:
        member._assign(wanted[member])
