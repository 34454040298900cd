"""Fixtures of the Redpanda backend tests: one broker for the session.

A Tansu process stands in for Redpanda (both speak the Kafka protocol) unless
``POLYBUS_REDPANDA_BOOTSTRAP`` names a real Redpanda (``host:port``). Every
test makes its own topics and groups with unique names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from polybus.testing.harness import BackendFactory
from polybus.testing.outage import Outage
from polybus_kafka.testing import (
    KafkaTestServer,
    kafka_outage_server,
    kafka_test_server,
)
from polybus_redpanda import RedpandaBackend, RedpandaSettings

BOOTSTRAP_ENV_VAR = "POLYBUS_REDPANDA_BOOTSTRAP"


def pytest_configure(config: pytest.Config) -> None:
    """Load the conformance kit's fixtures unless an entry point already did."""
    import polybus.testing.plugin as kit

    if not config.pluginmanager.is_registered(kit):
        config.pluginmanager.register(kit, "polybus.testing.plugin")


@pytest.fixture(scope="session")
def redpanda_server() -> Iterator[KafkaTestServer[RedpandaBackend]]:
    """The session's broker: a real Redpanda if configured, else Tansu."""
    with kafka_test_server(
        BOOTSTRAP_ENV_VAR, RedpandaBackend, RedpandaSettings
    ) as server:
        yield server


@pytest.fixture
def polybus_backend_factory(
    redpanda_server: KafkaTestServer[RedpandaBackend],
) -> BackendFactory:
    """Backends of the session's broker, for the conformance suite."""
    return redpanda_server.backend


@pytest.fixture
def polybus_restart_server(
    redpanda_server: KafkaTestServer[RedpandaBackend],
) -> Callable[[], object] | None:
    """Restart the session's Tansu broker; ``None`` for an external broker."""
    tansu = redpanda_server.tansu
    return tansu.restart if tansu is not None else None


@pytest.fixture
def polybus_outage() -> Iterator[Outage | None]:
    """A broker of its own that the kit can cut off; ``None`` if external."""
    with kafka_outage_server(
        BOOTSTRAP_ENV_VAR, RedpandaBackend, RedpandaSettings
    ) as outage:
        yield outage
