"""Helpers of these tests, importable by test modules and the conftest."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from polybus.bus import EventBus
from polybus.settings import PolybusSettings, RetrySettings
from polybus.testing.harness import fast_settings
from polybus_redis import RedisBackend, RedisSettings
from private_server import PrivateServer

SHARED_URL = os.environ.get("POLYBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


TEST_TIMEOUT = 90.0


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout: float = 15.0,
) -> None:
    """Return once ``condition()`` holds; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout

    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return

        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.01)


_RETRY = RetrySettings(max_attempts=3, backoff_ms=5, backoff_max_ms=20, jitter_ms=1)


def core_settings(**overrides: Any) -> PolybusSettings:
    """Core settings for tests: quick retries and drains."""
    return fast_settings(**{"drain_timeout_ms": 3_000, "retry": _RETRY, **overrides})


class RedisEnv:
    """Backends and buses on one Redis server under one key prefix."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"polybus-test-{uuid.uuid4().hex[:10]}:"
        self.buses: list[EventBus] = []
        """Buses made by :meth:`bus`; the test closes them."""

    def settings(self, **overrides: Any) -> RedisSettings:
        """Backend settings with short leases and blocking reads, for tests."""
        values: dict[str, Any] = {
            "url": self.url,
            "key_prefix": self.prefix,
            "block_ms": 200,
            "lease_ttl_ms": 1_500,
            "claim_idle_ms": 500,
            "publish_retry_ms": 20_000,
        }
        values.update(overrides)
        return RedisSettings(**values)

    def backend(self, **overrides: Any) -> RedisBackend:
        """A fresh, unstarted backend: another process, as far as Redis knows."""
        return RedisBackend(self.settings(**overrides))

    async def bus(
        self, core: PolybusSettings | None = None, **overrides: Any
    ) -> EventBus:
        """A started bus on a fresh backend, closed after the test."""
        bus = EventBus(self.backend(**overrides), core or core_settings())
        await bus.start()
        self.buses.append(bus)
        return bus

    async def aclose(self) -> None:
        """Close every bus made here that is still running."""
        for bus in self.buses:
            await bus.close()

    def stored_keys(self) -> list[str]:
        """Every key under this environment's prefix."""
        client = redis.Redis.from_url(self.url)
        try:
            return sorted(k.decode() for k in client.scan_iter(f"{self.prefix}*"))
        finally:
            client.close()

    def cleanup(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            keys = list(client.scan_iter(f"{self.prefix}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


class PrivateRedis(PrivateServer):
    """A ``redis-server`` of this test run, persisting to an append-only file."""

    def __init__(self, directory: Path) -> None:
        super().__init__("redis-server", directory)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]

    def answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            return bool(client.ping())
        except (redis.exceptions.BusyLoadingError, redis.ConnectionError):
            return False
        finally:
            client.close()
