"""Fixtures of the NATS backend tests, against the server at 127.0.0.1:4222.

Every test gets stream and subject prefixes of its own (``POLYBUS_TEST_NATS_URL``
names another server), so runs never see each other's topics, and whatever it
made on the server is removed afterwards. Short pull requests and ack waits
keep members leaving and crashing quick to observe.

The conformance kit runs from here too: :func:`polybus_backend_factory` is the
one fixture it needs.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from nats_support import (
    SERVER_URL,
    NatsPlace,
    PrivateNats,
)
from polybus.testing.outage import Outage, TcpOutage
from polybus_nats import NatsBackend


@pytest.fixture(scope="session")
def shared_nats() -> str:
    """The shared server's URL, once it answered; fails the test if it is down."""
    parts = urlsplit(SERVER_URL)
    try:
        with socket.create_connection((parts.hostname, parts.port or 4222), 2) as sock:
            greeting = sock.recv(4)
    except OSError as exc:
        pytest.fail(f"the NATS server at {SERVER_URL} is not running: {exc}")

    if not greeting.startswith(b"INFO"):
        pytest.fail(f"{SERVER_URL} does not speak the NATS protocol")
    return SERVER_URL


@pytest_asyncio.fixture
async def place(shared_nats: str) -> AsyncIterator[NatsPlace]:
    """Prefixes of its own on the shared server, cleaned up afterwards."""
    corner = NatsPlace(shared_nats)
    yield corner

    await corner.close_buses()
    await corner.clean()


@pytest.fixture(scope="session")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateNats]:
    """A restartable NATS server for this test session."""
    server = PrivateNats(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def guarded_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateNats]:
    """A NATS server of this session that wants user ``polybus``, password
    ``guarded-secret``."""
    server = PrivateNats(
        tmp_path_factory.mktemp("guarded-nats"),
        "--user",
        "polybus",
        "--pass",
        "guarded-secret",
    )
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def private_place(private_nats: PrivateNats) -> AsyncIterator[NatsPlace]:
    """Prefixes of its own on the private, restartable server."""
    corner = NatsPlace(private_nats.url)
    yield corner

    await corner.close_buses()
    await corner.clean()


@pytest.fixture
def kit_place(shared_nats: str) -> Iterator[NatsPlace]:
    """Prefixes of the conformance kit's test on the shared server.

    The kit closes its buses in its own event loop; the streams it made are
    removed here, in one of ours, once the test is over.
    """
    corner = NatsPlace(shared_nats)
    yield corner

    asyncio.run(corner.clean())


@pytest.fixture
def polybus_backend_factory(kit_place: NatsPlace) -> Callable[[], NatsBackend]:
    """Fresh backends on the shared server, under prefixes of this test."""
    return kit_place.backend


@pytest.fixture
def polybus_outage(shared_nats: str, kit_place: NatsPlace) -> Iterator[Outage]:
    """Backends that reach the shared server through a relay the kit can cut."""
    parts = urlsplit(shared_nats)
    with TcpOutage((parts.hostname or "127.0.0.1", parts.port or 4222)) as relay:
        yield Outage.through(
            relay,
            lambda: kit_place.backend(servers=f"nats://127.0.0.1:{relay.port}"),
        )
