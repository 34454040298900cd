"""Settings of the Redpanda backend, read from ``POLYBUS_REDPANDA__*``.

The options are those of the Kafka backend (see
:class:`~polybus_kafka.settings.KafkaSettings`): Redpanda speaks the Kafka
protocol, so only the prefix differs.
"""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from polybus_kafka.settings import KafkaSettings

__all__ = ["RedpandaSettings"]


class RedpandaSettings(KafkaSettings):
    """Options of the Redpanda backend."""

    model_config = SettingsConfigDict(
        env_prefix="POLYBUS_REDPANDA__",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
    )
