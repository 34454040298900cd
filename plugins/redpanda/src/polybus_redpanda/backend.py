"""The Redpanda backend: the Kafka backend under Redpanda's name."""

from __future__ import annotations

from typing import Final

from polybus.backend import Capabilities
from polybus_kafka.backend import CAPABILITIES as KAFKA_CAPABILITIES
from polybus_kafka.backend import KafkaBackend
from polybus_redpanda.settings import RedpandaSettings

__all__ = ["CAPABILITIES", "RedpandaBackend"]

CAPABILITIES: Final[Capabilities] = KAFKA_CAPABILITIES
"""Redpanda keeps the Kafka contract, gaps included: see the Kafka backend."""


class RedpandaBackend(KafkaBackend):
    """Redpanda topics and consumer groups over the Kafka protocol.

    :param settings: the backend settings; read from ``POLYBUS_REDPANDA__*``
        if omitted.
    """

    name = "redpanda"
    capabilities = CAPABILITIES

    def __init__(self, settings: RedpandaSettings | None = None) -> None:
        super().__init__(settings or RedpandaSettings())
