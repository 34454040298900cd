"""Topic metadata kept on the broker, in an append-only stream queue.

RabbitMQ has no place to read an exchange's arguments back without the
management plugin, and a classic queue cannot be read without taking its
messages away from other readers. A stream queue can: any number of readers
replay it from any offset, and it is durable and replicated like the rest.
So the catalog is a log of small JSON records in the stream ``<prefix>catalog``:

``create``
    topic, partition count, creation time and a record id; the first ``create``
    of a topic after its last ``delete`` is the one that counts, so two
    processes creating the same topic at once agree on who created it.
``group``
    a consumer group seen on a topic (its queues are deleted with the topic).
``delete``
    the topic is gone.
``sync``
    nothing; a reader appends one and reads up to it to know it has seen
    everything published before its call (a stream gives no end-of-log mark).

Each backend keeps the state it has replayed and the next offset to read, so a
catch-up reads only the records written since the last one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiormq.abc
from pamqp.commands import Basic

__all__ = ["Catalog", "CatalogEntry"]

logger = logging.getLogger(__name__)

ChannelFactory = Callable[[], AbstractAsyncContextManager[aiormq.abc.AbstractChannel]]

_PREFETCH: Final = 500
_CATCH_UP_TIMEOUT: Final = 5.0


@dataclass(slots=True)
class CatalogEntry:
    """What the catalog knows of one live topic."""

    partition_count: int
    created_at: datetime
    creation_id: str
    groups: set[str] = field(default_factory=set)


class Catalog:
    """Replays and appends to the catalog stream.

    :param queue: name of the stream queue.
    :param channel: opens a channel with publisher confirms, closed on exit.
    """

    def __init__(self, queue: str, channel: ChannelFactory) -> None:
        self.queue = queue
        self.topics: dict[str, CatalogEntry] = {}
        self._channel = channel
        self._next_offset = 0
        self._lock = asyncio.Lock()

    async def declare(self) -> None:
        """Make sure the catalog stream exists."""
        async with self._channel() as channel:
            await self._declare(channel)

    async def _declare(self, channel: aiormq.abc.AbstractChannel) -> None:
        await channel.queue_declare(
            self.queue, durable=True, arguments={"x-queue-type": "stream"}
        )

    # -- operations -----------------------------------------------------------

    async def sync(self) -> None:
        """Read every record written before this call."""
        await self._append({"op": "sync"})

    async def create(self, topic: str, partition_count: int, record_id: str) -> bool:
        """Record a topic; ``True`` if this record is the one that counts.

        Calling it again with the same ``record_id`` (a retry after a lost
        connection) gives the same answer.
        """
        await self._append(
            {
                "op": "create",
                "topic": topic,
                "partitions": partition_count,
                "created_at": datetime.now(UTC).isoformat(),
            },
            record_id,
        )
        entry = self.topics.get(topic)
        return entry is not None and entry.creation_id == record_id

    async def add_group(self, topic: str, group_id: str) -> None:
        """Record a consumer group of ``topic``, if not known yet."""
        entry = self.topics.get(topic)
        if entry is not None and group_id in entry.groups:
            return

        await self._append({"op": "group", "topic": topic, "group": group_id})

    async def delete(self, topic: str) -> None:
        """Record that ``topic`` is gone."""
        await self._append({"op": "delete", "topic": topic})

    # -- the log --------------------------------------------------------------

    async def _append(self, record: dict[str, Any], record_id: str = "") -> str:
        """Write ``record`` with its id (a fresh one if empty), read up to it."""
        record_id = record_id or uuid.uuid4().hex
        body = json.dumps({**record, "id": record_id}).encode()

        async with self._lock, self._channel() as channel:
            # Declared each time: it costs one round trip, and a catalog
            # deleted under a running backend comes back instead of swallowing
            # records sent to a queue that is not there.
            await self._declare(channel)
            await channel.basic_publish(
                body,
                exchange="",
                routing_key=self.queue,
                properties=Basic.Properties(
                    delivery_mode=2, content_type="application/json"
                ),
            )
            await self._catch_up(channel, record_id)

        return record_id

    async def _catch_up(self, channel: aiormq.abc.AbstractChannel, marker: str) -> None:
        """Apply records from the next unread offset until ``marker``'s record."""
        inbox: asyncio.Queue[aiormq.abc.DeliveredMessage] = asyncio.Queue()

        async def receive(message: aiormq.abc.DeliveredMessage) -> None:
            inbox.put_nowait(message)

        await channel.basic_qos(prefetch_count=_PREFETCH)
        await channel.basic_consume(
            self.queue,
            receive,
            arguments={"x-stream-offset": self._next_offset},
        )

        try:
            async with asyncio.timeout(_CATCH_UP_TIMEOUT):
                while True:
                    offset, record = await self._read(channel, await inbox.get())
                    if offset is None or offset < self._next_offset:
                        continue

                    self._next_offset = offset + 1
                    self._apply(record)
                    if record.get("id") == marker:
                        return
        except TimeoutError:
            # The record was confirmed, so it is in the log; not finding it
            # means the stream is not the one read so far (deleted and made
            # again). The caller's retry then replays it from the start.
            logger.warning(
                "Catalog %s: record %s not found from offset %d; replaying the "
                "catalog from its start",
                self.queue,
                marker,
                self._next_offset,
            )
            self.topics.clear()
            self._next_offset = 0
            raise

    async def _read(
        self, channel: aiormq.abc.AbstractChannel, message: aiormq.abc.DeliveredMessage
    ) -> tuple[int | None, dict[str, Any]]:
        """Acknowledge one catalog message (streams count credit by acks), decode it."""
        tag = message.delivery_tag
        if tag is not None:
            await channel.basic_ack(tag)

        headers = message.header.properties.headers or {}
        offset = headers.get("x-stream-offset")
        if not isinstance(offset, int):
            return None, {}

        try:
            record = json.loads(message.body)
        except ValueError:
            logger.warning(
                "Skipping unreadable catalog record at offset %d of %s",
                offset,
                self.queue,
            )
            return offset, {}
        return offset, record if isinstance(record, dict) else {}

    def _apply(self, record: dict[str, Any]) -> None:
        op = record.get("op")
        topic = record.get("topic")
        if not isinstance(topic, str):
            return

        if op == "create" and topic not in self.topics:
            self.topics[topic] = CatalogEntry(
                partition_count=int(record["partitions"]),
                created_at=datetime.fromisoformat(record["created_at"]),
                creation_id=str(record["id"]),
            )
        elif op == "group" and topic in self.topics:
            self.topics[topic].groups.add(str(record["group"]))
        elif op == "delete":
            self.topics.pop(topic, None)
