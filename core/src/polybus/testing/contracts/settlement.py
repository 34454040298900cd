"""Acknowledgement, retries, dead letters and redelivery of unacked messages."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Sequence

from polybus.bus import EventBus
from polybus.dlq import HEADER_PREFIX
from polybus.errors import MessageAlreadySettledError, PolybusError
from polybus.message import EventMessage
from polybus.publisher import EventPublisher
from polybus.settings import RetrySettings
from polybus.testing.checks import check_delivery
from polybus.testing.contracts.publishing import publish_each
from polybus.testing.harness import Collector, Harness
from polybus.types import ContextValue

__all__ = [
    "HandlerFailure",
    "acked_message_never_redelivered",
    "consumers_resume_after_an_outage",
    "handler_exception_retried_then_dead_lettered",
    "messages_survive_server_restart",
    "nack_reject_dead_letters",
    "nack_requeue_redelivers",
    "retry_then_success",
    "second_settlement_raises",
    "unacked_come_back_after_close",
    "unacked_come_back_after_unsubscribe",
]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


class HandlerFailure(Exception):
    """What the test handlers raise to fail an attempt on purpose."""


def _retrying() -> RetrySettings:
    return RetrySettings(
        max_attempts=MAX_ATTEMPTS, backoff_ms=5, backoff_max_ms=20, jitter_ms=2
    )


def _seq(message: EventMessage) -> object:
    return message.headers.get("seq")


def _without(messages: Sequence[EventMessage], *dropped: int) -> list[EventMessage]:
    return [m for index, m in enumerate(messages) if index not in dropped]


def check_dead_letter(
    letter: EventMessage,
    original: EventMessage,
    *,
    attempts: int,
    group_id: str | None,
    exception_type: str,
) -> None:
    """Fail unless ``letter`` is the dead letter of ``original`` as the contract says.

    :raises AssertionError: naming each header or byte that differs.
    """
    headers = letter.headers
    expected: dict[str, ContextValue] = {
        "original_topic": original.topic,
        "original_message_id": str(original.message_id),
        "consumer_group": group_id,
        "attempts": attempts,
        "exception_type": exception_type,
    }
    problems = [
        f"{HEADER_PREFIX}{name} is {headers.get(HEADER_PREFIX + name)!r}, "
        f"expected {value!r}"
        for name, value in expected.items()
        if headers.get(HEADER_PREFIX + name) != value
    ]

    if letter.value != original.to_bytes():
        problems.append("value is not the original envelope byte for byte")
    if letter.key != original.key:
        problems.append(f"key is {letter.key!r}, expected {original.key!r}")

    if problems:
        raise AssertionError(
            f"dead letter of {original.message_id} is wrong:\n  "
            + "\n  ".join(problems)
        )


async def _dead_letter_setup(h: Harness) -> tuple[EventBus, str, str, Collector]:
    bus = await h.bus(retry=_retrying())
    topic = await h.topic(bus, 1)
    letters = await h.dead_letters(bus, topic)
    return bus, topic, h.name("g"), letters


async def handler_exception_retried_then_dead_lettered(h: Harness) -> None:
    """A handler that keeps raising is tried max_attempts times, then dead-lettered.

    The partition waits meanwhile: the next message is handled after the last
    attempt, so per-partition order holds.
    """
    bus, topic, group_id, letters = await _dead_letter_setup(h)
    group = Collector("group")

    async def fail_second(
        message: EventMessage, context: dict[str, ContextValue]
    ) -> None:
        if _seq(message) == 1:
            raise HandlerFailure("the second message always fails")

    await bus.subscribe_to_topic(
        topic, group.handler(behaviour=fail_second), group_id=group_id
    )
    published = await h.publish(bus, topic, 4, keys=[b"k"])
    failing = published[1]

    await h.wait_handled(group, _without(published, 1))
    await h.wait_until(
        lambda: len(letters.handled) >= 1,
        lambda: f"no dead letter for {failing.message_id}: {letters.describe()}",
    )
    await h.fence(bus, topic, [group])
    await h.fence(bus, bus.dead_letters.topic_for(topic), [letters])

    check_delivery(_without(published, 1), group.handled, label="group")
    attempts = group.attempts_of(failing.message_id)
    assert [a.attempt for a in attempts] == list(range(1, MAX_ATTEMPTS + 1)), (
        f"attempts at the failing message: {[a.attempt for a in attempts]}, "
        f"expected 1..{MAX_ATTEMPTS}"
    )
    assert all(a.outcome == "raise" for a in attempts)
    assert len(letters.handled) == 1, f"{len(letters.handled)} dead letters, expected 1"
    check_dead_letter(
        letters.handled[0],
        failing,
        attempts=MAX_ATTEMPTS,
        group_id=group_id,
        exception_type=HandlerFailure.__qualname__,
    )

    order = [a.message.message_id for a in group.attempts]
    last_failure = max(i for i, mid in enumerate(order) if mid == failing.message_id)
    assert order.index(published[2].message_id) > last_failure, (
        "the next message of the partition was handled before the failing one "
        "ran out of attempts"
    )


async def retry_then_success(h: Harness) -> None:
    """A message that fails twice and then succeeds is handled, not dead-lettered."""
    bus, topic, group_id, letters = await _dead_letter_setup(h)
    group = Collector("group")

    async def fail_twice(
        message: EventMessage, context: dict[str, ContextValue]
    ) -> None:
        if _seq(message) == 0 and context["attempt"] != MAX_ATTEMPTS:
            raise HandlerFailure(f"attempt {context['attempt']} fails")

    await bus.subscribe_to_topic(
        topic, group.handler(behaviour=fail_twice), group_id=group_id
    )
    published = await h.publish(bus, topic, 3)

    await h.wait_handled(group, published)
    await h.fence(bus, topic, [group])
    await h.fence(bus, bus.dead_letters.topic_for(topic), [letters])

    check_delivery(published, group.handled, label="group")
    attempts = group.attempts_of(published[0].message_id)
    assert [(a.attempt, a.outcome) for a in attempts] == [
        (1, "raise"),
        (2, "raise"),
        (3, "ack"),
    ], f"attempts: {[(a.attempt, a.outcome) for a in attempts]}"
    for attempt in attempts:
        assert attempt.context.get("max_attempts") == MAX_ATTEMPTS
    assert not letters.handled, f"unexpected dead letters: {letters.describe()}"


async def nack_requeue_redelivers(h: Harness) -> None:
    """``nack(requeue=True)`` gets the message tried again."""
    bus, topic, group_id, letters = await _dead_letter_setup(h)
    group = Collector("group")

    async def requeue_once(
        message: EventMessage, context: dict[str, ContextValue]
    ) -> None:
        if context["attempt"] == 1:
            await message.nack(requeue=True)

    await bus.subscribe_to_topic(
        topic, group.handler(behaviour=requeue_once), group_id=group_id
    )
    published = await h.publish(bus, topic, 3)

    await h.wait_handled(group, published)
    await h.fence(bus, topic, [group])
    await h.fence(bus, bus.dead_letters.topic_for(topic), [letters])

    check_delivery(published, group.handled, label="group")
    for message in published:
        attempts = group.attempts_of(message.message_id)
        assert [(a.attempt, a.outcome) for a in attempts] == [
            (1, "requeue"),
            (2, "ack"),
        ], f"attempts at {message.message_id}: {attempts}"
    assert not letters.handled, f"unexpected dead letters: {letters.describe()}"


async def nack_reject_dead_letters(h: Harness) -> None:
    """``nack(requeue=False)`` dead-letters the message after one attempt."""
    bus, topic, group_id, letters = await _dead_letter_setup(h)
    group = Collector("group")

    async def reject_first(
        message: EventMessage, context: dict[str, ContextValue]
    ) -> None:
        if _seq(message) == 0:
            await message.nack(requeue=False)

    await bus.subscribe_to_topic(
        topic, group.handler(behaviour=reject_first), group_id=group_id
    )
    published = await h.publish(bus, topic, 3, keys=[b"same"])

    await h.wait_handled(group, published[1:])
    await h.wait_until(
        lambda: len(letters.handled) >= 1,
        lambda: f"no dead letter after nack(requeue=False): {letters.describe()}",
    )
    await h.fence(bus, topic, [group])
    await h.fence(bus, bus.dead_letters.topic_for(topic), [letters])

    check_delivery(published[1:], group.handled, label="group")
    attempts = group.attempts_of(published[0].message_id)
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "reject")], (
        f"attempts at the rejected message: {attempts}"
    )
    assert len(letters.handled) == 1, f"{len(letters.handled)} dead letters, expected 1"
    check_dead_letter(
        letters.handled[0],
        published[0],
        attempts=1,
        group_id=group_id,
        exception_type="MessageRejectedError",
    )


async def second_settlement_raises(h: Harness) -> None:
    """A second ack() or nack() raises MessageAlreadySettledError; the first holds."""
    bus, topic, group_id, letters = await _dead_letter_setup(h)
    group = Collector("group")
    errors: list[BaseException] = []

    async def settle_twice(
        message: EventMessage, context: dict[str, ContextValue]
    ) -> None:
        await message.ack()
        for second in (message.ack, lambda: message.nack(requeue=False)):
            try:
                await second()
            except MessageAlreadySettledError as exc:
                errors.append(exc)

    await bus.subscribe_to_topic(
        topic, group.handler(behaviour=settle_twice), group_id=group_id
    )
    published = await h.publish(bus, topic, 2)

    await h.wait_handled(group, published)
    await h.fence(bus, topic, [group])
    await h.fence(bus, bus.dead_letters.topic_for(topic), [letters])

    check_delivery(published, group.handled, label="group")
    assert len(errors) == 4, f"second settlements raised {len(errors)} times, not 4"
    assert not letters.handled, "a message acked first was dead-lettered"


async def acked_message_never_redelivered(h: Harness) -> None:
    """What a member acknowledged never reaches the group again."""
    bus = await h.bus()
    topic = await h.topic(bus, 3)
    group_id = h.name("g")
    first = Collector("first member")
    keys = [b"a", b"b", b"c", None]

    subscription = await bus.subscribe_to_topic(
        topic, first.handler(), group_id=group_id
    )
    acked = await h.publish(bus, topic, 15, keys=keys, stem="acked")
    await h.wait_handled(first, acked)
    await bus.unsubscribe_from_topic(subscription)

    later_bus = await h.bus()
    second = Collector("member joining after the acks")
    await later_bus.subscribe_to_topic(topic, second.handler(), group_id=group_id)
    fresh = await h.publish(bus, topic, 6, keys=keys, stem="fresh")
    await h.wait_handled(second, fresh)
    await h.fence(bus, topic, [second])

    check_delivery(acked, first.handled, label=first.name)
    check_delivery(fresh, second.handled, label=second.name)


async def _unacked_come_back(h: Harness, *, close_bus: bool) -> None:
    h.require("redelivers_unacked")
    first_bus = await h.bus(drain_timeout_ms=100)
    topic = await h.topic(first_bus, 1)
    group_id = h.name("g")
    first = Collector("member that stops")
    gate = asyncio.Event()

    async def block(message: EventMessage, context: dict[str, ContextValue]) -> None:
        await gate.wait()

    subscription = await first_bus.subscribe_to_topic(
        topic, first.handler("first", block), group_id=group_id
    )
    published = await h.publish(first_bus, topic, 5, keys=[b"k"])
    await h.wait_until(
        lambda: first.running == 1, lambda: "the handler never started blocking"
    )

    if close_bus:
        await asyncio.wait_for(first_bus.close(), h.seconds(10))
    else:
        await asyncio.wait_for(
            first_bus.unsubscribe_from_topic(subscription), h.seconds(10)
        )
    assert not first.handled, f"a blocked member handled {first.describe()}"

    second_bus = await h.bus()
    second = Collector("member joining after")
    await second_bus.subscribe_to_topic(
        topic, second.handler("second"), group_id=group_id
    )
    await h.wait_handled(second, published)
    await h.fence(second_bus, topic, [second])
    check_delivery(published, second.handled, label=second.name)


async def unacked_come_back_after_unsubscribe(h: Harness) -> None:
    """Messages a member left unacked go to the next member after unsubscribe."""
    await _unacked_come_back(h, close_bus=False)


async def unacked_come_back_after_close(h: Harness) -> None:
    """Messages a member left unacked go to the next member after close()."""
    await _unacked_come_back(h, close_bus=True)


async def messages_survive_server_restart(h: Harness) -> None:
    """A group gets what was published before the broker restarted.

    A restart is a crash as far as the group can tell, so a message may come
    twice if the backend declares ``duplicates_after_crash``.
    """
    h.require("persistent")
    if h.restart_server is None:
        import pytest

        pytest.skip("no polybus_restart_server fixture: cannot restart the broker")

    bus = await h.bus()
    topic = await h.topic(bus, 2)
    group_id = h.name("g")
    group = Collector("group")
    subscription = await bus.subscribe_to_topic(
        topic, group.handler(), group_id=group_id
    )
    await bus.unsubscribe_from_topic(subscription)
    published = await h.publish(bus, topic, 10, keys=[b"a", b"b"])
    await h.aclose()

    restarted = h.restart_server()
    if inspect.isawaitable(restarted):
        await restarted

    after = await h.bus()
    try:
        await after.subscribe_to_topic(topic, group.handler(), group_id=group_id)
    except PolybusError as exc:
        raise AssertionError(
            f"subscribing after a broker restart failed: {exc}"
        ) from exc
    await h.wait_handled(group, published, timeout=60)
    await h.fence(after, topic, [group])
    check_delivery(
        published,
        group.handled,
        label="group after restart",
        duplicates_allowed=h.capabilities.duplicates_after_crash,
        key_order=h.capabilities.partition_order,
    )


async def consumers_resume_after_an_outage(h: Harness) -> None:
    """A group cut off from a running broker comes back and misses nothing.

    Publisher and group reach the broker through the outage, on buses of
    their own. Messages are published before the cut, while it lasts (held
    or retried by the publisher) and after the restore; every one must be
    handled, in key order, with duplicates only where the backend declares
    them possible after a connection loss.
    """
    outage = h.outage
    if outage is None:
        import pytest

        pytest.skip("no polybus_outage fixture: cannot cut the broker off")

    publishing_bus = await h.bus(factory=outage.factory)
    topic = await h.topic(publishing_bus, 2)
    publisher = EventPublisher(publishing_bus)
    group = Collector("group")
    consuming = await h.bus(factory=outage.factory)
    await consuming.subscribe_to_topic(topic, group.handler(), group_id=h.name("g"))
    before = await h.publish(publishing_bus, topic, 10, keys=_KEYS, stem="before")
    await h.wait_handled(group, before)
    refused_before = outage.turned_away()

    await outage.cut()
    during = _messages(topic, "during")
    publishing = asyncio.create_task(publish_each(publisher, topic, during))
    try:
        await h.wait_until(
            lambda: outage.turned_away() > refused_before,
            lambda: "no client tried to reconnect while cut off",
        )
        assert not group.has_handled(during[:1]), (
            "a message published during the outage was handled through it"
        )
    finally:
        await outage.restore()
    outcomes = await publishing
    assert all(outcomes), f"publishes given up during the outage: {outcomes}"
    after = _messages(topic, "after")
    assert all(await publish_each(publisher, topic, after))

    published = before + during + after
    await h.wait_handled(group, published, timeout=60)
    await h.fence(publishing_bus, topic, [group])
    check_delivery(
        published,
        group.handled,
        label="group across an outage",
        duplicates_allowed=h.capabilities.duplicates_after_crash,
        key_order=h.capabilities.partition_order,
    )


_KEYS: list[bytes | None] = [b"a", b"b", b"c"]


def _messages(topic: str, stem: str) -> list[EventMessage]:
    return [
        EventMessage(
            topic=topic,
            value=f"{stem}-{index}".encode(),
            key=_KEYS[index % len(_KEYS)],
            headers={"seq": index},
        )
        for index in range(10)
    ]
