"""Fixtures of the Redis backend tests: the shared server and a private one.

Every test gets its own key prefix on the shared server at 127.0.0.1:6379 (or
``POLYBUS_TEST_REDIS_URL``), so runs never see each other's topics, and its keys
are removed afterwards. Tests that restart Redis use a private ``redis-server``
started here on a free port, with an append-only file in a temporary folder so
its data survives the restart; the shared server is never restarted.

Coroutine tests run in a fresh event loop each (``asyncio.run``), under a
deadline, so no pytest-asyncio plugin is needed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Callable, Iterator

import pytest
import redis

from polybus.testing.outage import Outage, TcpOutage
from polybus_redis import CAPABILITIES, RedisBackend
from redis_support import (
    SHARED_URL,
    TEST_TIMEOUT,
    PrivateRedis,
    RedisEnv,
)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests of this folder in their own event loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None

    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    envs = [value for value in kwargs.values() if isinstance(value, RedisEnv)]

    async def main() -> None:
        try:
            async with asyncio.timeout(TEST_TIMEOUT):
                await pyfuncitem.obj(**kwargs)
        finally:
            for environment in envs:
                await environment.aclose()

    asyncio.run(main())
    return True


@pytest.fixture
def env() -> Iterator[RedisEnv]:
    """A key prefix of its own on the shared Redis."""
    environment = RedisEnv(SHARED_URL)
    try:
        redis.Redis.from_url(SHARED_URL).ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"the shared Redis at {SHARED_URL} is not running: {exc}")

    yield environment

    environment.cleanup()


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A restartable Redis server for this test session."""
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_env(private_redis: PrivateRedis) -> Iterator[RedisEnv]:
    """A key prefix of its own on the private, restartable server."""
    environment = RedisEnv(private_redis.url)
    yield environment
    if private_redis.process is not None:
        environment.cleanup()


@pytest.fixture
def polybus_backend_factory(
    private_env: RedisEnv,
) -> Callable[[], RedisBackend]:
    """Fresh backends on the private server, one key prefix per test.

    That server fsyncs its append-only file on every write, so on it the
    backend is persistent; the declaration says so, and the kit's restart
    test runs.
    """

    def make() -> RedisBackend:
        backend = private_env.backend()
        backend.capabilities = dataclasses.replace(CAPABILITIES, persistent=True)
        return backend

    return make


@pytest.fixture
def polybus_restart_server(private_redis: PrivateRedis) -> Callable[[], None]:
    """Restart the private server; its append-only file keeps the data."""
    return private_redis.restart


@pytest.fixture
def polybus_outage(
    private_env: RedisEnv, private_redis: PrivateRedis
) -> Iterator[Outage]:
    """Backends that reach the private server through a relay the kit can cut."""
    with TcpOutage(("127.0.0.1", private_redis.port)) as relay:

        def make() -> RedisBackend:
            backend = private_env.backend(url=f"redis://127.0.0.1:{relay.port}/0")
            backend.capabilities = dataclasses.replace(CAPABILITIES, persistent=True)
            return backend

        yield Outage.through(relay, make)
