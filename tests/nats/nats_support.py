"""Helpers of these tests, importable by test modules and the conftest."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any

import nats
import nats.js.errors

from polybus import EventBus, PolybusSettings
from polybus.settings import RetrySettings
from polybus.testing.harness import fast_settings
from polybus_nats import NatsBackend, NatsSettings
from private_server import PrivateServer

SERVER_URL = os.environ.get("POLYBUS_TEST_NATS_URL", "nats://127.0.0.1:4222")


_RETRY = RetrySettings(max_attempts=3, backoff_ms=5, backoff_max_ms=20, jitter_ms=1)


def core_settings(**overrides: Any) -> PolybusSettings:
    """Core settings for tests: quick retries and drains, no environment."""
    return fast_settings(**{"drain_timeout_ms": 3_000, "retry": _RETRY, **overrides})


class NatsPlace:
    """One test's corner of the server: its prefixes, backends and buses."""

    def __init__(self, url: str) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.url = url
        self.stream_prefix = f"PBT_{suffix}"
        self.subject_prefix = f"pbt.{suffix}"
        self.buses: list[EventBus] = []

    def settings(self, **overrides: Any) -> NatsSettings:
        """Backend settings of this place, with short waits for tests."""
        values: dict[str, Any] = {
            "servers": self.url,
            "stream_prefix": self.stream_prefix,
            "subject_prefix": self.subject_prefix,
            "ack_wait_ms": 3_000,
            "pull_expires_ms": 250,
            "broadcast_inactive_ms": 60_000,
        }
        values.update(overrides)
        return NatsSettings(**values)

    def backend(self, **overrides: Any) -> NatsBackend:
        """A fresh, unstarted backend: another process, as far as NATS knows."""
        return NatsBackend(self.settings(**overrides))

    async def bus(
        self, core: PolybusSettings | None = None, **overrides: Any
    ) -> EventBus:
        """A started bus on a fresh backend, closed after the test."""
        bus = EventBus(self.backend(**overrides), core or core_settings())
        await bus.start()
        self.buses.append(bus)
        return bus

    async def close_buses(self) -> None:
        """Close every bus made here."""
        for bus in self.buses:
            await bus.close()
        self.buses.clear()

    async def clean(self) -> None:
        """Delete every stream of this place and its metadata bucket."""
        client = await nats.connect(self.url)
        try:
            js = client.jetstream()
            bucket = f"KV_{self.stream_prefix}_topics"
            names: list[str] = []
            while page := await js.streams_info(offset=len(names)):
                names.extend(info.config.name or "" for info in page)

            for name in names:
                if name.startswith(f"{self.stream_prefix}_") or name == bucket:
                    await js.delete_stream(name)
        finally:
            await client.close()


class PrivateNats(PrivateServer):
    """A ``nats-server -js`` of this test run, storing streams in a folder."""

    def __init__(self, directory: Path, *extra: str) -> None:
        super().__init__("nats-server", directory)
        self.url = f"nats://127.0.0.1:{self.port}"
        self._extra = extra

    def command(self) -> list[str]:
        return [
            self.binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.directory),
            *self._extra,
        ]

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.2) as sock:
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False
