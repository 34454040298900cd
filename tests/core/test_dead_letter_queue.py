"""The dead-letter queue life cycle: fail, list, analyse, retry, clear."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from polybus import (
    ConfigurationError,
    DeadLetterNotFoundError,
    DeadLetterQueue,
    EventMessage,
    InvalidTopicNameError,
    PolybusSettings,
    ProtocolDLQHandler,
    UnsupportedOperationError,
)
from polybus.settings import RetrySettings
from polybus.types import ContextValue
from polybus_in_memory import InMemoryBackend, InMemoryEventBus
from waiting import Eventually

pytestmark = pytest.mark.asyncio


class InvalidOrder(ValueError):
    """A handler's own failure."""


@pytest_asyncio.fixture
async def bus() -> AsyncIterator[InMemoryEventBus]:
    settings = PolybusSettings(
        retry=RetrySettings(max_attempts=2, backoff_ms=1, backoff_max_ms=2, jitter_ms=0)
    )
    async with InMemoryEventBus(InMemoryBackend(), settings) as started:
        yield started


async def _fail_orders(
    bus: InMemoryEventBus, eventually: Eventually, count: int
) -> list[EventMessage]:
    """Publish ``count`` orders that a handler refuses until it is fixed."""
    fixed: list[EventMessage] = []

    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        if message.headers.get("polybus.dlq.replay_count"):
            fixed.append(message)
            return
        raise InvalidOrder(f"order {message.value.decode()} has no customer")

    await bus.subscribe_to_topic("orders", handler, group_id="billing")
    for index in range(count):
        await bus.publish_event("orders", EventMessage("orders", b"%d" % index))

    await eventually(
        lambda: bus.counters.topics["orders"].dead_lettered == count, "dead letters"
    )
    return fixed


async def test_whole_life_cycle(bus: InMemoryEventBus, eventually: Eventually) -> None:
    dlq = DeadLetterQueue(bus)
    assert isinstance(dlq, ProtocolDLQHandler)
    fixed = await _fail_orders(bus, eventually, 3)

    letters = await dlq.get_dlq_messages("orders")

    assert len(letters) == 3
    first = letters[0]
    assert first.original_topic == "orders"
    assert first.consumer_group == "billing"
    assert first.exception_type == "InvalidOrder"
    assert first.attempt_count == 2
    assert first.failure_reason.endswith("has no customer")
    assert "InvalidOrder" in first.stack_trace
    assert first.first_failure_at <= first.last_failure_at
    assert {m.original_message.value for m in letters} == {b"0", b"1", b"2"}

    analysis = await dlq.analyze_failure_patterns("orders", time_range_hours=1)
    assert analysis.total_failures == 3
    assert analysis.by_exception_type == {"InvalidOrder": 3}
    assert analysis.affected_groups == ("billing",)
    assert sum(analysis.by_hour.values()) == 3

    assert await dlq.retry_failed_message(first.dlq_message_id)
    assert not await dlq.retry_failed_message(first.dlq_message_id)
    await eventually(lambda: len(fixed) == 1, "the replayed order handled")
    assert fixed[0].message_id == first.original_message.message_id
    assert fixed[0].headers["polybus.dlq.replay_count"] == 1
    assert len(await dlq.get_dlq_messages("orders")) == 2

    assert await dlq.clear_dlq_messages("orders", older_than_hours=1) == 0
    assert await dlq.clear_dlq_messages("orders", older_than_hours=0) == 2
    assert await dlq.get_dlq_messages("orders") == []

    after = await dlq.analyze_failure_patterns("orders", time_range_hours=1)
    assert after.total_failures == 3
    assert after.retried == 1
    assert after.retry_outcomes == {"retried": 1, "cleared": 2}


async def test_limit_and_unknown_topics(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    dlq = DeadLetterQueue(bus)
    await _fail_orders(bus, eventually, 4)

    assert len(await dlq.get_dlq_messages("orders", limit=2)) == 2
    assert await dlq.get_dlq_messages("payments") == []


async def test_unknown_dead_letter_id_is_a_typed_error(bus: InMemoryEventBus) -> None:
    with pytest.raises(DeadLetterNotFoundError, match="'nope'"):
        await DeadLetterQueue(bus).retry_failed_message("nope")


async def test_handle_failed_message_follows_the_retry_policy(
    bus: InMemoryEventBus,
) -> None:
    dlq = DeadLetterQueue(bus)
    message = EventMessage("orders", b"x", key=b"c-1")

    early = await dlq.handle_failed_message(message, InvalidOrder("bad"), 1)
    final = await dlq.handle_failed_message(message, InvalidOrder("bad"), 2)

    assert early.retry_eligible
    assert not early.dead_lettered
    assert final.dead_lettered
    assert not final.retry_eligible
    assert final.dlq_topic == "orders.dlq"
    (letter,) = await dlq.get_dlq_messages("orders")
    assert letter.dlq_message_id == final.dlq_message_id
    assert letter.original_message == message


async def test_backends_that_cannot_browse_say_so() -> None:
    class Blind(InMemoryBackend):
        async def read_topic(self, topic: str, *, limit: int | None = None) -> list:  # type: ignore[type-arg]
            raise UnsupportedOperationError(self.name, "read_topic", "test")

    async with InMemoryEventBus(Blind()) as bus:
        await bus.create_topic("orders.dlq")
        with pytest.raises(UnsupportedOperationError, match="read_topic"):
            await DeadLetterQueue(bus).get_dlq_messages("orders")


async def _claim_elsewhere(bus: InMemoryEventBus, letter_id: str, age: float) -> None:
    """Append another process's claim on ``letter_id``, made ``age`` seconds ago."""
    ledger = bus.dead_letters.ledger_for("orders")
    made = datetime.now(UTC) - timedelta(seconds=age)
    claim = EventMessage(
        ledger,
        b"",
        key=letter_id.encode(),
        headers={
            "polybus.dlq.resolves": letter_id,
            "polybus.dlq.resolution": "claimed",
            "polybus.dlq.claim": "another-process",
            "polybus.dlq.resolved_at": made.isoformat(),
        },
    )
    await bus.publish_event(ledger, claim)


async def test_a_retry_under_way_elsewhere_wins(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    dlq = DeadLetterQueue(bus)
    fixed = await _fail_orders(bus, eventually, 1)
    [letter] = await dlq.get_dlq_messages("orders")
    await _claim_elsewhere(bus, letter.dlq_message_id, age=1)

    assert not await dlq.retry_failed_message(letter.dlq_message_id)

    assert fixed == []
    assert [x.dlq_message_id for x in await dlq.get_dlq_messages("orders")] == [
        letter.dlq_message_id
    ]


async def test_a_claim_whose_process_died_is_taken_over(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    dlq = DeadLetterQueue(bus)
    fixed = await _fail_orders(bus, eventually, 1)
    [letter] = await dlq.get_dlq_messages("orders")
    timeout = bus.settings.dead_letter.retry_claim_timeout_ms / 1000
    await _claim_elsewhere(bus, letter.dlq_message_id, age=timeout + 5)

    assert await dlq.retry_failed_message(letter.dlq_message_id)

    await eventually(lambda: len(fixed) == 1, "the replayed order handled")
    assert await dlq.get_dlq_messages("orders") == []


async def test_retry_looks_only_where_it_is_told(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    dlq = DeadLetterQueue(bus)
    await _fail_orders(bus, eventually, 1)
    [letter] = await dlq.get_dlq_messages("orders")

    with pytest.raises(DeadLetterNotFoundError, match="dead letters of 'payments'"):
        await dlq.retry_failed_message(letter.dlq_message_id, topic="payments")

    assert await dlq.retry_failed_message(letter.dlq_message_id, topic="orders")


async def test_look_backs_out_of_range_are_typed_errors(
    bus: InMemoryEventBus,
) -> None:
    dlq = DeadLetterQueue(bus)

    with pytest.raises(ConfigurationError, match="older_than_hours must be between"):
        await dlq.clear_dlq_messages("orders", older_than_hours=-1)
    with pytest.raises(ConfigurationError, match="time_range_hours must be between"):
        await dlq.analyze_failure_patterns("orders", time_range_hours=10**12)
    with pytest.raises(ConfigurationError, match="time_range_hours must be between"):
        await dlq.analyze_failure_patterns("orders", time_range_hours=float("nan"))  # type: ignore[arg-type]
    for limit in (0, -1, "5"):
        with pytest.raises(ConfigurationError, match="limit must be a positive"):
            await dlq.get_dlq_messages("orders", limit=limit)  # type: ignore[arg-type]
    with pytest.raises(InvalidTopicNameError):
        await dlq.handle_failed_message(
            EventMessage("bad topic", b"x"), ValueError("no"), retry_count=5
        )
