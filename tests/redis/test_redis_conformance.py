"""The shared conformance kit of polybus, run against the Redis backend.

The backends come from ``polybus_backend_factory`` in ``conftest.py``: a private
``redis-server`` with an append-only file, one key prefix per test, so the
restart test can restart it without touching the shared server.
"""

from __future__ import annotations

from polybus.testing.suite import ConformanceSuite


class TestRedisConformance(ConformanceSuite):
    """Every clause of ``docs/semantics.md`` on Redis Streams."""
