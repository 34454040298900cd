"""Each deliberately broken backend fails the check that guards its clause."""

from __future__ import annotations

import asyncio

import pytest
from broken_backends import (
    DroppingBackend,
    HeaderTypeLosingBackend,
    RedeliveringBackend,
    ReorderingBackend,
    SharedStoreFactory,
)
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from polybus.testing.contracts import delivery, settlement
from polybus.testing.harness import Harness
from polybus.testing.machine import bind_machine
from polybus.testing.suite import Check
from polybus_in_memory import InMemoryBackend

# Deadlines shrink so a check waiting for a message that never comes gives up
# in about two seconds instead of twenty.
FAST = 0.1


def run_check(check: Check, backend: type[InMemoryBackend]) -> None:
    """Run one contract check on a fresh store of ``backend``."""
    harness = Harness(SharedStoreFactory(backend), timeout_scale=FAST)

    async def main() -> None:
        try:
            await check(harness)
        finally:
            await harness.aclose()

    asyncio.run(main())


def run_machine_on(backend: type[InMemoryBackend], examples: int) -> None:
    """Run the state machine on ``backend`` with a small, fixed budget.

    Shrinking is left out: it replays hundreds of programs, and what is shown
    here is that the search finds the fault at all.
    """
    harness = Harness(SharedStoreFactory(backend), timeout_scale=FAST)
    budget = settings(
        max_examples=examples,
        stateful_step_count=15,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    run_state_machine_as_test(bind_machine(harness), settings=budget)


@pytest.mark.parametrize(
    "check",
    [delivery.no_loss_nothing_unexpected, delivery.topic_isolation],
    ids=["no-loss", "isolation"],
)
def test_the_healthy_backend_passes(check: Check) -> None:
    run_check(check, InMemoryBackend)


def test_a_dropped_message_is_reported_missing() -> None:
    with pytest.raises(AssertionError, match=r"missing \(\d+\): [0-9a-f-]{36}"):
        run_check(delivery.no_loss_nothing_unexpected, DroppingBackend)


def test_a_reordered_key_is_reported_out_of_order() -> None:
    report = r"out of order \(\d+ keys\):\n +key b'key-\d+': #\d+ .* was handled before"
    with pytest.raises(AssertionError, match=report):
        run_check(delivery.per_key_order_within_group, ReorderingBackend)


def test_a_redelivered_acked_message_is_reported_duplicated() -> None:
    with pytest.raises(AssertionError, match=r"duplicated \(\d+\): [0-9a-f-]{36} x2"):
        run_check(delivery.no_loss_nothing_unexpected, RedeliveringBackend)


def test_redelivery_after_ack_is_caught_across_members() -> None:
    with pytest.raises(AssertionError, match=r"duplicated|unexpected"):
        run_check(settlement.acked_message_never_redelivered, RedeliveringBackend)


def test_an_int_header_turned_to_text_is_reported() -> None:
    with pytest.raises(
        AssertionError, match=r"headers\['int'\]: sent int 7, got str '7'"
    ):
        run_check(delivery.round_trip_is_exact, HeaderTypeLosingBackend)


@pytest.mark.parametrize(
    ("backend", "problem"),
    [
        (HeaderTypeLosingBackend, r"changed: headers\[.*sent int"),
        (RedeliveringBackend, r"duplicated"),
        (DroppingBackend, r"missing \(\d+\)"),
        (ReorderingBackend, r"out of order"),
    ],
    ids=["header-type", "redelivery", "drop", "reorder"],
)
def test_the_state_machine_finds_the_fault(
    backend: type[InMemoryBackend], problem: str
) -> None:
    with pytest.raises(AssertionError, match=problem):
        run_machine_on(backend, examples=60)
