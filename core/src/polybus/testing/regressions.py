"""Programs the state machine once failed on, replayed on every backend.

When :mod:`polybus.testing.machine` finds a failure, Hypothesis prints the
shrunk program as Python (``state = ...``, ``state.publish(...)``, ...,
``state.teardown()``). Paste it here as a function taking ``state``, leaving out
the first and last lines, name it after what went wrong, and add it to
:data:`REGRESSIONS`: the suite's ``test_state_machine_regressions`` replays each
on every backend, whatever the random search happens to try.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from polybus.testing.harness import Harness
from polybus.testing.machine import ConformanceMachine, bind_machine

__all__ = ["REGRESSIONS", "run_regressions"]

logger = logging.getLogger(__name__)

Program = Callable[[ConformanceMachine], object]


def restart_with_nothing_running(state: ConformanceMachine) -> None:
    """Found by the machine: closing the example's loop with no task left failed.

    Restarting a connection that has no subscription left no task, and gathering
    an empty task list outside the running loop bound a future to another loop.
    """
    for _ in range(3):
        state.restart_connection(via=0)


def redelivery_after_restart_of_paused_member(state: ConformanceMachine) -> None:
    """A paused member's connection restarts; its group must get everything.

    Hand-written from the clauses on pause and redelivery: messages fetched by
    a paused member stay unacknowledged and go back to the group when the
    member's connection closes.
    """
    topic = state.create_topic(partitions=2)
    member = state.subscribe(topic=topic, group="g0", via=0)
    state.pause(subscription=member)
    state.publish(
        topic=topic,
        key=b"a",
        value=b"v",
        headers={"n": 1, "f": 1.0, "b": True, "nested": {"l": [None, "x"]}},
        behaviour="fail_once",
        count=5,
        via=1,
    )
    state.restart_connection(via=0)
    state.subscribe(topic=topic, group="g0", via=1)


def unsubscribe_during_retries(state: ConformanceMachine) -> None:
    """A member leaves while a message waits for its retry; nothing is lost."""
    topic = state.create_topic(partitions=1)
    member = state.subscribe(topic=topic, group="g1", via=0)
    state.subscribe(topic=topic, group=None, via=1)
    state.publish(
        topic=topic,
        key=None,
        value=b"",
        headers={},
        behaviour="nack_once",
        count=3,
        via=0,
    )
    state.unsubscribe(subscription=member)
    state.publish(
        topic=topic,
        key=b"\x00\xff",
        value=b"x",
        headers={"": -(2**63)},
        behaviour="reject",
        count=2,
        via=1,
    )


REGRESSIONS: Final[dict[str, Program]] = {
    "restart_with_nothing_running": restart_with_nothing_running,
    "redelivery_after_restart_of_paused_member": (
        redelivery_after_restart_of_paused_member
    ),
    "unsubscribe_during_retries": unsubscribe_during_retries,
}
"""Every regression program, by name."""


def run_regressions(harness: Harness) -> None:
    """Replay every program of :data:`REGRESSIONS` on ``harness``'s backend.

    :raises AssertionError: naming the first program that fails.
    """
    machine = bind_machine(harness)

    for name, program in REGRESSIONS.items():
        state = machine()
        try:
            program(state)
        except BaseException:
            state.closed = True
            state.teardown()
            raise

        try:
            state.teardown()
        except AssertionError as failure:
            raise AssertionError(
                f"regression program {name!r} fails: {failure}"
            ) from None
        logger.debug("Regression program %s passed", name)
