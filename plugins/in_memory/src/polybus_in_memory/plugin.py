"""In-memory backend plugin for polybus.

Features:

- Topics with partitions; keys are placed with Kafka's murmur2 partitioner.
- Durable consumer groups: members share partitions, rebalanced when a member
  joins or leaves; a group keeps what is published while it has no member.
- Broadcast subscriptions (no group) see what is published while subscribed.
- At-least-once: unacknowledged messages go back to the group when a member
  stops; per-partition order within a group.
- Retention per topic by count (``retention_messages``) and age
  (``retention_ms``).
- Not persistent and not shared between processes: see ``CAPABILITIES``.

Selected with ``POLYBUS_BACKEND=in_memory`` (the default). Options are read from
``POLYBUS_IN_MEMORY__*``: ``RETENTION_MESSAGES``, ``RETENTION_MS``,
``MAX_MESSAGE_BYTES``, ``NETWORK_DELAY_MS``.
"""

from __future__ import annotations

from collections.abc import Sequence

from polybus.backend import Backend, BackendSpec
from polybus.bus import EventBus
from polybus.hookspecs import hookimpl
from polybus.settings import BackendSettings, PolybusSettings
from polybus_in_memory.backend import CAPABILITIES, InMemoryBackend
from polybus_in_memory.bus import InMemoryEventBus
from polybus_in_memory.settings import InMemorySettings

__all__ = ["polybus_backends"]


def _backend(settings: BackendSettings) -> Backend:
    assert isinstance(settings, InMemorySettings)
    return InMemoryBackend(settings)


def _bus(backend: Backend, settings: PolybusSettings) -> EventBus:
    return InMemoryEventBus(backend, settings)


@hookimpl
def polybus_backends() -> Sequence[BackendSpec]:
    """The in-memory backend."""
    return [
        BackendSpec(
            name="in_memory",
            factory=_backend,
            settings_class=InMemorySettings,
            capabilities=CAPABILITIES,
            description="topics and consumer groups in process memory",
            bus_factory=_bus,
        )
    ]
