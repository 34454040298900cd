"""Kafka backend plugin for polybus.

Features:

- Topics and partitions are Kafka's; topics are created through the admin API
  with a partition count and a replication factor.
- One shared producer per bus with ``acks=all``, batching (``linger_ms``,
  ``max_batch_size``) and per-message outcomes. Idempotent where the brokers
  allow it (``enable_idempotence``: auto by default, with a warning when the
  brokers refuse).
- Compression ``none``, ``gzip``, ``snappy``, ``lz4`` or ``zstd``, always
  Kafka's own record-batch compression: the ``compression`` setting for the
  shared producer, and a codec per call of ``EventPublisher.publish_batch`` or
  ``publish_compressed`` through a producer of that codec (started on first
  use, closed with the bus). All four codecs are declared in
  ``CAPABILITIES.native_compression``, so the publisher neither compresses
  values nor sets a codec header here, and its byte counts are the compressed
  record batches the broker took. The last three codecs need ``cramjam``
  (``pip install 'polybus-kafka[zstd]'``); a missing one raises
  ``CodecUnavailableError`` before anything is sent.
- Durable consumer groups with manual commits: an offset is committed only
  once every earlier message of its partition is settled; clean revocation on
  rebalance. Broadcast subscriptions read every partition from its end.
- Cluster operations of ``ProtocolKafkaAdapter`` on :class:`KafkaEventBus`.
- What Kafka cannot promise is listed in ``CAPABILITIES``.

Selected with ``POLYBUS_BACKEND=kafka``. Options are read from
``POLYBUS_KAFKA__*``: ``BOOTSTRAP_SERVERS`` (``host:port``, comma-separated),
``CLIENT_ID``, ``SECURITY_PROTOCOL``, ``SASL_MECHANISM``, ``SASL_USERNAME``,
``SASL_PASSWORD``, ``SSL_CAFILE``, ``SSL_CERTFILE``, ``SSL_KEYFILE``,
``COMPRESSION``, ``LINGER_MS``, ``MAX_BATCH_SIZE``, ``SESSION_TIMEOUT_MS``,
``HEARTBEAT_INTERVAL_MS``, ``MAX_POLL_INTERVAL_MS``, ``REQUEST_TIMEOUT_MS``,
``REPLICATION_FACTOR``, ``ENABLE_IDEMPOTENCE`` and more; see
:class:`~polybus_kafka.settings.KafkaSettings`.
"""

from __future__ import annotations

from collections.abc import Sequence

from polybus.backend import Backend, BackendSpec
from polybus.bus import EventBus
from polybus.errors import ConfigurationError
from polybus.hookspecs import hookimpl
from polybus.settings import BackendSettings, PolybusSettings
from polybus_kafka.backend import CAPABILITIES, KafkaBackend
from polybus_kafka.bus import KafkaEventBus
from polybus_kafka.settings import KafkaSettings

__all__ = ["polybus_backends"]


def _backend(settings: BackendSettings) -> Backend:
    if not isinstance(settings, KafkaSettings):
        raise ConfigurationError(
            f"the kafka backend takes KafkaSettings, got {type(settings).__name__}"
        )
    return KafkaBackend(settings)


def _bus(backend: Backend, settings: PolybusSettings) -> EventBus:
    return KafkaEventBus(backend, settings)


@hookimpl
def polybus_backends() -> Sequence[BackendSpec]:
    """The Kafka backend."""
    return [
        BackendSpec(
            name="kafka",
            factory=_backend,
            settings_class=KafkaSettings,
            capabilities=CAPABILITIES,
            description="Apache Kafka and Kafka-compatible brokers, on aiokafka",
            bus_factory=_bus,
        )
    ]
