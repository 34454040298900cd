"""How topics and groups become stream, subject, consumer and key names.

A topic name may hold ``.``, which NATS reads as a subject token separator,
and stream and consumer names may hold neither ``.`` nor much else. So a topic
is written as one token with an escape: ``_`` becomes ``__`` and ``.`` becomes
``_d``. The mapping is reversible, and no two topics share a token, so
``orders``, ``orders.x`` and ``orders_x`` never see each other's messages.

Group ids are arbitrary text; a group's consumers are named after a hash of it
and carry the id itself in their description.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Final

__all__ = ["GroupLabel", "TopicNames", "consumer_name", "decode_token", "encode_token"]

_LONGEST_READABLE_STREAM: Final = 200
"""Longer stream names become a hash; the server keeps each stream in a folder
named after it, and file systems refuse names past 255 bytes."""


def encode_token(topic: str) -> str:
    """The topic as one subject token (and key-value key), reversibly."""
    return topic.replace("_", "__").replace(".", "_d")


def decode_token(token: str) -> str:
    """The topic a token of :func:`encode_token` was made from.

    :raises ValueError: if ``token`` holds an escape that encoding never makes.
    """
    out: list[str] = []
    index = 0

    while index < len(token):
        char = token[index]
        if char != "_":
            out.append(char)
            index += 1
            continue

        escape = token[index + 1 : index + 2]
        if escape == "_":
            out.append("_")
        elif escape == "d":
            out.append(".")
        else:
            raise ValueError(f"{token!r} is not an encoded topic name")
        index += 2

    return "".join(out)


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Every server-side name belonging to one topic."""

    topic: str
    """The polybus topic."""
    token: str
    """The topic as one subject token, also its metadata key."""
    stream: str
    """The JetStream stream holding the topic."""
    subject_prefix: str
    """Subjects of the topic's partitions start with this and a dot."""

    @classmethod
    def of(cls, topic: str, *, stream_prefix: str, subject_prefix: str) -> TopicNames:
        """Names of ``topic`` under the configured prefixes."""
        token = encode_token(topic)

        stream = f"{stream_prefix}_{token}"
        if len(stream) > _LONGEST_READABLE_STREAM:
            digest = hashlib.sha256(topic.encode()).hexdigest()
            stream = f"{stream_prefix}_{digest}"

        return cls(topic, token, stream, f"{subject_prefix}.{token}")

    @property
    def all_partitions(self) -> str:
        """Subject filter matching every partition of the topic."""
        return f"{self.subject_prefix}.*"

    def subject(self, partition: int) -> str:
        """Subject of one partition."""
        return f"{self.subject_prefix}.{partition}"

    def partition_of(self, subject: str) -> int:
        """Partition a message's subject belongs to.

        :raises ValueError: if the subject is not one of this topic's.
        """
        head, _, last = subject.rpartition(".")
        if head != self.subject_prefix or not last.isdigit():
            raise ValueError(f"subject {subject!r} is not a partition of {self.topic}")
        return int(last)


@dataclass(frozen=True, slots=True)
class GroupLabel:
    """What a group consumer's description records, to list a topic's groups."""

    group_id: str
    partition: int

    def to_description(self) -> str:
        """The label as the consumer's description."""
        return json.dumps({"polybus_group": self.group_id, "partition": self.partition})

    @classmethod
    def from_description(cls, description: str | None) -> GroupLabel | None:
        """The label in a consumer's description, or ``None`` if it has none."""
        if not description:
            return None

        try:
            data = json.loads(description)
        except ValueError:
            return None

        if not isinstance(data, dict):
            return None
        group_id, partition = data.get("polybus_group"), data.get("partition")
        if not isinstance(group_id, str) or not isinstance(partition, int):
            return None
        return cls(group_id, partition)


def consumer_name(group_id: str, partition: int) -> str:
    """Durable consumer name of one group on one partition."""
    digest = hashlib.sha256(group_id.encode()).hexdigest()[:32]
    return f"g-{digest}-p{partition}"
