"""Redpanda backend of polybus, sharing the Kafka backend."""

from polybus_redpanda.backend import CAPABILITIES, RedpandaBackend
from polybus_redpanda.bus import RedpandaEventBus
from polybus_redpanda.settings import RedpandaSettings

__all__ = ["CAPABILITIES", "RedpandaBackend", "RedpandaEventBus", "RedpandaSettings"]
