"""Settings of the NATS backend, read from ``POLYBUS_NATS__*``."""

from __future__ import annotations

import ssl
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from polybus.settings import BackendSettings
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

__all__ = ["NatsSettings"]

_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
_SUBJECT_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


class NatsSettings(BackendSettings):
    """Options of the NATS JetStream backend.

    Every duration is in milliseconds. The password and the token are secrets:
    they are masked in :meth:`public_dict` and never logged, and so is any
    ``user:password@`` part of a server URL (see :attr:`redacted_servers`).
    """

    model_config = SettingsConfigDict(
        env_prefix="POLYBUS_NATS__",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
    )

    servers: str = "nats://127.0.0.1:4222"
    """Server URLs, separated by commas; the client fails over between them."""
    user: str | None = None
    """User name, for servers with user/password authentication."""
    password: SecretStr | None = None
    """Password of :attr:`user`."""
    token: SecretStr | None = None
    """Authentication token, for servers that use one instead of a user."""
    tls: bool = False
    """Speak TLS even when the URLs say ``nats://``."""
    tls_ca_file: str | None = None
    """CA bundle that signed the server's certificate."""
    tls_cert_file: str | None = None
    """Client certificate, for servers that ask for one."""
    tls_key_file: str | None = None
    """Key of the client certificate."""
    connect_timeout_ms: int = Field(default=2_000, ge=1)
    """How long opening the connection may take."""
    request_timeout_ms: int = Field(default=5_000, ge=1)
    """How long one JetStream API call or publish acknowledgement may take."""
    stream_prefix: str = Field(default="POLYBUS", pattern=_NAME_PATTERN)
    """Prefix of every stream name and of the metadata bucket
    (``<prefix>_topics``), so several deployments can share a server."""
    subject_prefix: str = Field(default="polybus", pattern=_SUBJECT_PATTERN)
    """First tokens of every subject: a topic's partition ``p`` is the subject
    ``<subject_prefix>.<topic>.<p>``."""
    ack_wait_ms: int = Field(default=30_000, ge=100)
    """How long the server waits for the ack of a message handed to a member
    before it hands the message to another one. A live member renews it every
    third of this while the message is held, so it bounds only how long a
    crashed member's message waits."""
    max_handling_ms: int = Field(default=300_000, ge=100)
    """How long a member keeps renewing a message it has not settled. Past this
    it lets the message go back to the group after :attr:`ack_wait_ms`, so a
    message lost by the member cannot block its partition for ever."""
    max_deliver: int = Field(default=-1)
    """Deliveries of one message to the group after which the server drops it;
    ``-1`` never drops. Retries are counted by polybus, not by this, so keep it
    unlimited unless the server's own limit is wanted."""
    pull_expires_ms: int = Field(default=1_000, ge=50)
    """Life of one pull request. Lower answers a stopped member's leaving
    sooner; higher sends fewer requests while a topic is idle."""
    broadcast_inactive_ms: int = Field(default=300_000, ge=1_000)
    """The server removes a broadcast subscription's consumer after it has
    pulled nothing for this long (a crashed process, or a long pause)."""
    storage: Literal["file", "memory"] = "file"
    """Where the server keeps topic streams and the metadata bucket."""
    replicas: int = Field(default=1, ge=1, le=5)
    """Replicas of each stream, for a clustered server."""
    retention_ms: int | None = Field(default=None, ge=1)
    """Messages older than this are removed; ``None`` keeps them."""
    retention_messages: int | None = Field(default=None, ge=1)
    """Messages kept per partition; the oldest go first. ``None`` keeps all."""

    @model_validator(mode="after")
    def _check_credentials(self) -> NatsSettings:
        if self.password is not None and self.user is None:
            raise ValueError("password needs user")
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file needs tls_cert_file")
        if not self.server_list:
            raise ValueError("servers names no server URL")
        return self

    @property
    def server_list(self) -> list[str]:
        """The server URLs, one per item."""
        return [url.strip() for url in self.servers.split(",") if url.strip()]

    @property
    def redacted_servers(self) -> str:
        """The server URLs without any ``user:password@`` part, safe to log."""
        return ",".join(_redact(url) for url in self.server_list)

    @property
    def metadata_bucket(self) -> str:
        """Name of the key-value bucket holding topic metadata."""
        return f"{self.stream_prefix}_topics"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the connection, or ``None`` when TLS is off."""
        wants_tls = self.tls or any(
            url.startswith("tls://") for url in self.server_list
        )
        if not wants_tls:
            return None

        context = ssl.create_default_context(cafile=self.tls_ca_file)
        if self.tls_cert_file:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url

    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
