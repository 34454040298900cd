"""Fixtures of the RabbitMQ backend tests, against the real broker.

The broker is ``POLYBUS_TEST_RABBITMQ_URL`` (default ``amqp://127.0.0.1:5672/``,
guest/guest). It is shared: each test gets its own name prefix, so its topics,
queues and catalog are its own, and removes them when it ends. Without a broker
the tests are skipped.

The conformance kit of :mod:`polybus.testing` is wired in through
``polybus_backend_factory``; it gets no ``polybus_restart_server``, so the one
broker restart of this suite is ``test_rabbitmq_restart.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator

import aiormq.exceptions
import pytest
from yarl import URL

from polybus.testing.harness import BackendFactory
from polybus.testing.outage import Outage, TcpOutage
from polybus_rabbitmq import RabbitMQBackend, RabbitMQSettings

RABBITMQ_URL = os.environ.get("POLYBUS_TEST_RABBITMQ_URL", "amqp://127.0.0.1:5672/")

SettingsFactory = Callable[..., RabbitMQSettings]


def _broker_reachable() -> bool:
    url = URL(RABBITMQ_URL)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5672), 2):
            return True
    except OSError:
        return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip this directory's tests when no broker listens."""
    if _broker_reachable():
        return

    skip = pytest.mark.skip(reason=f"no RabbitMQ broker at {RABBITMQ_URL}")
    for item in items:
        if "tests/rabbitmq" in str(item.path):
            item.add_marker(skip)


async def remove_namespace(settings: RabbitMQSettings) -> None:
    """Delete every topic under ``settings.name_prefix``, then its catalog."""
    backend = RabbitMQBackend(settings)
    await backend.connect()
    try:
        for topic in await backend.list_topics():
            await backend.delete_topic(topic)
        async with backend._channel() as channel:
            await channel.queue_delete(backend.topology.catalog)
    finally:
        await backend.close()


@pytest.fixture
def rabbitmq_settings() -> Iterator[SettingsFactory]:
    """Makes settings in one fresh namespace, removed after the test."""
    prefix = f"polybus-test.{uuid.uuid4().hex[:10]}."
    used = False

    def make(**overrides: object) -> RabbitMQSettings:
        nonlocal used
        used = True
        options: dict[str, object] = {
            "url": RABBITMQ_URL,
            "name_prefix": prefix,
            "rebalance_interval_ms": 200,
            "operation_timeout_ms": 60_000,
        }
        options.update(overrides)
        return RabbitMQSettings.model_validate(options)

    yield make

    if used:
        with contextlib.suppress(aiormq.exceptions.AMQPError, ConnectionError):
            asyncio.run(remove_namespace(make()))


@pytest.fixture
def polybus_backend_factory(rabbitmq_settings: SettingsFactory) -> BackendFactory:
    """Fresh backends on one namespace of the test broker, for the kit."""
    settings = rabbitmq_settings()
    return lambda: RabbitMQBackend(settings)


@pytest.fixture
def polybus_outage(rabbitmq_settings: SettingsFactory) -> Iterator[Outage]:
    """Backends that reach the test broker through a relay the kit can cut."""
    url = URL(RABBITMQ_URL)
    with TcpOutage((url.host or "127.0.0.1", url.port or 5672)) as relay:
        settings = rabbitmq_settings(url=str(url.with_port(relay.port)))
        yield Outage.through(relay, lambda: RabbitMQBackend(settings))
