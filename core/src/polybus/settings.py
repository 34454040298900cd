"""Configuration read from the environment and ``.env`` files.

``POLYBUS_BACKEND`` picks the backend; core options are ``POLYBUS_<OPTION>`` and
nested ones use ``__`` (``POLYBUS_RETRY__MAX_ATTEMPTS=5``). Each backend plugin owns
its own settings class under ``POLYBUS_<BACKEND>__`` (for example
``POLYBUS_KAFKA__BOOTSTRAP_SERVERS``), derived from :class:`BackendSettings`.
Secrets are :class:`pydantic.SecretStr` and are never printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from polybus.types import LiteralEventBusBackend

__all__ = [
    "BackendSettings",
    "DeadLetterSettings",
    "PolybusSettings",
    "RetrySettings",
    "mask_url_password",
]


class RetrySettings(BaseModel):
    """How often and how patiently a failing handler is tried."""

    max_attempts: int = Field(default=3, ge=1, le=1000)
    """Handler attempts before a message is dead-lettered."""
    backoff_ms: int = Field(default=100, ge=0)
    """Delay before the second attempt; it doubles for each further attempt."""
    backoff_max_ms: int = Field(default=10_000, ge=0)
    """Upper bound of the delay."""
    jitter_ms: int = Field(default=50, ge=0)
    """Random extra delay, up to this much, so retries do not bunch up."""


class DeadLetterSettings(BaseModel):
    """Where failed messages go."""

    enabled: bool = True
    """Dead-letter failed messages; if off, they are logged and acknowledged."""
    topic_suffix: str = Field(default=".dlq", pattern=r"^[A-Za-z0-9._-]{1,32}$")
    """A topic's dead letters go to ``<topic><suffix>`` (shortened with a hash
    when that name would be over 249 characters)."""
    max_stack_trace_chars: int = Field(default=8_000, ge=0)
    """Stack traces in dead-letter headers are cut to this length."""
    retry_claim_timeout_ms: int = Field(default=60_000, ge=1_000)
    """A retry of a dead letter first claims it in the ledger; a claim whose
    retry was not recorded within this time (its process died) may be taken
    over by another retry."""


class PolybusSettings(BaseSettings):
    """Settings of the core, read from ``POLYBUS_*`` and ``.env``."""

    model_config = SettingsConfigDict(
        env_prefix="POLYBUS_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        validate_default=True,
    )

    backend: LiteralEventBusBackend | str = "in_memory"
    """Backend name; third-party names work once their plugin is installed."""
    max_message_bytes: int = Field(default=1_048_576, ge=64)
    """Largest serialized message publish accepts."""
    auto_create_topics: bool = True
    """Create a topic with ``default_partitions`` on first publish or subscribe."""
    default_partitions: int = Field(default=1, ge=1)
    """Partitions of automatically created topics."""
    prefetch: int = Field(default=64, ge=1)
    """Messages fetched ahead of the handler, per partition."""
    drain_timeout_ms: int = Field(default=30_000, ge=0)
    """How long unsubscribe and close wait for handlers that are running."""
    metadata_max_age_ms: int = Field(default=30_000, ge=0)
    """How long topic metadata (partition counts) is cached."""
    start_position: str = Field(default="latest", pattern="^(latest|earliest)$")
    """Where a new consumer group starts: ``latest`` or ``earliest``."""
    strict_plugins: bool = False
    """Fail when any installed backend plugin cannot load, not only the chosen one."""
    retry: RetrySettings = Field(default_factory=RetrySettings)
    """Handler retry policy."""
    dead_letter: DeadLetterSettings = Field(default_factory=DeadLetterSettings)
    """Dead-letter queue options."""

    @field_validator("backend")
    @classmethod
    def _normalise_backend(cls, value: str) -> str:
        return value.strip().lower().replace("-", "_")


class BackendSettings(BaseSettings):
    """Base of every backend plugin's settings.

    A subclass sets its own prefix, e.g.
    ``model_config = SettingsConfigDict(env_prefix="POLYBUS_REDIS__")``; ``.env``
    files and ``__`` nesting work as for the core settings.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
    )

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain data, secrets masked, safe to print or log."""
        return {
            name: mask_url_password(value) if isinstance(value, str) else value
            for name, value in self.model_dump(mode="json").items()
        }

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, mask_url_password(value) if isinstance(value, str) else value


def mask_url_password(value: str) -> str:
    """``value`` with the password of a URL in it replaced by ``***``."""
    if "://" not in value or "@" not in value:
        return value

    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if not password:
        return value

    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
