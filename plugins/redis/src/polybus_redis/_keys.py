"""Where the backend keeps things in Redis.

Every key of one topic carries the topic in a hash tag (``{orders}``), so the
keys a script touches together hash to the same Cluster slot::

    <prefix>topics                           set of topic names
    <prefix>{<topic>}:meta                   hash: partitions, created_ms, retention
    <prefix>{<topic>}:groups                 set of consumer group names
    <prefix>{<topic>}:p:<n>                  stream of partition n
    <prefix>{<topic>}:g:<group>:members      zset: member id -> expiry (ms)
    <prefix>{<topic>}:g:<group>:lease:<n>    member id owning partition n (PX)
    <prefix>{<topic>}:g:<group>:free:<n>     set when the last owner handed over
    <prefix>{<topic>}:g:<group>:rebalance    Pub/Sub channel of membership changes
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]

_GLOB_SPECIALS = "\\*?[]"


@dataclass(frozen=True, slots=True)
class Keys:
    """Names of the keys of one key prefix."""

    prefix: str

    @property
    def topics(self) -> str:
        """Set of every topic name."""
        return f"{self.prefix}topics"

    def topic_base(self, topic: str) -> str:
        """Common start of every key of ``topic``."""
        return f"{self.prefix}{{{topic}}}:"

    def topic_pattern(self, topic: str) -> str:
        """``SCAN MATCH`` pattern of every key of ``topic``."""
        escaped = "".join(
            f"\\{c}" if c in _GLOB_SPECIALS else c for c in self.topic_base(topic)
        )
        return f"{escaped}*"

    def meta(self, topic: str) -> str:
        """Hash of the topic's partition count, creation time and retention."""
        return f"{self.topic_base(topic)}meta"

    def groups(self, topic: str) -> str:
        """Set of the topic's consumer groups."""
        return f"{self.topic_base(topic)}groups"

    def partition(self, topic: str, partition: int) -> str:
        """Stream holding one partition."""
        return f"{self.topic_base(topic)}p:{partition}"

    def members(self, topic: str, group: str) -> str:
        """Sorted set of a group's live members, scored by expiry."""
        return f"{self.topic_base(topic)}g:{group}:members"

    def lease(self, topic: str, group: str, partition: int) -> str:
        """Lease of one partition within a group."""
        return f"{self.topic_base(topic)}g:{group}:lease:{partition}"

    def rebalance_channel(self, topic: str, group: str) -> str:
        """Pub/Sub channel on which a group's members announce changes."""
        return f"{self.topic_base(topic)}g:{group}:rebalance"

    def handed_over(self, topic: str, group: str, partition: int) -> str:
        """Marker left by an owner that released a partition cleanly."""
        return f"{self.topic_base(topic)}g:{group}:free:{partition}"
