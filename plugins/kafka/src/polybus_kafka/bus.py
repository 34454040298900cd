"""The Kafka event bus: the common bus plus ``ProtocolKafkaAdapter``."""

from __future__ import annotations

import logging

from polybus.backend import Backend
from polybus.bus import EventBus
from polybus.errors import ConfigurationError
from polybus.settings import PolybusSettings
from polybus.types import ConsumerGroupInfo, KafkaMetadata
from polybus.validation import validate_topic_name
from polybus_kafka.backend import KafkaBackend

__all__ = ["KafkaEventBus"]

logger = logging.getLogger(__name__)


class KafkaEventBus(EventBus):
    """An event bus over Kafka, with the cluster operations of Kafka.

    :param backend: a :class:`KafkaBackend`; one built from the environment
        if omitted.
    :param settings: core settings; read from the environment if omitted.
    """

    backend: KafkaBackend

    def __init__(
        self, backend: Backend | None = None, settings: PolybusSettings | None = None
    ) -> None:
        backend = backend if backend is not None else KafkaBackend()
        if not isinstance(backend, KafkaBackend):
            raise ConfigurationError(
                f"{type(self).__name__} needs a KafkaBackend, got {backend!r}"
            )
        super().__init__(backend, settings)

    async def connect_to_cluster(self, bootstrap_servers: list[str]) -> bool:
        """Start the bus against ``bootstrap_servers``.

        A running bus connected elsewhere is closed first, subscriptions
        included; one already on these servers is left as it is.

        :returns: ``True`` once connected.
        :raises ConfigurationError: if no server is given.
        :raises BackendUnavailableError: if no broker answers.
        """
        servers = [s.strip() for s in bootstrap_servers if s.strip()]
        if not servers:
            raise ConfigurationError("connect_to_cluster needs at least one server")

        current = self.backend.settings
        if self.running and current.bootstrap_servers == servers:
            return True

        if self.running:
            logger.info("Moving the event bus to the Kafka cluster at %s", servers)
            await self.close()
        self.backend.settings = current.model_copy(
            update={"bootstrap_servers": servers}
        )
        await self.start()
        return True

    async def disconnect_from_cluster(self) -> bool:
        """Drain every subscription and disconnect; ``True`` once done."""
        await self.close()
        return True

    async def create_kafka_topic(
        self, topic: str, partitions: int, replication_factor: int
    ) -> bool:
        """Create a topic with its replication factor; ``False`` if it exists.

        :raises ConfigurationError: if a count is below 1.
        :raises KafkaBackendError: if the brokers refuse (too few brokers for
            the replication factor, for example).
        """
        self._check_running()
        validate_topic_name(topic)
        for name, value in (
            ("partitions", partitions),
            ("replication_factor", replication_factor),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(
                    f"{name} must be a positive int, got {value!r}"
                )

        created = await self.backend.create_topic_with_replicas(
            topic, partitions, replication_factor
        )
        self._partition_counts.pop(topic, None)
        return created

    async def delete_kafka_topic(self, topic: str) -> bool:
        """Delete a topic; ``False`` if it did not exist."""
        return await self.delete_topic(topic)

    async def get_kafka_metadata(self) -> KafkaMetadata:
        """Brokers, controller and the partition count of every topic."""
        self._check_running()
        return await self.backend.cluster_metadata()

    async def get_consumer_group_info(self, group_id: str) -> ConsumerGroupInfo:
        """State, members, committed offsets and lag of a consumer group.

        A group that does not exist comes back with state ``Dead`` or
        ``Empty`` (as the broker reports it) and no offsets.
        """
        self._check_running()
        return await self.backend.consumer_group_info(group_id)

    async def reset_consumer_group_offset(
        self, group_id: str, topic: str, offset: int
    ) -> bool:
        """Set the group's next offset on every partition of ``topic``.

        :param offset: next offset to read, clamped to what is retained; ``-2``
            means the start of each partition and ``-1`` its end.
        :returns: ``True`` once committed.
        :raises ConsumerGroupActiveError: if the group has members; stop them
            first, as Kafka only lets an empty group's offsets be moved.
        """
        self._check_running()
        validate_topic_name(topic)
        await self.backend.reset_group_offsets(group_id, topic, offset)
        return True
