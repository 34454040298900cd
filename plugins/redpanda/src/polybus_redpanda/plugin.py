"""Redpanda backend plugin for polybus.

Features:

- Everything the Kafka backend does (it is the same code): Kafka topics and
  partitions, an ``acks=all`` producer, idempotent where the brokers allow it,
  record-batch compression by the broker's protocol (also for a per-call codec
  of ``EventPublisher``), durable consumer groups with commits of settled
  offsets only, broadcast subscriptions. Its gaps are the Kafka backend's.
- ``ProtocolRedpandaAdapter`` on :class:`RedpandaEventBus`: topics, metrics
  from the metadata and this client's produce counters, and topic
  configuration through IncrementalAlterConfigs (or AlterConfigs).

Selected with ``POLYBUS_BACKEND=redpanda``. Options are read from
``POLYBUS_REDPANDA__*`` and are the Kafka backend's: ``BOOTSTRAP_SERVERS``,
``CLIENT_ID``, ``SECURITY_PROTOCOL``, ``SASL_MECHANISM``, ``SASL_USERNAME``,
``SASL_PASSWORD``, ``SSL_CAFILE``, ``COMPRESSION``, ``SESSION_TIMEOUT_MS``,
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
from polybus_redpanda.backend import CAPABILITIES, RedpandaBackend
from polybus_redpanda.bus import RedpandaEventBus
from polybus_redpanda.settings import RedpandaSettings

__all__ = ["polybus_backends"]


def _backend(settings: BackendSettings) -> Backend:
    if not isinstance(settings, RedpandaSettings):
        raise ConfigurationError(
            "the redpanda backend takes RedpandaSettings, got "
            f"{type(settings).__name__}"
        )
    return RedpandaBackend(settings)


def _bus(backend: Backend, settings: PolybusSettings) -> EventBus:
    return RedpandaEventBus(backend, settings)


@hookimpl
def polybus_backends() -> Sequence[BackendSpec]:
    """The Redpanda backend."""
    return [
        BackendSpec(
            name="redpanda",
            factory=_backend,
            settings_class=RedpandaSettings,
            capabilities=CAPABILITIES,
            description="Redpanda, over the Kafka protocol (shares polybus-kafka)",
            bus_factory=_bus,
        )
    ]
