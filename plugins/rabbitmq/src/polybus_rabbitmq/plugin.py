"""RabbitMQ backend plugin for polybus.

Features:

- Topics are durable direct exchanges, routed by partition number; keys are
  placed with Kafka's murmur2 partitioner, as on every backend.
- Topic metadata (partition count, creation time, groups) is kept on the broker
  in a stream queue, so every process sees the same topics; no management
  plugin needed.
- Durable consumer groups: one durable single-active-consumer queue per
  partition (``classic`` or ``quorum``); members share partitions and a group
  keeps what is published while it has no member.
- Broadcast subscriptions (no group): an exclusive, auto-delete queue.
- A topic log per topic, a stream queue bound to every partition: a topic keeps
  what is published to it without groups, and ``read_topic`` (so the
  dead-letter queue handler) lists it without consuming it.
- Publisher confirms, persistent messages, retries of transient failures and a
  robust connection that survives a broker restart.
- At-least-once: unacknowledged messages go back to the group when a member
  stops; per-partition order within a group.
- Not available: starting a new group at the oldest message (the topic log has
  it, but cannot be replayed into a new group's queues in order), per-topic
  message counts; see ``CAPABILITIES``.

Selected with ``POLYBUS_BACKEND=rabbitmq``. Options are read from
``POLYBUS_RABBITMQ__*``: ``URL`` (``amqp://127.0.0.1:5672/``), ``TLS``,
``USERNAME``, ``PASSWORD``, ``VIRTUAL_HOST``, ``PREFETCH``, ``HEARTBEAT``,
``QUEUE_TYPE``, ``NAME_PREFIX`` (``polybus.``), ``CONNECT_TIMEOUT_MS``,
``RECONNECT_INTERVAL_MS``, ``OPERATION_TIMEOUT_MS``, ``CONFIRM_TIMEOUT_MS``,
``REBALANCE_INTERVAL_MS``, ``TOPIC_LOG`` (on), ``TOPIC_LOG_MAX_BYTES``,
``TOPIC_LOG_MAX_AGE`` (``7D``), ``TOPIC_LOG_SEGMENT_BYTES``.
"""

from __future__ import annotations

from collections.abc import Sequence

from polybus.backend import Backend, BackendSpec
from polybus.errors import ConfigurationError
from polybus.hookspecs import hookimpl
from polybus.settings import BackendSettings
from polybus_rabbitmq.backend import CAPABILITIES, RabbitMQBackend
from polybus_rabbitmq.settings import RabbitMQSettings

__all__ = ["polybus_backends"]


def _backend(settings: BackendSettings) -> Backend:
    if not isinstance(settings, RabbitMQSettings):
        raise ConfigurationError(
            f"the rabbitmq backend needs RabbitMQSettings, got {type(settings)!r}"
        )
    return RabbitMQBackend(settings)


@hookimpl
def polybus_backends() -> Sequence[BackendSpec]:
    """The RabbitMQ backend."""
    return [
        BackendSpec(
            name="rabbitmq",
            factory=_backend,
            settings_class=RabbitMQSettings,
            capabilities=CAPABILITIES,
            description="topics as RabbitMQ exchanges, groups as durable queues",
        )
    ]
