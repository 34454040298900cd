"""How polybus topics, partitions and groups map to exchanges and queues.

A topic is a durable direct exchange, ``<prefix><topic>``; a message is routed
by its partition number as routing key. A consumer group has one durable queue
per partition, ``<prefix><topic>:<group>:<partition>``, bound with that
partition's routing key and marked single-active-consumer, so one member at a
time reads a partition, in order. Each group also has a presence queue,
``<prefix><topic>:<group>:members``, that no message reaches: every member
consumes from it, so its consumer count is the number of members. A broadcast
subscription has one exclusive queue bound to every partition. A topic's log is
the stream queue ``<prefix><topic>:log``, bound to every partition; a topic name
has no ``:``, so no group's queue can take that name.

Names keep to what AMQP allows: exchange names up to 127 characters, queue
names up to 255, of ``[A-Za-z0-9-_.:@#,/+ ]``. A longer name is shortened, and
a group id with other characters is spelled with those replaced; either way a
hash of the original is appended, so names stay unique.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any, Final

from polybus_rabbitmq.settings import QueueType

__all__ = ["MAX_EXCHANGE_NAME", "MAX_QUEUE_NAME", "Topology"]

MAX_EXCHANGE_NAME: Final = 127
"""Longest exchange name AMQP 0-9-1 allows."""
MAX_QUEUE_NAME: Final = 255
"""Longest queue name RabbitMQ allows."""

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.\-@,/+ ]")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _bounded(name: str, limit: int, suffix: str = "") -> str:
    """``name + suffix``, with ``name`` shortened by a hash if it is too long."""
    room = limit - len(suffix)
    if len(name) <= room:
        return name + suffix

    digest = _digest(name)
    return f"{name[: room - len(digest) - 1]}#{digest}{suffix}"


def _safe_group(group_id: str) -> str:
    """The group id as it can appear in a queue name."""
    if not _UNSAFE.search(group_id):
        return group_id
    return f"{_UNSAFE.sub('_', group_id)}#{_digest(group_id)}"


@dataclass(frozen=True, slots=True)
class Topology:
    """Names and arguments of the broker objects behind polybus topics."""

    prefix: str
    """Put before every name."""
    queue_type: QueueType
    """Type of group queues."""

    @property
    def catalog(self) -> str:
        """The stream queue holding topic metadata."""
        return f"{self.prefix}catalog"

    def exchange(self, topic: str) -> str:
        """The exchange of ``topic``."""
        return _bounded(f"{self.prefix}{topic}", MAX_EXCHANGE_NAME)

    def group_queue(self, topic: str, group_id: str, partition: int) -> str:
        """The queue holding one partition for one consumer group."""
        base = f"{self.prefix}{topic}:{_safe_group(group_id)}"
        return _bounded(base, MAX_QUEUE_NAME, f":{partition}")

    def members_queue(self, topic: str, group_id: str) -> str:
        """The presence queue counting a group's members."""
        base = f"{self.prefix}{topic}:{_safe_group(group_id)}"
        return _bounded(base, MAX_QUEUE_NAME, ":members")

    def log_queue(self, topic: str) -> str:
        """The stream queue keeping every message of ``topic``."""
        return _bounded(f"{self.prefix}{topic}", MAX_QUEUE_NAME, ":log")

    def broadcast_queue(self, topic: str) -> str:
        """A fresh name for one broadcast subscription's queue."""
        return _bounded(
            f"{self.prefix}{topic}", MAX_QUEUE_NAME, f"::{uuid.uuid4().hex}"
        )

    def group_arguments(self) -> dict[str, Any]:
        """Arguments of a group partition queue."""
        return {
            "x-queue-type": self.queue_type,
            "x-single-active-consumer": True,
        }

    @staticmethod
    def members_arguments() -> dict[str, Any]:
        """Arguments of a group's presence queue."""
        return {"x-queue-type": "classic"}

    @staticmethod
    def catalog_arguments() -> dict[str, Any]:
        """Arguments of the catalog stream."""
        return {"x-queue-type": "stream"}
