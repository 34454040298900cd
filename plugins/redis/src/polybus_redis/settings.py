"""Settings of the Redis backend, read from ``POLYBUS_REDIS__*``."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from polybus.settings import BackendSettings

__all__ = ["RedisSettings"]


class RedisSettings(BackendSettings):
    """Options of the Redis Streams backend.

    Every duration is in milliseconds. The password is a secret: it is masked in
    :meth:`public_dict` and never logged.
    """

    model_config = SettingsConfigDict(
        env_prefix="POLYBUS_REDIS__",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
    )

    url: str = "redis://127.0.0.1:6379/0"
    """Server address: ``redis://``, ``rediss://`` (TLS) or ``unix://``."""
    username: str | None = None
    """ACL user name, if the server uses ACLs."""
    password: SecretStr | None = None
    """Password of the user (or of ``requirepass``)."""
    tls: bool = False
    """Speak TLS even when the URL says ``redis://``."""
    tls_ca_file: str | None = None
    """CA bundle that signed the server's certificate."""
    tls_cert_file: str | None = None
    """Client certificate, for servers that ask for one."""
    tls_key_file: str | None = None
    """Key of the client certificate."""
    tls_verify: bool = True
    """Check the server's certificate and host name."""
    pool_size: int = Field(default=128, ge=2)
    """Connections for publishing, acknowledging, leases and metadata."""
    read_pool_size: int = Field(default=1_024, ge=1)
    """Connections for blocking reads, a pool apart so that waiting reads never
    hold up leases and acks. A subscription's partition holds one while it
    waits up to ``block_ms`` for new entries (a broadcast subscription holds
    one for all its partitions); beyond this many, partitions wait their turn
    and are read more slowly, but none is starved."""
    connect_timeout_ms: int = Field(default=5_000, ge=1)
    """How long opening one connection may take."""
    block_ms: int = Field(default=1_000, ge=1)
    """How long one ``XREADGROUP``/``XREAD`` waits for new entries."""
    claim_idle_ms: int = Field(default=30_000, ge=0)
    """After a member vanished without handing its partition over, how long its
    pending entries must have been idle before the partition's new owner takes
    them. A handler that runs longer than this after its member lost its lease
    may see its message handled a second time elsewhere."""
    lease_ttl_ms: int = Field(default=10_000, ge=300)
    """Life of a partition lease and of a group membership; a heartbeat renews
    both every third of it. A member that stops renewing loses its partitions
    after this long."""
    retention_maxlen: int | None = Field(default=None, ge=1)
    """Default retention: about this many entries per partition (``MAXLEN ~``).
    ``None`` keeps every entry. A topic can set its own."""
    retention_ms: int | None = Field(default=None, ge=1)
    """Default retention: entries older than this are trimmed (``MINID ~``).
    ``None`` keeps every entry. A topic can set its own."""
    key_prefix: str = Field(default="polybus:", min_length=1)
    """Prefix of every key the backend writes, so several buses can share a
    server."""
    ack_linger_ms: int = Field(default=2, ge=0)
    """How long an ack may wait for others to share one ``XACK``. Acks are
    always stored before a partition is handed over; only a crash within this
    window brings the message back."""
    publish_retry_ms: int = Field(default=30_000, ge=0)
    """How long a publish keeps retrying while the server cannot be reached."""
    max_message_bytes: int = Field(default=512 * 1024 * 1024, ge=64)
    """Largest envelope accepted (Redis' ``proto-max-bulk-len`` default)."""

    @model_validator(mode="after")
    def _check_tls_files(self) -> RedisSettings:
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file needs tls_cert_file")
        return self

    @property
    def uses_tls(self) -> bool:
        """Whether connections are encrypted."""
        return self.tls or self.url.startswith("rediss://")

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain data, password and URL credentials masked."""
        data = super().public_dict()
        data["url"] = _mask_url(self.url)
        return data


def _mask_url(url: str) -> str:
    """Hide a password written into the URL (``redis://user:pw@host``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url

    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
