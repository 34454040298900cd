"""Waits, skips and capability-driven expectations of the harness."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from broken_backends import ReorderingBackend, SharedStoreFactory

from polybus.testing.contracts import delivery
from polybus.testing.harness import (
    ConditionTimeoutError,
    Harness,
    MissingCapabilityError,
    async_test,
    wait_until,
)
from polybus_in_memory import CAPABILITIES


class DeclaredUnorderedBackend(ReorderingBackend):
    """Reorders, and says so: per-key order is not promised."""

    capabilities = dataclasses.replace(
        CAPABILITIES,
        partition_order=False,
        limitations={"partition_order": "handed over in swapped pairs"},
    )


def test_a_wait_that_runs_out_says_what_it_waited_for() -> None:
    async def never() -> None:
        await wait_until(lambda: False, timeout=0.05, describe=lambda: "the answer")

    with pytest.raises(ConditionTimeoutError, match=r"after 0\.1s: the answer"):
        asyncio.run(never())


def test_a_missing_capability_skips_and_names_it() -> None:
    harness = Harness(SharedStoreFactory(DeclaredUnorderedBackend))

    @async_test(timeout=5)
    async def needs_order(h: Harness) -> None:
        h.require("partition_order")

    with pytest.raises(pytest.skip.Exception, match="partition_order=False"):
        needs_order(harness)
    with pytest.raises(MissingCapabilityError, match="swapped pairs"):
        harness.require("partition_order")


def test_a_declared_capability_relaxes_the_assertion() -> None:
    harness = Harness(SharedStoreFactory(DeclaredUnorderedBackend), timeout_scale=0.2)

    @async_test(timeout=30)
    async def no_loss(h: Harness) -> None:
        await delivery.no_loss_nothing_unexpected(h)

    no_loss(harness)


def test_async_test_runs_each_test_in_a_fresh_loop() -> None:
    loops = []

    @async_test(timeout=5)
    async def record() -> None:
        loops.append(asyncio.get_running_loop())

    record()
    record()

    assert loops[0] is not loops[1]
    assert all(loop.is_closed() for loop in loops)


def test_a_task_that_ignores_cancellation_fails_the_test() -> None:
    harness = Harness(SharedStoreFactory(), timeout_scale=0.02)

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    @async_test(timeout=50)
    async def leaves_a_task(h: Harness) -> None:
        asyncio.get_running_loop().create_task(stubborn(), name="stubborn-reader")

    with pytest.raises(AssertionError, match=r"still ran .* stubborn-reader"):
        leaves_a_task(harness)
