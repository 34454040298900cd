"""Value types named by the event bus protocols.

Everything here is a plain, immutable record: backends and the dispatch layer fill
them in, services read them. Times are timezone-aware UTC datetimes; sizes are in
bytes; durations in milliseconds unless the field name says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias
from uuid import UUID

__all__ = [
    "BatchPublishResult",
    "BrokerInfo",
    "CompatibilityResult",
    "ConsumerGroupInfo",
    "ConsumerGroupMember",
    "ContextValue",
    "DLQMessage",
    "DLQResult",
    "EventBusConfiguration",
    "EventBusHealth",
    "EventBusMetrics",
    "EventBusServiceMetrics",
    "FailureAnalysis",
    "KafkaMetadata",
    "LiteralCompressionType",
    "LiteralEventBusBackend",
    "LiteralHealthStatus",
    "LiteralSchemaType",
    "MemoryUsage",
    "PartitionOffsets",
    "PublishFailure",
    "PublisherMetrics",
    "RedpandaMetrics",
    "SchemaInfo",
    "SubscriptionInfo",
    "TopicInfo",
    "TopicMetrics",
]

ContextValue: TypeAlias = (
    str | int | float | bool | list["ContextValue"] | dict[str, "ContextValue"] | None
)
"""A value that keeps its type through every backend: header values and the
context handed to a handler."""

LiteralEventBusBackend = Literal["kafka", "redpanda", "redis", "in_memory", "rabbitmq"]
"""The built-in backends. Third-party names are accepted once their plugin is
installed."""

LiteralCompressionType = Literal["none", "gzip", "snappy", "lz4", "zstd"]
"""Compression applied to message values."""

LiteralSchemaType = Literal["AVRO", "JSON", "PROTOBUF"]
"""Schema languages a schema registry stores."""

LiteralHealthStatus = Literal["healthy", "degraded", "unhealthy"]
"""Overall health of an event bus service."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicInfo:
    """What the backend knows about one topic."""

    name: str
    """The topic name."""
    partition_count: int
    """Number of partitions; keys are spread over them with murmur2."""
    created_at: datetime | None
    """When the topic was created, if the backend records it."""
    message_count: int | None = None
    """Messages currently retained, if the backend can count them cheaply."""
    consumer_groups: tuple[str, ...] = ()
    """Durable consumer groups known for the topic."""
    config: dict[str, ContextValue] = field(default_factory=dict)
    """Backend-specific settings of the topic (retention, replication...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionInfo:
    """State of one subscription made through this bus."""

    subscription_id: str
    """Id returned by ``subscribe_to_topic``."""
    topic: str
    """The subscribed topic."""
    group_id: str | None
    """Consumer group, or ``None`` for a broadcast subscription."""
    state: Literal["active", "paused", "stopping", "stopped"]
    """Lifecycle state."""
    created_at: datetime
    """When the subscription went live."""
    assigned_partitions: tuple[int, ...]
    """Partitions this member currently receives."""
    messages_received: int
    """Deliveries handed to the handler, retries not counted."""
    messages_acked: int
    """Messages settled successfully."""
    messages_failed: int
    """Handler attempts that raised or asked for a retry."""
    messages_dead_lettered: int
    """Messages handed to the dead-letter queue."""
    in_flight: int
    """Messages fetched and not yet settled."""
    last_message_at: datetime | None
    """When the last message arrived."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBusMetrics:
    """Counters of one bus instance since it started."""

    backend: str
    """Backend name."""
    messages_published: int
    """Messages whose publish returned successfully."""
    bytes_published: int
    """Serialized bytes of those messages."""
    publish_failures: int
    """Publishes that raised."""
    messages_consumed: int
    """Messages handled and acknowledged."""
    bytes_consumed: int
    """Serialized bytes of the messages delivered to handlers."""
    messages_failed: int
    """Handler attempts that failed."""
    messages_retried: int
    """Extra attempts made after a failure."""
    messages_dead_lettered: int
    """Messages sent to a dead-letter queue."""
    active_subscriptions: int
    """Subscriptions live now."""
    topics: int
    """Topics known to the backend."""
    publish_latency_ms_avg: float
    """Mean publish latency."""
    publish_latency_ms_p99: float
    """99th percentile publish latency over the recent window."""
    uptime_seconds: float
    """Seconds since the bus started."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicMetrics:
    """Counters of one topic, as seen by this bus instance."""

    topic: str
    """The topic."""
    partition_count: int
    """Partitions of the topic."""
    messages_published: int
    """Messages published to it through this bus."""
    bytes_published: int
    """Serialized bytes published."""
    messages_consumed: int
    """Messages handled and acknowledged from it."""
    messages_failed: int
    """Handler attempts that failed."""
    messages_dead_lettered: int
    """Messages dead-lettered from it."""
    subscriptions: int
    """Live subscriptions on this bus."""
    consumer_groups: tuple[str, ...]
    """Groups subscribed through this bus."""
    retained_messages: int | None
    """Messages the backend retains, where it can tell."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBusConfiguration:
    """The settings of a running event bus service that can be read and updated.

    ``backend`` can only be changed while the service is stopped; the other fields
    take effect for messages handled after the update.
    """

    backend: str
    """Active backend name."""
    max_message_bytes: int
    """Largest serialized message accepted by publish."""
    auto_create_topics: bool
    """Create a topic on first publish or subscribe."""
    default_partitions: int
    """Partitions given to automatically created topics."""
    max_attempts: int
    """Handler attempts before a message is dead-lettered."""
    retry_backoff_ms: int
    """First retry delay; doubles each attempt, with jitter."""
    retry_backoff_max_ms: int
    """Upper bound of the retry delay."""
    prefetch: int
    """Messages fetched ahead per partition."""
    dead_letter_suffix: str
    """Suffix naming a topic's dead-letter topic."""
    drain_timeout_ms: int
    """How long unsubscribe and stop wait for handlers in progress."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBusHealth:
    """Result of a health check."""

    status: LiteralHealthStatus
    """``healthy``, ``degraded`` (reachable with problems) or ``unhealthy``."""
    backend: str
    """Backend name."""
    running: bool
    """Whether the service is started."""
    backend_reachable: bool
    """Whether the broker answered the check."""
    latency_ms: float | None
    """Round trip of the check, if it answered."""
    active_subscriptions: int
    """Live subscriptions."""
    paused_subscriptions: int
    """Subscriptions paused by the service."""
    issues: tuple[str, ...]
    """Human-readable problems found, empty when healthy."""
    checked_at: datetime
    """When the check ran."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBusServiceMetrics:
    """Service-level view over the bus counters."""

    running: bool
    """Whether the service is started."""
    started_at: datetime | None
    """Last start time."""
    uptime_seconds: float
    """Seconds since the last start."""
    restarts: int
    """Times the service was started after the first start."""
    configuration_updates: int
    """Successful configuration updates."""
    bus: EventBusMetrics
    """The bus counters."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerInfo:
    """One broker of a Kafka-protocol cluster."""

    node_id: int
    """Broker id."""
    host: str
    """Advertised host."""
    port: int
    """Advertised port."""
    rack: str | None = None
    """Rack, where configured."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaMetadata:
    """Cluster metadata of a Kafka-protocol cluster."""

    cluster_id: str | None
    """Cluster id reported by the brokers."""
    controller_id: int | None
    """Id of the controller broker."""
    brokers: tuple[BrokerInfo, ...]
    """Brokers of the cluster."""
    topics: dict[str, int]
    """Topic name to partition count."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionOffsets:
    """Position of a consumer group on one partition."""

    topic: str
    """Topic."""
    partition: int
    """Partition."""
    committed_offset: int | None
    """Next offset the group will read, ``None`` if never committed."""
    end_offset: int | None
    """Offset after the last message of the partition."""
    lag: int | None
    """``end_offset - committed_offset`` where both are known."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerGroupMember:
    """One member of a consumer group."""

    member_id: str
    """Member id given by the coordinator."""
    client_id: str
    """Client id of the member."""
    host: str
    """Host the member connects from."""
    assignment: tuple[tuple[str, int], ...]
    """(topic, partition) pairs assigned to it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerGroupInfo:
    """Members, assignments and offsets of a consumer group."""

    group_id: str
    """Group id."""
    state: str
    """Coordinator state (Stable, PreparingRebalance, Empty, Dead...)."""
    protocol: str | None
    """Assignment strategy in use."""
    members: tuple[ConsumerGroupMember, ...]
    """Current members."""
    offsets: tuple[PartitionOffsets, ...]
    """Committed offsets and lag per partition."""

    @property
    def total_lag(self) -> int:
        """Sum of the known per-partition lags."""
        return sum(p.lag for p in self.offsets if p.lag is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedpandaMetrics:
    """Metrics of a Redpanda cluster as seen by the client."""

    cluster_id: str | None
    """Cluster id."""
    broker_count: int
    """Brokers in the cluster."""
    topic_count: int
    """Topics in the cluster."""
    partition_count: int
    """Partitions over all topics."""
    messages_produced: int
    """Messages produced by this client."""
    bytes_produced: int
    """Bytes produced by this client."""
    produce_latency_ms_avg: float
    """Mean produce latency of this client."""
    topic_configs: dict[str, dict[str, str]]
    """Configuration of each topic, where the broker returns it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryUsage:
    """Memory held by an in-memory event bus."""

    total_bytes: int
    """Payload bytes plus an estimate of bookkeeping."""
    payload_bytes: int
    """Bytes of retained serialized messages."""
    message_count: int
    """Messages retained over all topics."""
    topic_count: int
    """Topics."""
    per_topic_bytes: dict[str, int]
    """Payload bytes per topic."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishFailure:
    """One message of a batch that the broker did not take."""

    message_id: UUID
    """Id of the message."""
    error_type: str
    """Exception class name."""
    error: str
    """Exception text."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPublishResult:
    """Outcome of ``publish_batch``."""

    topic: str
    """Target topic."""
    success_count: int
    """Messages the broker confirmed."""
    failure_count: int
    """Messages it did not take."""
    failures: tuple[PublishFailure, ...]
    """One entry per failed message."""
    bytes_sent: int
    """Bytes of the confirmed messages as sent (after compression): their
    envelopes, or, where the broker compresses natively, the compressed record
    batches that carried them (record framing included)."""
    compression: LiteralCompressionType
    """Compression applied."""
    duration_ms: float
    """Wall time of the batch."""

    @property
    def success(self) -> bool:
        """True when every message was confirmed."""
        return self.failure_count == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PublisherMetrics:
    """Counters of an event publisher since it was made."""

    messages_published: int
    """Messages confirmed."""
    bytes_published: int
    """Bytes sent, after compression: envelopes with compressed values, or,
    where the broker compresses natively, the compressed record batches as the
    broker took them (record framing included)."""
    uncompressed_bytes: int
    """Bytes of the same messages' envelopes before compression."""
    batches_published: int
    """Calls of publish_batch."""
    failures: int
    """Messages not confirmed."""
    retries: int
    """Extra attempts made by publish_with_retry."""
    compression_ratio: float
    """``uncompressed_bytes / bytes_published`` (1.0 without compression)."""
    latency_ms_p50: float
    """Median publish latency."""
    latency_ms_p95: float
    """95th percentile publish latency."""
    latency_ms_p99: float
    """99th percentile publish latency."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DLQResult:
    """What ``handle_failed_message`` did with a failed message."""

    message_id: UUID
    """Id of the failed message."""
    dead_lettered: bool
    """True when the message was written to the dead-letter topic."""
    retry_eligible: bool
    """True when the retry policy allows another attempt instead."""
    dlq_topic: str
    """Dead-letter topic of the message's topic."""
    dlq_message_id: str | None
    """Id of the dead letter, to retry or inspect it."""
    retry_count: int
    """Attempts made so far."""
    reason: str
    """Why the message failed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DLQMessage:
    """A dead letter with the metadata of its failure."""

    dlq_message_id: str
    """Id of the dead letter."""
    original_message: Any
    """The failed message, byte for byte (an ``EventMessage``)."""
    original_topic: str
    """Topic it failed on."""
    original_partition: int | None
    """Partition it was read from."""
    original_offset: str | None
    """Offset it was read from."""
    consumer_group: str | None
    """Group whose handler failed."""
    failure_reason: str
    """Exception message."""
    exception_type: str
    """Exception class name."""
    stack_trace: str
    """Bounded stack trace."""
    attempt_count: int
    """Attempts made."""
    first_failure_at: datetime
    """First failure."""
    last_failure_at: datetime
    """Last failure."""
    replay_count: int
    """Times the original was already replayed from a dead-letter queue."""
    payload_omitted: str | None = None
    """Why the original's bytes are not in the dead letter (the broker refused
    it as too large), or ``None`` when they are; such a letter cannot be
    retried, and ``original_partition``/``original_offset`` say where the
    original lies."""
    original_size: int | None = None
    """Size in bytes of the original's envelope when it was left out."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureAnalysis:
    """Failure patterns of a topic's dead letters over a time range."""

    topic: str
    """Source topic."""
    time_range_hours: int
    """Window analysed."""
    total_failures: int
    """Dead letters in the window."""
    by_exception_type: dict[str, int]
    """Count per exception class."""
    by_hour: dict[str, int]
    """Count per hour, keyed by ISO hour (``2026-01-31T14:00Z``)."""
    top_error_messages: tuple[tuple[str, int], ...]
    """Most common failure reasons with their counts."""
    affected_topics: tuple[str, ...]
    """Source topics of the dead letters."""
    affected_groups: tuple[str, ...]
    """Consumer groups whose handlers failed."""
    retried: int
    """Dead letters already replayed."""
    retry_outcomes: dict[str, int]
    """Outcome of replays (``replayed``, ``failed_again``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaInfo:
    """A registered schema version."""

    subject: str
    """Subject the schema is registered under."""
    version: int
    """Version within the subject, from 1."""
    schema_id: int
    """Registry-wide id."""
    schema_type: LiteralSchemaType
    """Schema language."""
    schema: dict[str, Any]
    """The schema document."""
    registered_at: datetime | None
    """Registration time, where recorded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CompatibilityResult:
    """Whether a schema may be registered as the next version of a subject."""

    compatible: bool
    """True when the schema passes the subject's compatibility level."""
    compatibility_level: str
    """Level checked (BACKWARD, FORWARD, FULL, NONE...)."""
    reason: str | None
    """Why it is incompatible."""
    messages: tuple[str, ...] = ()
    """Every incompatibility found."""
