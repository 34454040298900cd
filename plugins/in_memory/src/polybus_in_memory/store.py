"""Topics, partitions and consumer groups held in memory.

A topic is a list of partitions; a partition is an append-only log of records
with offsets, trimmed by retention. A consumer group is one committed offset per
partition plus the set of offsets acknowledged beyond it, so the committed
position only moves over messages that are all settled.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polybus_in_memory.backend import InMemoryStream

__all__ = ["Group", "InMemoryStore", "Membership", "Partition", "Record", "Topic"]


@dataclass(slots=True)
class Record:
    """One stored envelope."""

    offset: int
    key: bytes | None
    payload: bytes
    stored_at: float

    def size(self) -> int:
        """Bytes held for this record, the object itself included."""
        key = sys.getsizeof(self.key) if self.key is not None else 0
        return sys.getsizeof(self) + sys.getsizeof(self.payload) + key


class Partition:
    """An append-only log of records."""

    def __init__(self) -> None:
        self.records: deque[Record] = deque()
        self.next_offset = 0
        self._appended = asyncio.Event()

    @property
    def start_offset(self) -> int:
        """Offset of the oldest retained record."""
        return self.records[0].offset if self.records else self.next_offset

    def append(self, key: bytes | None, payload: bytes) -> int:
        """Store a record and wake readers; return its offset."""
        offset = self.next_offset
        self.records.append(Record(offset, key, payload, time.monotonic()))
        self.next_offset += 1

        appended, self._appended = self._appended, asyncio.Event()
        appended.set()
        return offset

    def read(self, offset: int) -> Record | None:
        """The record at ``offset`` or the oldest after it, if any."""
        start = self.start_offset
        if offset >= self.next_offset:
            return None
        return self.records[max(offset, start) - start]

    async def wait_beyond(self, offset: int) -> None:
        """Return once a record at or after ``offset`` exists."""
        while offset >= self.next_offset:
            await self._appended.wait()

    def trim(self, max_records: int | None, max_age_ms: int | None) -> None:
        """Drop records past retention."""
        if max_records is not None:
            while len(self.records) > max_records:
                self.records.popleft()

        if max_age_ms is not None:
            oldest = time.monotonic() - max_age_ms / 1000
            while self.records and self.records[0].stored_at < oldest:
                self.records.popleft()


@dataclass(slots=True)
class Group:
    """Positions of a consumer group on one topic."""

    name: str | None
    committed: list[int]
    acked: list[set[int]]
    deliveries: dict[tuple[int, int], int] = field(default_factory=dict)

    @classmethod
    def at(cls, name: str | None, offsets: list[int]) -> Group:
        """A group positioned at ``offsets``."""
        return cls(name, list(offsets), [set() for _ in offsets])

    def ack(self, partition: int, offset: int) -> None:
        """Settle one offset and move the committed position over what is done."""
        if offset < self.committed[partition]:
            return

        done = self.acked[partition]
        done.add(offset)
        while self.committed[partition] in done:
            done.discard(self.committed[partition])
            self.deliveries.pop((partition, self.committed[partition]), None)
            self.committed[partition] += 1

    def count_delivery(self, partition: int, offset: int) -> int:
        """Record one more delivery of a message and return how many so far."""
        key = (partition, offset)
        self.deliveries[key] = self.deliveries.get(key, 0) + 1
        return self.deliveries[key]

    def skip_trimmed(self, partition: int, start_offset: int) -> None:
        """Move past records that retention has dropped."""
        if self.committed[partition] < start_offset:
            self.committed[partition] = start_offset
            self.acked[partition] = {
                o for o in self.acked[partition] if o >= start_offset
            }


@dataclass(slots=True)
class Topic:
    """A topic with its partitions and durable groups."""

    name: str
    partitions: list[Partition]
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    groups: dict[str, Group] = field(default_factory=dict)

    def end_offsets(self) -> list[int]:
        """Next offset of each partition."""
        return [p.next_offset for p in self.partitions]

    def start_offsets(self) -> list[int]:
        """Oldest retained offset of each partition."""
        return [p.start_offset for p in self.partitions]

    def message_count(self) -> int:
        """Retained records over all partitions."""
        return sum(len(p.records) for p in self.partitions)


class Membership:
    """The members of one durable group and the lock that orders rebalances."""

    def __init__(self) -> None:
        self.members: list[InMemoryStream] = []
        self.lock = asyncio.Lock()


@dataclass(slots=True)
class InMemoryStore:
    """Everything a broker would hold: topics, groups and who reads what.

    Backends made with the same store behave like clients of one broker, which
    is how tests imitate several processes in one.
    """

    topics: dict[str, Topic] = field(default_factory=dict)
    memberships: dict[tuple[str, str], Membership] = field(default_factory=dict)
    streams: set[InMemoryStream] = field(default_factory=set)

    def clear(self) -> None:
        """Forget every topic, message and group."""
        self.topics.clear()
        self.memberships.clear()
