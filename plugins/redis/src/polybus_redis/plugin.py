"""Redis Streams backend plugin for polybus.

Features:

- Topics with partitions: one Redis stream per partition, so each partition
  keeps its order; keys are placed with Kafka's murmur2 partitioner.
- Topic metadata (partition count, creation time, retention, groups) kept in
  Redis: every process connected to the server sees the same topics.
- Durable consumer groups on stream consumer groups (``XREADGROUP``/``XACK``).
  Members share partitions through leases that expire when a member dies;
  a partition is revoked from its old owner before the new one reads it, and
  the new owner first takes over the pending entries, in order.
- Crash recovery: entries left pending by a member that vanished are claimed
  (``XAUTOCLAIM``) once idle for ``claim_idle_ms``; trimmed ones are dropped
  with a warning.
- Broadcast subscriptions (no group) see what is added while subscribed.
- Retention per topic: about N entries per partition (``MAXLEN ~``) and/or a
  maximum age (``MINID ~``), with defaults in the settings.
- Survives lost connections and server restarts: publishes retry with backoff,
  readers resume where they stopped and re-create a lost group.
- Persistence is the server's: see ``CAPABILITIES.limitations``.

Selected with ``POLYBUS_BACKEND=redis``. Options are read from
``POLYBUS_REDIS__*``: ``URL`` (``redis://``, ``rediss://``, ``unix://``),
``USERNAME``, ``PASSWORD``, ``TLS``, ``TLS_CA_FILE``, ``TLS_CERT_FILE``,
``TLS_KEY_FILE``, ``TLS_VERIFY``, ``POOL_SIZE``, ``BLOCK_MS``,
``CLAIM_IDLE_MS``, ``LEASE_TTL_MS``, ``RETENTION_MAXLEN``, ``RETENTION_MS``,
``KEY_PREFIX``, ``PUBLISH_RETRY_MS``, ``MAX_MESSAGE_BYTES``.
"""

from __future__ import annotations

from collections.abc import Sequence

from polybus.backend import Backend, BackendSpec
from polybus.hookspecs import hookimpl
from polybus.settings import BackendSettings
from polybus_redis.backend import CAPABILITIES, RedisBackend
from polybus_redis.settings import RedisSettings

__all__ = ["polybus_backends"]


def _backend(settings: BackendSettings) -> Backend:
    assert isinstance(settings, RedisSettings)
    return RedisBackend(settings)


@hookimpl
def polybus_backends() -> Sequence[BackendSpec]:
    """The Redis Streams backend."""
    return [
        BackendSpec(
            name="redis",
            factory=_backend,
            settings_class=RedisSettings,
            capabilities=CAPABILITIES,
            description="durable topics and consumer groups on Redis Streams",
        )
    ]
