"""The in-memory event bus: the common bus plus ProtocolEventBusInMemory."""

from __future__ import annotations

from polybus.backend import Backend
from polybus.bus import EventBus
from polybus.errors import ConfigurationError
from polybus.settings import PolybusSettings
from polybus.types import MemoryUsage
from polybus_in_memory.backend import InMemoryBackend

__all__ = ["InMemoryEventBus"]


class InMemoryEventBus(EventBus):
    """An event bus whose broker is a store in this process."""

    backend: InMemoryBackend

    def __init__(
        self, backend: Backend | None = None, settings: PolybusSettings | None = None
    ) -> None:
        backend = backend if backend is not None else InMemoryBackend()
        if not isinstance(backend, InMemoryBackend):
            raise ConfigurationError(
                f"InMemoryEventBus needs an InMemoryBackend, got {backend!r}"
            )
        super().__init__(backend, settings)

    async def initialize_memory_store(self) -> bool:
        """Make sure the store is ready; ``True`` once it is."""
        await self.start()
        return True

    async def clear_memory_store(self) -> None:
        """Drop every topic, message and consumer group.

        Live subscriptions are stopped first, as if the broker had gone away.
        """
        for info in self.subscriptions():
            await self.unsubscribe_from_topic(info.subscription_id)

        self.backend.clear()
        self._partition_counts.clear()

    async def get_memory_usage(self) -> MemoryUsage:
        """Bytes held by retained messages."""
        return self.backend.memory_usage()

    async def get_message_count(self, topic: str) -> int:
        """Messages retained in ``topic``.

        :raises TopicNotFoundError: if the topic does not exist.
        """
        return self.backend.topic(topic).message_count()

    async def get_subscription_count(self, topic: str) -> int:
        """Live subscriptions reading ``topic``."""
        return self.backend.streams_of(topic)

    async def simulate_network_delay(self, delay_ms: int) -> None:
        """Add ``delay_ms`` to every publish and delivery from now on (0 stops it).

        :raises ConfigurationError: if ``delay_ms`` is negative.
        """
        if not isinstance(delay_ms, int) or delay_ms < 0:
            raise ConfigurationError(
                f"delay_ms must be a non-negative int, got {delay_ms!r}"
            )
        self.backend.delay_ms = delay_ms
