"""In-memory backend of polybus: the default, embedded broker."""

from polybus_in_memory.backend import CAPABILITIES, InMemoryBackend
from polybus_in_memory.bus import InMemoryEventBus
from polybus_in_memory.settings import InMemorySettings
from polybus_in_memory.store import InMemoryStore

__all__ = [
    "CAPABILITIES",
    "InMemoryBackend",
    "InMemoryEventBus",
    "InMemorySettings",
    "InMemoryStore",
]
