"""Waiting on conditions with a deadline, for tests that cross tasks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Eventually = Callable[..., Awaitable[None]]


async def eventually(
    condition: Callable[[], bool], what: str, timeout: float = 10.0
) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout}s still waiting for: {what}")
        await asyncio.sleep(0.005)
