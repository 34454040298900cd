"""The ONEX event bus protocols, with their names and signatures.

Each is a :func:`typing.runtime_checkable` :class:`typing.Protocol`. polybus
implements them: :class:`polybus.EventBus` is a :class:`ProtocolEventBus` and a
:class:`ProtocolEventBusService`, :class:`polybus.EventMessage` a
:class:`ProtocolEventMessage`, and so on; the types they return are the records
of :mod:`polybus.types`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from polybus.types import (
    BatchPublishResult,
    CompatibilityResult,
    ConsumerGroupInfo,
    ContextValue,
    DLQMessage,
    DLQResult,
    EventBusConfiguration,
    EventBusHealth,
    EventBusMetrics,
    EventBusServiceMetrics,
    FailureAnalysis,
    KafkaMetadata,
    LiteralCompressionType,
    LiteralSchemaType,
    MemoryUsage,
    PublisherMetrics,
    RedpandaMetrics,
    SchemaInfo,
    SubscriptionInfo,
    TopicInfo,
    TopicMetrics,
)

__all__ = [
    "ProtocolDLQHandler",
    "ProtocolEventBus",
    "ProtocolEventBusInMemory",
    "ProtocolEventBusService",
    "ProtocolEventHandler",
    "ProtocolEventMessage",
    "ProtocolEventPublisher",
    "ProtocolKafkaAdapter",
    "ProtocolRedpandaAdapter",
    "ProtocolSchemaRegistry",
]


@runtime_checkable
class ProtocolEventMessage(Protocol):
    """An event with its payload, key, typed headers and tracing ids."""

    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, ContextValue]
    offset: str | None
    partition: int | None
    timestamp: datetime
    correlation_id: UUID | None
    causation_id: UUID | None
    message_id: UUID

    async def serialize(self) -> bytes: ...

    async def deserialize(self, data: bytes) -> None: ...

    async def ack(self) -> None: ...

    async def nack(self, requeue: bool = True) -> None: ...


@runtime_checkable
class ProtocolEventHandler(Protocol):
    """An async callable that handles one message."""

    async def __call__(
        self, message: ProtocolEventMessage, context: dict[str, ContextValue]
    ) -> None: ...


@runtime_checkable
class ProtocolEventBus(Protocol):
    """Publishing, subscriptions and topics over one backend."""

    async def publish_event(
        self,
        topic: str,
        message: ProtocolEventMessage,
        partition_key: str | None = None,
    ) -> None: ...

    async def subscribe_to_topic(
        self,
        topic: str,
        handler: ProtocolEventHandler,
        group_id: str | None = None,
    ) -> str: ...

    async def unsubscribe_from_topic(self, subscription_id: str) -> None: ...

    async def create_topic(self, topic: str, partition_count: int = 1) -> bool: ...

    async def delete_topic(self, topic: str) -> bool: ...

    async def get_topic_info(self, topic: str) -> TopicInfo | None: ...

    async def get_subscription_info(
        self, subscription_id: str
    ) -> SubscriptionInfo | None: ...

    async def pause_subscription(self, subscription_id: str) -> bool: ...

    async def resume_subscription(self, subscription_id: str) -> bool: ...

    async def get_bus_metrics(self) -> EventBusMetrics: ...

    async def get_topic_metrics(self, topic: str) -> TopicMetrics: ...


@runtime_checkable
class ProtocolEventBusService(Protocol):
    """Service-level control of an event bus."""

    async def start_service(self) -> bool: ...

    async def stop_service(self) -> bool: ...

    async def is_service_running(self) -> bool: ...

    async def get_service_configuration(self) -> EventBusConfiguration: ...

    async def update_service_configuration(
        self, configuration: EventBusConfiguration
    ) -> bool: ...

    async def get_service_health(self) -> EventBusHealth: ...

    async def get_service_metrics(self) -> EventBusServiceMetrics: ...


@runtime_checkable
class ProtocolKafkaAdapter(Protocol):
    """Kafka cluster operations."""

    async def connect_to_cluster(self, bootstrap_servers: list[str]) -> bool: ...

    async def disconnect_from_cluster(self) -> bool: ...

    async def create_kafka_topic(
        self, topic: str, partitions: int, replication_factor: int
    ) -> bool: ...

    async def delete_kafka_topic(self, topic: str) -> bool: ...

    async def get_kafka_metadata(self) -> KafkaMetadata: ...

    async def get_consumer_group_info(self, group_id: str) -> ConsumerGroupInfo: ...

    async def reset_consumer_group_offset(
        self, group_id: str, topic: str, offset: int
    ) -> bool: ...


@runtime_checkable
class ProtocolRedpandaAdapter(Protocol):
    """Redpanda cluster operations."""

    async def connect_to_redpanda(self, brokers: list[str]) -> bool: ...

    async def disconnect_from_redpanda(self) -> bool: ...

    async def create_redpanda_topic(self, topic: str, partitions: int) -> bool: ...

    async def delete_redpanda_topic(self, topic: str) -> bool: ...

    async def get_redpanda_metrics(self) -> RedpandaMetrics: ...

    async def optimize_redpanda_performance(
        self, topic: str, settings: dict[str, Any]
    ) -> bool: ...


@runtime_checkable
class ProtocolEventBusInMemory(Protocol):
    """Extra operations of an in-memory event bus."""

    async def initialize_memory_store(self) -> bool: ...

    async def clear_memory_store(self) -> None: ...

    async def get_memory_usage(self) -> MemoryUsage: ...

    async def get_message_count(self, topic: str) -> int: ...

    async def get_subscription_count(self, topic: str) -> int: ...

    async def simulate_network_delay(self, delay_ms: int) -> None: ...


@runtime_checkable
class ProtocolEventPublisher(Protocol):
    """Batched, compressed and retried publishing."""

    async def publish_batch(
        self,
        topic: str,
        messages: list[ProtocolEventMessage],
        compression: LiteralCompressionType | None = None,
    ) -> BatchPublishResult: ...

    async def publish_with_retry(
        self,
        topic: str,
        message: ProtocolEventMessage,
        max_retries: int = 3,
        backoff_ms: int = 1000,
    ) -> bool: ...

    async def publish_compressed(
        self,
        topic: str,
        message: ProtocolEventMessage,
        compression_type: LiteralCompressionType,
    ) -> bool: ...

    async def get_publisher_metrics(self) -> PublisherMetrics: ...


@runtime_checkable
class ProtocolDLQHandler(Protocol):
    """Dead-letter queue handling."""

    async def handle_failed_message(
        self,
        message: ProtocolEventMessage,
        error: Exception,
        retry_count: int,
    ) -> DLQResult: ...

    async def retry_failed_message(self, dlq_message_id: str) -> bool: ...

    async def get_dlq_messages(
        self, topic: str, limit: int = 100
    ) -> list[DLQMessage]: ...

    async def clear_dlq_messages(self, topic: str, older_than_hours: int) -> int: ...

    async def analyze_failure_patterns(
        self, topic: str, time_range_hours: int
    ) -> FailureAnalysis: ...


@runtime_checkable
class ProtocolSchemaRegistry(Protocol):
    """Event schema registration, versioning and compatibility."""

    async def register_schema(
        self,
        subject: str,
        schema: dict[str, Any],
        schema_type: LiteralSchemaType = "AVRO",
    ) -> int: ...

    async def get_schema(
        self, subject: str, version: int | None = None
    ) -> SchemaInfo: ...

    async def check_compatibility(
        self, subject: str, schema: dict[str, Any]
    ) -> CompatibilityResult: ...

    async def get_schema_versions(self, subject: str) -> list[int]: ...

    async def delete_schema(self, subject: str, version: int) -> bool: ...

    async def get_subjects(self) -> list[str]: ...
