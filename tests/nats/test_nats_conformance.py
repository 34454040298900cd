"""The shared conformance kit of polybus, run against the NATS backend.

The backends come from ``polybus_backend_factory`` in ``conftest.py``: the
server at 127.0.0.1:4222, with stream and subject prefixes of each test's own.
That server is shared, so it is never restarted: the restart clause runs on a
private ``nats-server`` instead, which this file's second class points the kit
at by overriding the two fixtures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from nats_support import NatsPlace, PrivateNats
from polybus.testing.contracts import settlement
from polybus.testing.suite import ConformanceSuite, contract_test
from polybus_nats import NatsBackend


class TestNatsConformance(ConformanceSuite):
    """Every clause of ``docs/semantics.md`` on NATS JetStream."""

    # Runs in TestNatsRestart, on a server that may be restarted. The kit drops
    # a test this way; its attributes are typed as the test functions.
    test_messages_survive_server_restart = None  # type: ignore[assignment]


class TestNatsRestart:
    """The restart clause, on a server of this test run."""

    @pytest.fixture
    def polybus_backend_factory(
        self, private_nats: PrivateNats
    ) -> Iterator[Callable[[], NatsBackend]]:
        corner = NatsPlace(private_nats.url)
        yield corner.backend

        asyncio.run(corner.clean())

    @pytest.fixture
    def polybus_restart_server(self, private_nats: PrivateNats) -> Callable[[], None]:
        return private_nats.restart

    test_messages_survive_server_restart = contract_test(
        settlement.messages_survive_server_restart, timeout=180
    )
