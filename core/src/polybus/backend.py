"""The interface a backend plugin implements.

A backend is a thin transport: it stores and moves envelopes (see
:mod:`polybus.message`) and tracks what each consumer group has acknowledged.
Everything that makes delivery behave the same on every broker (handler calls,
retries, dead-lettering, per-partition order, pause, drain) lives in
:mod:`polybus.dispatch`, above this interface.

The contract a backend keeps is written in ``docs/semantics.md``; what it cannot
keep it declares in its :class:`Capabilities`, in one place, with the reason.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol
from uuid import UUID

from polybus.errors import UnsupportedOperationError
from polybus.types import ContextValue, LiteralCompressionType, TopicInfo

if TYPE_CHECKING:
    from polybus.bus import EventBus
    from polybus.settings import BackendSettings, PolybusSettings

__all__ = [
    "Backend",
    "BackendSpec",
    "Capabilities",
    "CompressedPublishResult",
    "Delivery",
    "DeliverySink",
    "OutboundRecord",
    "StartPosition",
    "StoredRecord",
    "Stream",
]

StartPosition = Literal["latest", "earliest"]
"""Where a consumer group that has no committed position starts reading."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a backend can promise, read by the dispatch layer and the tests.

    Every field that weakens the contract of ``docs/semantics.md`` says so in
    ``limitations``, keyed by the contract clause, with the reason.
    """

    persistent: bool
    """Messages survive a restart of the broker (not of the service)."""
    shared_across_processes: bool
    """Other processes connected to the same broker see the same topics."""
    partition_order: bool = True
    """Within a group, one partition's messages are handled in publish order."""
    redelivers_unacked: bool = True
    """Messages left unacknowledged by a stopped member are delivered again."""
    duplicates_after_crash: bool = True
    """After a crash a handler may see a message it already handled once."""
    earliest_start: bool = True
    """A new group can start from the oldest retained message."""
    topic_message_count: bool = True
    """``TopicInfo.message_count`` is filled in."""
    max_message_bytes: int | None = None
    """Largest envelope the broker accepts, if it has a limit."""
    browse: bool = False
    """``Backend.read_topic`` can list retained messages without consuming
    them; the dead-letter queue handler needs it."""
    native_compression: frozenset[LiteralCompressionType] = frozenset()
    """Codecs the broker applies to whole record batches itself. For these
    :class:`~polybus.publisher.EventPublisher` hands the uncompressed records to
    ``Backend.publish_compressed`` instead of compressing each value and naming
    the codec in a header; any other codec, and every codec of a backend that
    declares none, keeps that envelope compression."""
    limitations: Mapping[str, str] = field(default_factory=dict)
    """Contract clause to the reason this backend does not meet it."""


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    """One envelope on its way to the broker."""

    topic: str
    """Target topic."""
    partition: int
    """Target partition, already chosen by the partitioner."""
    key: bytes | None
    """Partition key, kept by brokers that store keys."""
    payload: bytes
    """The serialized envelope."""
    message_id: UUID
    """Id of the message, for error reports."""


@dataclass(frozen=True, slots=True)
class CompressedPublishResult:
    """What ``Backend.publish_compressed`` sent."""

    outcomes: list[BaseException | None]
    """For each record in order, as ``Backend.publish`` returns them."""
    bytes_sent: int
    """Size of the compressed batches the broker acknowledged, as sent."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One retained envelope, read without being consumed."""

    partition: int
    """Partition it is stored in."""
    offset: str
    """Backend position of the message, as text."""
    payload: bytes
    """The serialized envelope."""


@dataclass(slots=True, eq=False)
class Delivery:
    """One envelope fetched for a subscription, not yet acknowledged."""

    partition: int
    """Partition it was read from."""
    offset: str
    """Backend position of the message, as text."""
    payload: bytes
    """The serialized envelope."""
    ack: Callable[[], Awaitable[None]]
    """Marks the message done for the subscription's group."""
    delivery_count: int = 1
    """How often the broker has handed this message out, where it knows."""


class DeliverySink(Protocol):
    """Where a stream hands what it fetches: the dispatch layer."""

    async def deliver(self, delivery: Delivery) -> None:
        """Accept one delivery; may wait, which is how backpressure works.

        Deliveries of one partition arrive in partition order.
        """

    async def revoke(self, partitions: Sequence[int]) -> None:
        """Finish work on ``partitions`` before they go to another member.

        Returns once no handler runs for them; fetched messages of those
        partitions that were not started are dropped unacknowledged.
        """

    def assigned(self, partitions: Sequence[int]) -> None:
        """Record the partitions the stream now reads."""


class Stream(abc.ABC):
    """A live read of one topic for one subscription."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Join the group and fix positions; return once the read is live.

        Anything published after this returns must reach the sink.
        """

    @abc.abstractmethod
    async def stop_fetching(self) -> None:
        """Stop handing new deliveries to the sink; keep the group membership."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the group. Unacknowledged messages go back to the group."""

    async def pause(self) -> None:  # noqa: B027 - optional hook
        """Stop fetching while paused; the dispatch layer holds what it has."""

    async def resume(self) -> None:  # noqa: B027 - optional hook
        """Fetch again after :meth:`pause`."""


class Backend(abc.ABC):
    """A broker connection able to store topics and feed streams."""

    name: str
    """Backend name, as selected by ``POLYBUS_BACKEND``."""
    capabilities: Capabilities
    """What the backend can promise."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open connections; raise BackendUnavailableError if it cannot."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection. Calling it twice is harmless."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Make one round trip to the broker or raise BackendUnavailableError."""

    @abc.abstractmethod
    async def create_topic(
        self,
        topic: str,
        partition_count: int,
        config: Mapping[str, ContextValue] | None = None,
    ) -> bool:
        """Create a topic; return ``False`` if it already existed."""

    @abc.abstractmethod
    async def delete_topic(self, topic: str) -> bool:
        """Delete a topic and its groups; return ``False`` if it did not exist."""

    @abc.abstractmethod
    async def describe_topic(self, topic: str) -> TopicInfo | None:
        """Return what the broker knows of a topic, or ``None``."""

    @abc.abstractmethod
    async def list_topics(self) -> list[str]:
        """Names of every topic, sorted."""

    @abc.abstractmethod
    async def publish(
        self, records: Sequence[OutboundRecord]
    ) -> list[BaseException | None]:
        """Send records, using the broker's own batching.

        Returns, for each record in order, ``None`` once the broker has taken it
        or the exception that stopped it. It raises only when nothing was sent.
        """

    async def publish_compressed(
        self, records: Sequence[OutboundRecord], codec: LiteralCompressionType
    ) -> CompressedPublishResult:
        """Send records in batches the broker compresses with ``codec``.

        The payloads are uncompressed envelopes and reach consumers unchanged:
        the broker's clients compress and decompress whole batches. Only codecs
        in ``Capabilities.native_compression`` are asked for; outcomes are as
        for :meth:`publish`, and it raises only when nothing was sent.

        :raises CodecUnavailableError: if the codec's package is missing; then
            nothing is sent.
        :raises UnsupportedOperationError: if the backend does not compress
            with ``codec`` itself.
        """
        raise UnsupportedOperationError(
            self.name,
            f"{codec} compression by the broker",
            "the publisher compresses values itself for this backend",
        )

    async def read_topic(
        self, topic: str, *, limit: int | None = None
    ) -> list[StoredRecord]:
        """Retained records of ``topic`` without consuming them.

        Records come partition by partition, oldest first within each; at most
        ``limit`` of them when given. A backend that can do this sets
        ``Capabilities.browse``.

        :raises TopicNotFoundError: if the topic does not exist.
        :raises UnsupportedOperationError: if the backend cannot browse.
        """
        raise UnsupportedOperationError(
            self.name, "read_topic", "it cannot list messages without consuming them"
        )

    @abc.abstractmethod
    def open_stream(
        self,
        topic: str,
        group_id: str | None,
        sink: DeliverySink,
        *,
        start: StartPosition,
        prefetch: int,
    ) -> Stream:
        """Make a stream for a durable group, or a broadcast one if no group."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendSpec:
    """How a plugin describes a backend to the registry."""

    name: str
    """Name selected by ``POLYBUS_BACKEND``."""
    factory: Callable[[BackendSettings], Backend]
    """Builds a backend from its settings."""
    settings_class: type[BackendSettings]
    """The plugin's settings, read from ``POLYBUS_<NAME>__*``."""
    capabilities: Capabilities
    """The backend's capability declaration."""
    description: str = ""
    """One line for ``polybus plugins``."""
    bus_factory: Callable[[Backend, PolybusSettings], EventBus] | None = None
    """Builds the bus, for a backend whose bus adds protocols of its own
    (the in-memory, Kafka and Redpanda adapters); plain :class:`EventBus` if
    ``None``."""
