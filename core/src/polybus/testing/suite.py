"""The conformance suite as one class a backend's tests subclass.

::

    from polybus.testing.suite import ConformanceSuite

    class TestMyBackend(ConformanceSuite):
        pass

The class needs the fixtures of :mod:`polybus.testing.plugin` (a backend
provides ``polybus_backend_factory``, optionally ``polybus_restart_server``
and ``polybus_outage``).
Each test is one clause of ``docs/semantics.md``, written as an async check
in :mod:`polybus.testing.contracts`; ``test_state_machine`` runs the
property-based equivalence of :mod:`polybus.testing.machine`. A subclass drops
a test by setting it to ``None``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest

from polybus.testing.contracts import (
    delivery,
    groups,
    lifecycle,
    publishing,
    settlement,
    topics,
)
from polybus.testing.harness import BackendFactory, Harness, async_test
from polybus.testing.machine import run_machine
from polybus.testing.plugin import make_harness
from polybus.testing.profiles import CI_PROFILE
from polybus.testing.regressions import run_regressions

__all__ = ["ConformanceSuite", "contract_test"]

logger = logging.getLogger(__name__)

Check = Callable[[Harness], Awaitable[None]]


def contract_test(check: Check, *, timeout: float = 60.0) -> Callable[..., None]:
    """A pytest test method that runs ``check`` on the backend under test.

    :param check: an async check from :mod:`polybus.testing.contracts`.
    :param timeout: seconds the test may take, before the timeout scale.
    """

    @async_test(timeout)
    async def test(self: object, polybus_harness: Harness) -> None:
        await check(polybus_harness)

    test.__name__ = f"test_{check.__name__}"
    test.__qualname__ = test.__name__
    test.__doc__ = check.__doc__
    return test


class ConformanceSuite:
    """Every clause of the delivery contract, against the backend under test.

    The class brings its own ``polybus_harness`` fixture, so it runs whether or
    not the pytest plugin is loaded; the backend's conftest provides
    ``polybus_backend_factory`` and, if it can, ``polybus_restart_server``.
    """

    @pytest.fixture
    def polybus_harness(
        self, request: pytest.FixtureRequest, polybus_backend_factory: BackendFactory
    ) -> Harness:
        """A harness on the backend under test, closed by the test using it."""
        return make_harness(request, polybus_backend_factory)

    # -- topics -----------------------------------------------------------
    test_topic_admin_is_idempotent = contract_test(topics.topic_admin_is_idempotent)
    test_delete_removes_messages_and_groups = contract_test(
        topics.delete_removes_messages_and_groups
    )
    test_invalid_topic_names_rejected = contract_test(
        topics.invalid_topic_names_rejected
    )
    test_oversize_message_rejected = contract_test(topics.oversize_message_rejected)
    test_auto_create_off_raises = contract_test(topics.auto_create_off_raises)

    # -- publishing and delivery ------------------------------------------
    test_no_loss_nothing_unexpected = contract_test(delivery.no_loss_nothing_unexpected)
    test_round_trip_is_exact = contract_test(delivery.round_trip_is_exact)
    test_topic_isolation = contract_test(delivery.topic_isolation)
    test_concurrent_publishers_and_subscribers = contract_test(
        delivery.concurrent_publishers_and_subscribers, timeout=120
    )
    test_per_key_order_within_group = contract_test(delivery.per_key_order_within_group)

    # -- groups and broadcasts --------------------------------------------
    test_every_group_gets_every_message = contract_test(
        groups.every_group_gets_every_message
    )
    test_group_members_share_work = contract_test(groups.group_members_share_work)
    test_broadcast_sees_only_while_subscribed = contract_test(
        groups.broadcast_sees_only_while_subscribed
    )
    test_group_keeps_messages_while_memberless = contract_test(
        groups.group_keeps_messages_while_memberless
    )
    test_new_group_starts_at_latest = contract_test(groups.new_group_starts_at_latest)
    test_new_group_starts_at_earliest = contract_test(
        groups.new_group_starts_at_earliest
    )

    # -- acknowledgement, retries, dead letters ---------------------------
    test_handler_exception_retried_then_dead_lettered = contract_test(
        settlement.handler_exception_retried_then_dead_lettered
    )
    test_retry_then_success = contract_test(settlement.retry_then_success)
    test_nack_requeue_redelivers = contract_test(settlement.nack_requeue_redelivers)
    test_nack_reject_dead_letters = contract_test(settlement.nack_reject_dead_letters)
    test_second_settlement_raises = contract_test(settlement.second_settlement_raises)
    test_acked_message_never_redelivered = contract_test(
        settlement.acked_message_never_redelivered
    )
    test_unacked_come_back_after_unsubscribe = contract_test(
        settlement.unacked_come_back_after_unsubscribe
    )
    test_unacked_come_back_after_close = contract_test(
        settlement.unacked_come_back_after_close
    )
    test_messages_survive_server_restart = contract_test(
        settlement.messages_survive_server_restart, timeout=180
    )
    test_consumers_resume_after_an_outage = contract_test(
        settlement.consumers_resume_after_an_outage, timeout=180
    )

    # -- publisher and dead-letter queue ----------------------------------
    test_batch_counts_match_arrivals = contract_test(
        publishing.batch_counts_match_arrivals
    )
    test_every_compression_round_trips = contract_test(
        publishing.every_compression_round_trips
    )
    test_publish_retry_rides_out_a_restart = contract_test(
        publishing.publish_retry_rides_out_a_restart, timeout=180
    )
    test_publish_retry_rides_out_an_outage = contract_test(
        publishing.publish_retry_rides_out_an_outage, timeout=180
    )
    test_dead_letter_life_cycle = contract_test(publishing.dead_letter_life_cycle)

    # -- pause, resume, unsubscribe, stop ---------------------------------
    test_pause_resume_loses_nothing = contract_test(
        lifecycle.pause_resume_loses_nothing
    )
    test_unsubscribe_drains_running_handlers = contract_test(
        lifecycle.unsubscribe_drains_running_handlers
    )
    test_start_and_close_are_idempotent = contract_test(
        lifecycle.start_and_close_are_idempotent
    )
    test_close_does_not_hang_on_a_blocked_handler = contract_test(
        lifecycle.close_does_not_hang_on_a_blocked_handler
    )

    # -- the whole contract, program by program ---------------------------
    hypothesis_profile: str = CI_PROFILE
    """Profile of the state machine unless ``POLYBUS_HYPOTHESIS_PROFILE`` is
    set; a backend on a slow broker registers a smaller one and names it."""

    @pytest.mark.slow
    def test_state_machine(self, polybus_harness: Harness) -> None:
        """Random programs behave on the backend as on the reference model."""
        run_machine(polybus_harness, self.hypothesis_profile)

    def test_state_machine_regressions(self, polybus_harness: Harness) -> None:
        """Programs the machine once failed on still pass."""
        run_regressions(polybus_harness)
