"""The outage relay: bytes pass through, a cut resets and refuses, restore heals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from polybus.testing.outage import OutageError, TcpOutage


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()


@pytest_asyncio.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    yield port

    server.close()
    await server.wait_closed()


@pytest.fixture
def relay(echo_port: int) -> Iterator[TcpOutage]:
    with TcpOutage(("127.0.0.1", echo_port)) as outage:
        yield outage


async def _dropped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether the connection is gone: a reset, or an end of stream."""
    try:
        writer.write(b"anyone?\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
    except ConnectionError:
        return True
    finally:
        writer.close()
    return line == b""


async def _round_trip(port: int, text: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(text + b"\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_bytes_pass_through(relay: TcpOutage) -> None:
    assert await _round_trip(relay.port, b"hello") == b"hello\n"
    assert relay.turned_away == 0


@pytest.mark.asyncio
async def test_cut_resets_live_connections_and_turns_new_ones_away(
    relay: TcpOutage,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"before\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), 5) == b"before\n"

    await relay.cut()

    assert relay.is_cut
    assert await _dropped(reader, writer)

    assert await _dropped(*await asyncio.open_connection("127.0.0.1", relay.port))
    assert relay.turned_away == 1


@pytest.mark.asyncio
async def test_restore_lets_connections_through_again(relay: TcpOutage) -> None:
    await relay.cut()
    await relay.restore()

    assert not relay.is_cut
    assert await _round_trip(relay.port, b"again") == b"again\n"


def test_a_relay_not_started_says_so(echo_port: int) -> None:
    relay = TcpOutage(("127.0.0.1", echo_port))

    with pytest.raises(OutageError, match="not been started"):
        _ = relay.port


def test_a_taken_port_is_a_clear_error(relay: TcpOutage, echo_port: int) -> None:
    with pytest.raises(OutageError, match=f"cannot listen on 127.0.0.1:{relay.port}"):
        TcpOutage(("127.0.0.1", echo_port), port=relay.port).start()
