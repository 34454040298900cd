"""Kafka backend of polybus, on aiokafka."""

from polybus_kafka._connection import KafkaBackendError
from polybus_kafka.backend import (
    CAPABILITIES,
    ConsumerGroupActiveError,
    KafkaBackend,
    ProduceStats,
)
from polybus_kafka.bus import KafkaEventBus
from polybus_kafka.settings import KafkaSettings
from polybus_kafka.stream import KafkaStream

__all__ = [
    "CAPABILITIES",
    "ConsumerGroupActiveError",
    "KafkaBackend",
    "KafkaBackendError",
    "KafkaEventBus",
    "KafkaSettings",
    "KafkaStream",
    "ProduceStats",
]
