"""Test support: a Kafka-compatible broker for a test session.

:func:`kafka_test_server` yields a :class:`KafkaTestServer`: the broker named by
an environment variable if it is set, else a Tansu process (see
:mod:`polybus.testing.tansu`) that is stopped afterwards. Tansu keeps
everything in memory, so backends made for it declare ``persistent=False``.

Settings made here use a one-second group session with 100 ms heartbeats: a
group join on Tansu takes about half the session timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from polybus.backend import Capabilities
from polybus.testing.harness import free_port
from polybus.testing.outage import Outage, TcpOutage
from polybus.testing.tansu import TansuBroker
from polybus_kafka.backend import KafkaBackend
from polybus_kafka.settings import KafkaSettings

__all__ = [
    "KafkaTestServer",
    "kafka_outage_server",
    "kafka_test_server",
    "on_tansu",
]

B = TypeVar("B", bound=KafkaBackend)


def on_tansu(capabilities: Capabilities) -> Capabilities:
    """``capabilities`` as they hold on Tansu, which forgets all on restart."""
    return dataclasses.replace(
        capabilities,
        persistent=False,
        limitations={
            **capabilities.limitations,
            "persistent": "the Tansu test broker keeps topics, records and "
            "offsets in memory; a restart loses them",
        },
    )


@dataclasses.dataclass(frozen=True)
class KafkaTestServer(Generic[B]):
    """A broker for tests and how to make backends of it."""

    bootstrap_servers: str
    """``host:port`` list to bootstrap from."""
    tansu: TansuBroker | None
    """The Tansu process, or ``None`` for an external broker."""
    backend_class: type[B]
    """Backend class to build."""
    settings_class: type[KafkaSettings] = KafkaSettings
    """Its settings class."""

    def settings(self, **overrides: Any) -> KafkaSettings:
        """Settings for tests: short sessions, fast commits, short timeouts."""
        values: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": "polybus-test",
            "session_timeout_ms": 1_000,
            "heartbeat_interval_ms": 100,
            "request_timeout_ms": 10_000,
            "commit_interval_ms": 100,
            "metadata_max_age_ms": 5_000,
            "linger_ms": 2,
        }
        values.update(overrides)
        return self.settings_class(**values)

    def backend(self, **overrides: Any) -> B:
        """A fresh, unstarted backend on this broker.

        :param overrides: settings fields.
        """
        backend = self.backend_class(self.settings(**overrides))
        if self.tansu is not None:
            backend.capabilities = on_tansu(backend.capabilities)
        return backend


@contextlib.contextmanager
def kafka_test_server(
    env_var: str,
    backend_class: type[B],
    settings_class: type[KafkaSettings] = KafkaSettings,
) -> Iterator[KafkaTestServer[B]]:
    """The broker named by ``env_var``, or a Tansu broker for the block.

    :param env_var: variable holding ``host:port[,host:port]`` of an external
        broker.
    :param backend_class: backend class the server makes.
    :param settings_class: settings class of that backend.
    :raises TansuUnavailableError: if Tansu is needed and not installed.
    """
    external = os.environ.get(env_var)
    if external:
        yield KafkaTestServer(external, None, backend_class, settings_class)
        return

    broker = TansuBroker()
    broker.start()
    try:
        yield KafkaTestServer(
            broker.bootstrap_servers, broker, backend_class, settings_class
        )
    finally:
        broker.stop()


@contextlib.contextmanager
def kafka_outage_server(
    env_var: str,
    backend_class: type[B],
    settings_class: type[KafkaSettings] = KafkaSettings,
) -> Iterator[Outage | None]:
    """A Tansu broker that clients reach only through a :class:`TcpOutage`.

    The broker listens on one port and advertises the relay's, so every
    connection a client makes, bootstrap and partition leaders alike, can be
    cut. An external broker advertises its own listeners and cannot be put
    behind a relay: then the block gets ``None`` and outage tests skip.

    :param env_var: variable naming an external broker, as for
        :func:`kafka_test_server`.
    :param backend_class: backend class the outage's factory makes.
    :param settings_class: settings class of that backend.
    """
    if os.environ.get(env_var):
        yield None
        return

    broker_port = free_port()
    with TcpOutage(("127.0.0.1", broker_port)) as relay:
        broker = TansuBroker(broker_port, advertised_port=relay.port)
        broker.start()
        try:
            server = KafkaTestServer(
                broker.bootstrap_servers, broker, backend_class, settings_class
            )
            yield Outage.through(relay, server.backend)
        finally:
            broker.stop()
