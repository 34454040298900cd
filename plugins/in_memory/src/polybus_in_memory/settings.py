"""Settings of the in-memory backend, read from ``POLYBUS_IN_MEMORY__*``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from polybus.settings import BackendSettings

__all__ = ["InMemorySettings"]


class InMemorySettings(BackendSettings):
    """Options of the in-memory backend."""

    model_config = SettingsConfigDict(
        env_prefix="POLYBUS_IN_MEMORY__",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
    )

    retention_messages: int | None = Field(default=None, ge=1)
    """Messages kept per partition; the oldest go first. ``None`` keeps all."""
    retention_ms: int | None = Field(default=None, ge=1)
    """Age after which messages are dropped. ``None`` keeps them."""
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=64)
    """Largest envelope the store accepts."""
    network_delay_ms: int = Field(default=0, ge=0)
    """Delay added to each publish and delivery, to imitate a remote broker."""
