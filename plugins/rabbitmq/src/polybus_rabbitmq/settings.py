"""Settings of the RabbitMQ backend, read from ``POLYBUS_RABBITMQ__*``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict
from yarl import URL

from polybus.settings import BackendSettings

__all__ = ["QueueType", "RabbitMQSettings"]

QueueType = Literal["classic", "quorum"]
"""Kind of the durable queues that hold a consumer group's partitions."""


class RabbitMQSettings(BackendSettings):
    """Options of the RabbitMQ backend.

    ``url`` gives the host, port and, optionally, credentials and virtual host;
    ``username``, ``password`` and ``virtual_host`` override what it says.
    """

    model_config = SettingsConfigDict(
        env_prefix="POLYBUS_RABBITMQ__",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
    )

    url: str = "amqp://127.0.0.1:5672/"
    """Broker address, ``amqp://host:port/vhost`` or ``amqps://...``."""
    tls: bool = False
    """Connect with TLS (as ``amqps://`` does)."""
    username: str | None = None
    """User name; ``guest`` if neither this nor the URL gives one."""
    password: SecretStr | None = None
    """Password; ``guest`` if neither this nor the URL gives one."""
    virtual_host: str | None = None
    """Virtual host; the URL's path, else ``/``."""
    prefetch: int = Field(default=64, ge=1, le=65_535)
    """Unacknowledged messages the broker hands each consumer (basic.qos)."""
    heartbeat: int = Field(default=60, ge=0)
    """AMQP heartbeat, in seconds; 0 switches heartbeats off."""
    queue_type: QueueType = "classic"
    """Type of a consumer group's durable queues: ``classic`` or ``quorum``."""
    name_prefix: str = Field(
        default="polybus.", max_length=64, pattern=r"^[A-Za-z0-9_.\-]*$"
    )
    """Put before every exchange and queue name this backend makes."""
    max_message_bytes: int = Field(default=128 * 1024 * 1024, ge=64)
    """Largest envelope sent; keep it at or under the broker's
    ``max_message_size`` (128 MiB by default), which closes the channel of a
    larger publish."""
    connect_timeout_ms: int = Field(default=10_000, ge=1)
    """How long connecting waits for the broker."""
    reconnect_interval_ms: int = Field(default=1_000, ge=10)
    """Pause between reconnection attempts after the connection is lost."""
    operation_timeout_ms: int = Field(default=30_000, ge=100)
    """How long a publish or topic operation keeps retrying transient failures
    (lost connection, broker restart, negative confirm) before it gives up."""
    confirm_timeout_ms: int = Field(default=10_000, ge=100)
    """How long a publish attempt waits while no confirm comes (the confirms of
    a batch come one after another), and how long ``close()`` waits for the
    confirms of publishes in flight."""
    rebalance_interval_ms: int = Field(default=2_000, ge=50)
    """How often a group member checks that it does not read more than its share
    of the partitions."""
    topic_log: bool = True
    """Keep every topic's messages in a stream queue, its topic log, so they can
    be read back without being consumed (``read_topic``, the dead-letter queue)
    and are kept while no consumer group reads the topic."""
    topic_log_max_bytes: int | None = Field(default=None, ge=1)
    """Size a topic log may reach before its oldest segments are removed
    (``x-max-length-bytes``); unbounded if ``None``."""
    topic_log_max_age: str | None = Field(
        default="7D", pattern=r"^[1-9][0-9]*[YMDhms]$"
    )
    """Age after which a topic log's segments are removed (``x-max-age``), as a
    number and a unit of ``Y``, ``M``, ``D``, ``h``, ``m`` or ``s``; kept forever
    if ``None`` or empty."""
    topic_log_segment_bytes: int | None = Field(default=None, ge=1)
    """Size of one segment of a topic log (``x-stream-max-segment-size-bytes``);
    retention removes whole segments only. The broker's default (500 MB) if
    ``None``."""

    @field_validator(
        "topic_log_max_bytes",
        "topic_log_max_age",
        "topic_log_segment_bytes",
        mode="before",
    )
    @classmethod
    def _empty_is_unlimited(cls, value: object) -> object:
        """An empty value (``POLYBUS_RABBITMQ__TOPIC_LOG_MAX_AGE=``) sets no limit."""
        return None if value == "" else value

    def connection_parameters(self) -> dict[str, Any]:
        """Keyword arguments of :func:`aio_pika.connect_robust`, password included.

        The result holds the password: never log it; log :meth:`describe` instead.
        """
        url = URL(self.url)
        secure = self.tls or url.scheme == "amqps"
        login = self.username or url.user or "guest"
        if self.password is not None:
            password = self.password.get_secret_value()
        else:
            password = url.password or "guest"
        vhost = self.virtual_host
        if vhost is None:
            vhost = url.path[1:] if len(url.path) > 1 else "/"

        return {
            "host": url.host or "127.0.0.1",
            "port": url.port or (5671 if secure else 5672),
            "login": login,
            "password": password,
            "virtualhost": vhost,
            "ssl": secure,
            "heartbeat": self.heartbeat,
            "reconnect_interval": self.reconnect_interval_ms / 1000,
        }

    def describe(self) -> str:
        """Where this connects to, without the password, for logs and errors."""
        parameters = self.connection_parameters()
        scheme = "amqps" if parameters["ssl"] else "amqp"
        return (
            f"{scheme}://{parameters['login']}@{parameters['host']}:"
            f"{parameters['port']} (vhost {parameters['virtualhost']!r})"
        )
