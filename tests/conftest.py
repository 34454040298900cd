"""Shared fixtures of the polybus test suite."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

Eventually = Callable[..., Awaitable[None]]


@pytest.fixture(autouse=True)
def _polybus_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="polybus")


async def _eventually(
    condition: Callable[[], bool], what: str, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout}s still waiting for: {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def eventually() -> Eventually:
    """Wait until a condition holds, failing with ``what`` past the deadline."""
    return _eventually
