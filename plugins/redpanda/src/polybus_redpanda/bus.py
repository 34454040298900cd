"""The Redpanda event bus: the Kafka bus plus ``ProtocolRedpandaAdapter``."""

from __future__ import annotations

import logging
from typing import Any

from polybus.backend import Backend
from polybus.errors import ConfigurationError
from polybus.settings import PolybusSettings
from polybus.types import RedpandaMetrics
from polybus.validation import validate_topic_name
from polybus_kafka.bus import KafkaEventBus
from polybus_redpanda.backend import RedpandaBackend

__all__ = ["RedpandaEventBus"]

logger = logging.getLogger(__name__)

_CONFIG_VALUE_TYPES = (str, int, float, bool)


class RedpandaEventBus(KafkaEventBus):
    """An event bus over Redpanda, with Redpanda's cluster operations.

    :param backend: a :class:`RedpandaBackend`; one built from the environment
        if omitted.
    :param settings: core settings; read from the environment if omitted.
    """

    backend: RedpandaBackend

    def __init__(
        self, backend: Backend | None = None, settings: PolybusSettings | None = None
    ) -> None:
        backend = backend if backend is not None else RedpandaBackend()
        if not isinstance(backend, RedpandaBackend):
            raise ConfigurationError(
                f"RedpandaEventBus needs a RedpandaBackend, got {backend!r}"
            )
        super().__init__(backend, settings)

    async def connect_to_redpanda(self, brokers: list[str]) -> bool:
        """Start the bus against ``brokers`` (``host:port`` of the Kafka API).

        :returns: ``True`` once connected.
        :raises BackendUnavailableError: if no broker answers.
        """
        return await self.connect_to_cluster(brokers)

    async def disconnect_from_redpanda(self) -> bool:
        """Drain every subscription and disconnect; ``True`` once done."""
        return await self.disconnect_from_cluster()

    async def create_redpanda_topic(self, topic: str, partitions: int) -> bool:
        """Create a topic with the configured replication factor.

        :returns: ``False`` if it already existed.
        """
        replicas = self.backend.settings.replication_factor
        return await self.create_kafka_topic(topic, partitions, replicas)

    async def delete_redpanda_topic(self, topic: str) -> bool:
        """Delete a topic; ``False`` if it did not exist."""
        return await self.delete_kafka_topic(topic)

    async def get_redpanda_metrics(self) -> RedpandaMetrics:
        """Cluster shape from the metadata, produce counters of this client.

        ``topic_configs`` holds what DescribeConfigs returns: brokers that
        answer it with nothing (Tansu, for topics without overrides) leave a
        topic out.
        """
        self._check_running()
        metadata = await self.backend.cluster_metadata()
        configs = await self.backend.topic_configs(sorted(metadata.topics))
        stats = self.backend.stats

        return RedpandaMetrics(
            cluster_id=metadata.cluster_id,
            broker_count=len(metadata.brokers),
            topic_count=len(metadata.topics),
            partition_count=sum(metadata.topics.values()),
            messages_produced=stats.messages,
            bytes_produced=stats.bytes,
            produce_latency_ms_avg=stats.latency_ms_avg,
            topic_configs=configs,
        )

    async def optimize_redpanda_performance(
        self, topic: str, settings: dict[str, Any]
    ) -> bool:
        """Apply topic configuration entries (``retention.ms``, ``segment.bytes``,
        ``compression.type``...), leaving the others as they are.

        :returns: ``True`` once the brokers accepted every entry.
        :raises ConfigurationError: if ``settings`` is empty or a value is not a
            str, int, float or bool.
        :raises TopicNotFoundError: if the topic does not exist.
        :raises UnsupportedOperationError: if the brokers offer no call to
            alter topic configuration.
        :raises KafkaBackendError: if the brokers refuse an entry.
        """
        self._check_running()
        validate_topic_name(topic)
        if not settings:
            raise ConfigurationError("optimize_redpanda_performance needs settings")
        for name, value in settings.items():
            if not isinstance(name, str) or not isinstance(value, _CONFIG_VALUE_TYPES):
                raise ConfigurationError(
                    f"topic config {name!r} must map a str to a str, int, float "
                    f"or bool, got {value!r}"
                )

        call = await self.backend.alter_topic_configs(topic, settings)
        logger.info(
            "Set %s on topic %s with %s", ", ".join(sorted(settings)), topic, call
        )
        return True
