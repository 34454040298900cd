"""A loopback TCP relay that can cut a client off from its broker, and let it back.

A backend's tests put a :class:`TcpOutage` between the client and the real
server: clients connect to the relay's port, and every byte is passed through
to the server. :meth:`TcpOutage.cut` resets every relayed connection and turns
away new ones, as a network partition or a broker that is briefly down would;
:meth:`TcpOutage.restore` lets connections through again. The server itself
keeps running, so its topics, groups and stored messages are all still there
when the clients come back: the outage contract needs no persistent broker.

The relay runs its own event loop in a daemon thread, so it keeps working
whatever the test's loop is doing, and its methods may be awaited from any
loop (or called from plain code, for :meth:`start` and :meth:`stop`).

``conftest.py`` of a backend::

    @pytest.fixture
    def polybus_outage():
        with TcpOutage(("127.0.0.1", 6379)) as relay:
            yield Outage.through(
                relay, lambda: MyBackend(MySettings(port=relay.port))
            )
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from polybus.testing.harness import BackendFactory

__all__ = ["Outage", "OutageError", "TcpOutage"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_HOST: Final = "127.0.0.1"
_CHUNK: Final = 65_536
_START_TIMEOUT: Final = 10.0


class OutageError(RuntimeError):
    """The relay could not start, or was used before it started."""


@dataclass(frozen=True, slots=True)
class Outage:
    """What the outage contracts need from a backend's tests.

    :param factory: makes fresh, unstarted backends whose connections pass
        through the relay, so that a cut reaches them.
    :param cut: makes the server unreachable for those backends.
    :param restore: makes it reachable again.
    :param turned_away: how many connection attempts the cut has refused so
        far; a test waits on it to know that a client noticed the outage.
    """

    factory: BackendFactory
    cut: Callable[[], Awaitable[None]]
    restore: Callable[[], Awaitable[None]]
    turned_away: Callable[[], int]

    @classmethod
    def through(cls, relay: TcpOutage, factory: BackendFactory) -> Outage:
        """The outage of ``relay``, felt by backends that ``factory`` makes."""
        return cls(
            factory=factory,
            cut=relay.cut,
            restore=relay.restore,
            turned_away=lambda: relay.turned_away,
        )


class TcpOutage:
    """Relays loopback TCP connections to ``upstream`` until told to cut them.

    :param upstream: ``(host, port)`` of the real server.
    :param port: the loopback port to listen on; a free one when ``0``.
    """

    def __init__(self, upstream: tuple[str, int], *, port: int = 0) -> None:
        self.upstream = upstream
        self._requested_port = port
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._is_cut = False
        self.turned_away = 0
        """Connections reset at once because the relay was cut."""

    # -- where clients connect -------------------------------------------------

    @property
    def port(self) -> int:
        """The loopback port clients connect to instead of the server's."""
        if not self._port:
            raise OutageError("the relay has not been started")
        return self._port

    @property
    def is_cut(self) -> bool:
        """Whether connections are being refused right now."""
        return self._is_cut

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Start listening, in a thread of its own, and return once it does.

        :raises OutageError: if the port cannot be bound.
        """
        if self._thread is not None:
            return

        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._run, args=(loop, ready), name="polybus-outage", daemon=True
        )
        thread.start()

        try:
            self._port = ready.result(_START_TIMEOUT)
        except OSError as exc:
            thread.join(_START_TIMEOUT)
            raise OutageError(
                f"cannot listen on {_HOST}:{self._requested_port}: {exc}"
            ) from exc

        self._loop, self._thread = loop, thread
        logger.debug("Relay %s:%d -> %s:%d", _HOST, self._port, *self.upstream)

    def stop(self) -> None:
        """Close the listener and every relayed connection; end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        self._call(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_START_TIMEOUT)
        self._loop, self._thread = None, None

    async def cut(self) -> None:
        """Reset every relayed connection and turn away new ones."""
        await asyncio.wrap_future(self._submit(self._cut()))

    async def restore(self) -> None:
        """Relay new connections to the server again."""
        await asyncio.wrap_future(self._submit(self._restore()))

    def __enter__(self) -> Self:
        """Start the relay and return it."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the relay, whatever ended the ``with`` block."""
        self.stop()

    # -- the relay's own thread ------------------------------------------------

    def _run(
        self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future[int]
    ) -> None:
        asyncio.set_event_loop(loop)

        try:
            server = loop.run_until_complete(
                asyncio.start_server(self._accept, _HOST, self._requested_port)
            )
        except OSError as exc:
            ready.set_exception(exc)
            loop.close()
            return

        self._server = server
        ready.set_result(server.sockets[0].getsockname()[1])

        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def _submit(
        self, coroutine: Coroutine[Any, Any, T]
    ) -> concurrent.futures.Future[T]:
        if self._loop is None:
            coroutine.close()
            raise OutageError("the relay has not been started")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._submit(coroutine).result(_START_TIMEOUT)

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        if self._is_cut:
            self.turned_away += 1
            _reset(client)
            return

        try:
            server_reader, server = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            logger.debug("Relay could not reach %s:%d: %r", *self.upstream, exc)
            _reset(client)
            return

        pair = (client, server)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                _pump(client_reader, server), _pump(server_reader, client)
            )
        finally:
            self._pairs.discard(pair)
            _reset(client)
            _reset(server)

    async def _cut(self) -> None:
        self._is_cut = True
        pairs, self._pairs = self._pairs, set()

        for client, server in pairs:
            _reset(client)
            _reset(server)

        logger.info(
            "Relay to %s:%d cut (%d connections reset)", *self.upstream, len(pairs)
        )

    async def _restore(self) -> None:
        self._is_cut = False
        logger.info("Relay to %s:%d restored", *self.upstream)

    async def _shutdown(self) -> None:
        await self._cut()

        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), _START_TIMEOUT)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until either side closes."""
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop a connection at once, with a reset rather than an orderly close."""
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
