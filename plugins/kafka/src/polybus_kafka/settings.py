"""Settings of the Kafka backend, read from ``POLYBUS_KAFKA__*``.

Bootstrap servers may be given as a comma-separated string
(``POLYBUS_KAFKA__BOOTSTRAP_SERVERS=k1:9092,k2:9092``) or a list. The SASL
password and the TLS key password are :class:`pydantic.SecretStr`: they are
masked in ``repr()``, in :meth:`~polybus.settings.BackendSettings.public_dict`
and in every log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from polybus.settings import BackendSettings
from polybus.types import LiteralCompressionType

__all__ = ["KafkaSettings", "SaslMechanism", "SecurityProtocol"]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
"""How clients talk to the brokers."""

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
"""SASL mechanisms the backend can authenticate with."""


class KafkaSettings(BackendSettings):
    """Options of the Kafka backend."""

    model_config = SettingsConfigDict(
        env_prefix="POLYBUS_KAFKA__",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
    )

    bootstrap_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["localhost:9092"], min_length=1
    )
    """``host:port`` of brokers to bootstrap from."""
    client_id: str = "polybus"
    """Client id sent to the brokers; consumers and the admin client add a
    suffix."""
    security_protocol: SecurityProtocol = "PLAINTEXT"
    """``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``."""
    sasl_mechanism: SaslMechanism | None = None
    """``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``; needs a SASL protocol."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password; never printed."""
    ssl_cafile: Path | None = None
    """CA bundle that signed the brokers' certificates."""
    ssl_certfile: Path | None = None
    """Client certificate, for mutual TLS."""
    ssl_keyfile: Path | None = None
    """Private key of the client certificate."""
    ssl_key_password: SecretStr | None = None
    """Password of the private key, if it is encrypted; never printed."""
    ssl_check_hostname: bool = True
    """Check that a broker's certificate names the host connected to."""
    linger_ms: int = Field(default=5, ge=0)
    """How long the producer waits to fill a batch."""
    max_batch_size: int = Field(default=262_144, ge=1024)
    """Largest producer batch per partition, in bytes."""
    max_request_size: int = Field(default=1_048_576, ge=1024)
    """Largest produce request; also bounds a single message."""
    compression: LiteralCompressionType = "none"
    """Record compression of the shared producer: ``none``, ``gzip``,
    ``snappy``, ``lz4`` or ``zstd``; the last three need ``cramjam``. A codec
    given per call to ``EventPublisher`` goes through a producer of its own."""
    session_timeout_ms: int = Field(default=10_000, ge=100)
    """A group member is dropped after this long without a heartbeat. A first
    join takes about half of it."""
    heartbeat_interval_ms: int = Field(default=3_000, ge=10)
    """Time between heartbeats; keep it below a third of the session timeout."""
    max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    """A member that does not fetch for this long leaves its group. The stream
    keeps fetching while handlers are slow, so only a stuck event loop hits it."""
    rebalance_timeout_ms: int | None = Field(default=None, ge=100)
    """How long the group waits for members to give up their partitions in a
    rebalance; the session timeout if ``None``. Raise it to the core's
    ``drain_timeout_ms`` when handlers are slow, or a slow member is dropped
    from the group and its last settled messages are delivered again."""
    request_timeout_ms: int = Field(default=30_000, ge=100)
    """How long a request, a publish included, may wait for the broker."""
    retry_backoff_ms: int = Field(default=100, ge=0)
    """Delay before a failed request is retried."""
    metadata_max_age_ms: int = Field(default=30_000, ge=0)
    """How long topic metadata is trusted before it is fetched again."""
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    """How long a fetch waits on the broker for new records."""
    buffer_per_partition: int = Field(default=1_000, ge=1)
    """Messages a subscription holds per partition beyond the handler's queue
    before it pauses fetching that partition (backpressure)."""
    commit_interval_ms: int = Field(default=500, ge=10)
    """How often settled offsets are committed; also on revoke and close."""
    replication_factor: int = Field(default=1, ge=1)
    """Replicas of a topic created by polybus."""
    enable_idempotence: bool | None = None
    """Idempotent producer: ``True`` requires it, ``False`` turns it off,
    ``None`` tries it and falls back with a warning if the broker refuses."""

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split_servers(cls, value: object) -> object:
        if isinstance(value, str):
            return [server.strip() for server in value.split(",") if server.strip()]
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        uses_sasl = self.security_protocol.startswith("SASL_")
        if self.sasl_mechanism is not None and not uses_sasl:
            raise ValueError(
                f"sasl_mechanism {self.sasl_mechanism!r} needs security_protocol "
                f"SASL_PLAINTEXT or SASL_SSL, not {self.security_protocol!r}"
            )

        if uses_sasl and (
            self.sasl_mechanism is None
            or self.sasl_username is None
            or self.sasl_password is None
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol!r} needs "
                "sasl_mechanism, sasl_username and sasl_password"
            )

        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be "
                f"below session_timeout_ms ({self.session_timeout_ms})"
            )
        return self
