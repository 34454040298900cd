"""Dead letters: failed messages kept on the backend with why they failed.

A message that fails past its retry policy, or that a handler rejects with
``nack(requeue=False)``, is written to the dead-letter topic of its topic
(``<topic>.dlq`` unless configured otherwise). The dead letter's value is the
original envelope byte for byte, its key the original key, and its headers say
what happened, after the Kafka Connect and Spring conventions:

``polybus.dlq.original_topic``, ``.original_partition``, ``.original_offset``,
``.consumer_group``, ``.exception_type``, ``.exception_message``,
``.stack_trace`` (bounded), ``.attempts``, ``.first_failure_at``,
``.last_failure_at`` (ISO 8601 UTC), ``.original_message_id`` and
``.replay_count``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final
from uuid import UUID, uuid4

from polybus.errors import (
    BackendUnavailableError,
    ConfigurationError,
    DeadLetterNotFoundError,
    DeadLetterPayloadOmittedError,
    SerializationError,
)
from polybus.message import EventMessage, as_event_message
from polybus.protocols import ProtocolEventMessage
from polybus.settings import DeadLetterSettings
from polybus.types import ContextValue, DLQMessage, DLQResult, FailureAnalysis
from polybus.validation import derived_topic_name, validate_topic_name

if TYPE_CHECKING:
    from polybus.bus import EventBus

__all__ = [
    "DEAD_LETTER_HEADROOM",
    "HEADER_PREFIX",
    "LEDGER_SUFFIX",
    "DeadLetterQueue",
    "DeadLetterWriter",
    "dead_letter_headers",
]

logger = logging.getLogger(__name__)

HEADER_PREFIX: Final = "polybus.dlq."

DEAD_LETTER_HEADROOM: Final = 64 * 1024
"""Bytes a dead letter may exceed ``max_message_bytes`` by: room for the
failure headers around an original that was itself at the limit."""

Publish = Callable[[str, EventMessage], Awaitable[None]]


def dead_letter_headers(
    message: EventMessage,
    error: BaseException,
    attempts: int,
    *,
    group_id: str | None,
    first_failure_at: datetime,
    max_stack_trace_chars: int,
) -> dict[str, ContextValue]:
    """The failure metadata a dead letter carries in its headers."""
    trace = "".join(traceback.format_exception(error))
    if len(trace) > max_stack_trace_chars:
        trace = trace[-max_stack_trace_chars:]

    replays = message.headers.get(f"{HEADER_PREFIX}replay_count", 0)
    return {
        f"{HEADER_PREFIX}original_topic": message.topic,
        f"{HEADER_PREFIX}original_partition": message.partition,
        f"{HEADER_PREFIX}original_offset": message.offset,
        f"{HEADER_PREFIX}original_message_id": str(message.message_id),
        f"{HEADER_PREFIX}consumer_group": group_id,
        f"{HEADER_PREFIX}exception_type": type(error).__qualname__,
        f"{HEADER_PREFIX}exception_message": str(error),
        f"{HEADER_PREFIX}stack_trace": trace,
        f"{HEADER_PREFIX}attempts": attempts,
        f"{HEADER_PREFIX}first_failure_at": first_failure_at.isoformat(),
        f"{HEADER_PREFIX}last_failure_at": datetime.now(UTC).isoformat(),
        f"{HEADER_PREFIX}replay_count": replays if isinstance(replays, int) else 0,
    }


class DeadLetterWriter:
    """Writes dead letters to ``<topic><suffix>`` through the bus."""

    def __init__(self, publish: Publish, settings: DeadLetterSettings) -> None:
        self._publish = publish
        self._settings = settings

    def topic_for(self, topic: str) -> str:
        """The dead-letter topic of ``topic``."""
        return derived_topic_name(topic, self._settings.topic_suffix)

    def ledger_for(self, topic: str) -> str:
        """The ledger of ``topic``'s dead-letter topic."""
        return derived_topic_name(self.topic_for(topic), LEDGER_SUFFIX)

    async def dead_letter(
        self,
        message: EventMessage,
        error: BaseException,
        attempts: int,
        *,
        payload: bytes,
        group_id: str | None,
        first_failure_at: datetime,
        payload_omitted: str | None = None,
    ) -> UUID | None:
        """Store ``message`` as a dead letter; raise if it could not be stored.

        :param payload: the bytes the broker delivered, kept as the value.
        :param payload_omitted: why the value is left out: the broker refused
            the whole dead letter, so only the failure and the original's
            position (topic, partition, offset) are kept.
        :returns: the dead letter's id, ``None`` when dead-lettering is off.
        """
        if not self._settings.enabled:
            logger.error(
                "Dropping failed message %s of topic %s after %d attempts "
                "(dead-lettering is disabled): %r",
                message.message_id,
                message.topic,
                attempts,
                error,
            )
            return None

        headers = dead_letter_headers(
            message,
            error,
            attempts,
            group_id=group_id,
            first_failure_at=first_failure_at,
            max_stack_trace_chars=self._settings.max_stack_trace_chars,
        )
        if payload_omitted is not None:
            headers[f"{HEADER_PREFIX}payload_omitted"] = payload_omitted
            headers[f"{HEADER_PREFIX}original_size"] = len(payload)
            headers[f"{HEADER_PREFIX}stack_trace"] = ""

        target = self.topic_for(message.topic)
        letter = EventMessage(
            topic=target,
            value=b"" if payload_omitted is not None else payload,
            key=message.key,
            headers=headers,
            correlation_id=message.correlation_id,
            causation_id=message.message_id,
        )

        await self._publish(target, letter)
        logger.info(
            "Message %s of topic %s dead-lettered to %s after %d attempts: %s: %s",
            message.message_id,
            message.topic,
            target,
            attempts,
            type(error).__name__,
            error,
        )
        return letter.message_id


LEDGER_SUFFIX: Final = ".ledger"
"""A dead-letter topic's ledger, ``<topic>.dlq.ledger``, records which dead
letters were retried or cleared, so the queue itself stays append-only and
works on every backend that can browse a topic."""

_RESOLVES: Final = f"{HEADER_PREFIX}resolves"
_RESOLUTION: Final = f"{HEADER_PREFIX}resolution"
_CLAIM_TOKEN: Final = f"{HEADER_PREFIX}claim"
_CLAIMED: Final = "claimed"
_FINAL_OUTCOMES: Final = frozenset({"retried", "cleared"})
_CLAIM_VISIBLE_SECONDS: Final = 10.0
_CLAIM_POLL_SECONDS: Final = 0.05


class DeadLetterQueue:
    """ProtocolDLQHandler over the dead-letter topics of a bus.

    Dead letters stay where the dispatch layer wrote them, on the backend; this
    class lists, replays, clears and analyses them from any process. Reading
    needs a backend whose capabilities declare ``browse``.

    :param bus: a started event bus.
    """

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    @property
    def _writer(self) -> DeadLetterWriter:
        return self.bus.dead_letters

    async def handle_failed_message(
        self,
        message: ProtocolEventMessage,
        error: Exception,
        retry_count: int,
    ) -> DLQResult:
        """Dead-letter ``message`` if its attempts are used up.

        With fewer than ``retry.max_attempts`` attempts the result says the
        message may be tried again and nothing is written.
        """
        event = as_event_message(message)
        validate_topic_name(event.topic)
        target = self._writer.topic_for(event.topic)
        limit = self.bus.settings.retry.max_attempts

        if retry_count < limit:
            return DLQResult(
                message_id=event.message_id,
                dead_lettered=False,
                retry_eligible=True,
                dlq_topic=target,
                dlq_message_id=None,
                retry_count=retry_count,
                reason=f"{type(error).__name__}: {error}",
            )

        letter_id = await self._writer.dead_letter(
            event,
            error,
            retry_count,
            payload=event.to_bytes(),
            group_id=None,
            first_failure_at=datetime.now(UTC),
        )
        return DLQResult(
            message_id=event.message_id,
            dead_lettered=True,
            retry_eligible=False,
            dlq_topic=target,
            dlq_message_id=str(letter_id) if letter_id else None,
            retry_count=retry_count,
            reason=f"{type(error).__name__}: {error}",
        )

    async def get_dlq_messages(self, topic: str, limit: int = 100) -> list[DLQMessage]:
        """Dead letters of ``topic`` not yet retried or cleared, oldest first.

        :raises ConfigurationError: if ``limit`` is not a positive integer.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit must be a positive integer, got {limit!r}")
        letters = await self._open_letters(topic)
        letters.sort(key=lambda letter: letter.last_failure_at)
        return letters[:limit]

    async def retry_failed_message(
        self, dlq_message_id: str, *, topic: str | None = None
    ) -> bool:
        """Publish a dead letter's original again to its topic.

        The original keeps its message id and gains a
        ``polybus.dlq.replay_count`` header one higher than before. Processes
        that retry one dead letter at the same time agree through its ledger
        which of them replays it (see :meth:`_claim`); the others get
        ``False``.

        :param topic: look among the dead letters of this topic only; every
            dead-letter topic when ``None``.
        :returns: ``False`` if it was already retried or cleared, or another
            retry of it is under way.
        :raises DeadLetterNotFoundError: if no dead letter (of ``topic``) has
            that id.
        :raises DeadLetterPayloadOmittedError: if the dead letter was stored
            without the original's bytes (the broker refused it as too large).
        """
        if topic is not None:
            validate_topic_name(topic)
            places = [self._writer.topic_for(topic)]
        else:
            places = await self._dead_letter_topics()

        for dead_letter_topic in places:
            for record in await self._records(dead_letter_topic):
                if str(record.message_id) != dlq_message_id:
                    continue

                letter = _as_dlq_message(record)
                if letter.payload_omitted is not None:
                    raise DeadLetterPayloadOmittedError(
                        dlq_message_id,
                        letter.payload_omitted,
                        f"{letter.original_topic}/{letter.original_partition}"
                        f"@{letter.original_offset}",
                        letter.original_size,
                    )
                if dlq_message_id in await self._resolved(letter.original_topic):
                    return False
                if not await self._claim(letter):
                    return False

                await self._replay(letter)
                await self._resolve(letter.original_topic, [dlq_message_id], "retried")
                return True

        raise DeadLetterNotFoundError(dlq_message_id, topic)

    async def clear_dlq_messages(self, topic: str, older_than_hours: int) -> int:
        """Mark dead letters of ``topic`` that failed before the cut-off as cleared.

        :returns: how many were cleared.
        """
        cutoff = datetime.now(UTC) - _hours("older_than_hours", older_than_hours)
        stale = [
            letter.dlq_message_id
            for letter in await self._open_letters(topic)
            if letter.last_failure_at <= cutoff
        ]
        if stale:
            await self._resolve(topic, stale, "cleared")
        return len(stale)

    async def analyze_failure_patterns(
        self, topic: str, time_range_hours: int
    ) -> FailureAnalysis:
        """Count dead letters of ``topic`` in the last ``time_range_hours``."""
        since = datetime.now(UTC) - _hours("time_range_hours", time_range_hours)
        letters = [
            letter
            for letter in await self._letters(topic)
            if letter.last_failure_at >= since
        ]
        resolved = await self._resolved(topic)

        by_hour: Counter[str] = Counter(
            letter.last_failure_at.strftime("%Y-%m-%dT%H:00Z") for letter in letters
        )
        outcomes: Counter[str] = Counter()
        for letter in letters:
            state = resolved.get(letter.dlq_message_id)
            if state is not None:
                outcomes[state] += 1
            if letter.replay_count:
                outcomes["failed_again"] += 1

        return FailureAnalysis(
            topic=topic,
            time_range_hours=time_range_hours,
            total_failures=len(letters),
            by_exception_type=dict(Counter(x.exception_type for x in letters)),
            by_hour=dict(sorted(by_hour.items())),
            top_error_messages=tuple(
                Counter(x.failure_reason for x in letters).most_common(10)
            ),
            affected_topics=tuple(sorted({x.original_topic for x in letters})),
            affected_groups=tuple(
                sorted({x.consumer_group for x in letters if x.consumer_group})
            ),
            retried=outcomes["retried"],
            retry_outcomes=dict(outcomes),
        )

    # -- reading the queue and its ledger ----------------------------------------

    async def _dead_letter_topics(self) -> list[str]:
        suffix = self.bus.settings.dead_letter.topic_suffix
        return [name for name in await self.bus.list_topics() if name.endswith(suffix)]

    async def _records(self, topic: str) -> list[EventMessage]:
        if await self.bus.get_topic_info(topic) is None:
            return []

        messages = []
        for record in await self.bus.backend.read_topic(topic):
            try:
                messages.append(
                    EventMessage.from_bytes(
                        record.payload, partition=record.partition, offset=record.offset
                    )
                )
            except SerializationError as exc:
                logger.warning(
                    "Skipping record %s/%d@%s: %s",
                    topic,
                    record.partition,
                    record.offset,
                    exc,
                )
        return messages

    async def _letters(self, topic: str) -> list[DLQMessage]:
        validate_topic_name(topic)
        target = self._writer.topic_for(topic)
        return [_as_dlq_message(m) for m in await self._records(target)]

    async def _resolved(self, topic: str) -> dict[str, str]:
        ledger = self._writer.ledger_for(topic)
        resolved: dict[str, str] = {}
        for entry in await self._records(ledger):
            letter = entry.headers.get(_RESOLVES)
            outcome = entry.headers.get(_RESOLUTION)
            if isinstance(letter, str) and outcome in _FINAL_OUTCOMES:
                resolved[letter] = str(outcome)
        return resolved

    async def _claim(self, letter: DLQMessage) -> bool:
        """Win the right to replay ``letter``, or learn that another retry has it.

        Each retry appends a claim with a token of its own to the ledger,
        keyed by the dead letter's id so that every entry about it lands on
        one partition, in one order that every process reads alike. The first
        claim in that order wins, unless a later one was made more than
        ``retry_claim_timeout_ms`` after it without a recorded outcome in
        between: that claimer died, and the later one takes over.
        """
        ledger = self._writer.ledger_for(letter.original_topic)
        token = uuid4().hex
        claim = EventMessage(
            topic=ledger,
            value=b"",
            key=letter.dlq_message_id.encode(),
            headers={
                _RESOLVES: letter.dlq_message_id,
                _RESOLUTION: _CLAIMED,
                _CLAIM_TOKEN: token,
                f"{HEADER_PREFIX}resolved_at": datetime.now(UTC).isoformat(),
            },
        )
        await self.bus.publish_event(ledger, claim)

        entries = await self._ledger_until(ledger, letter.dlq_message_id, token)
        timeout = timedelta(
            milliseconds=self.bus.settings.dead_letter.retry_claim_timeout_ms
        )
        holder: tuple[str, datetime] | None = None

        for entry in entries:
            outcome = entry.headers.get(_RESOLUTION)
            if outcome in _FINAL_OUTCOMES:
                return False

            made = _parse_time(str(entry.headers.get(f"{HEADER_PREFIX}resolved_at")))
            claimer = str(entry.headers.get(_CLAIM_TOKEN))
            if made is None:
                continue
            if holder is None or made - holder[1] > timeout:
                holder = (claimer, made)
            if claimer == token:
                break

        won = holder is not None and holder[0] == token
        if not won:
            logger.info(
                "Dead letter %s is being retried by another process",
                letter.dlq_message_id,
            )
        return won

    async def _ledger_until(
        self, ledger: str, letter_id: str, token: str
    ) -> list[EventMessage]:
        """Entries about ``letter_id``, in log order, once claim ``token`` shows."""
        deadline = asyncio.get_running_loop().time() + _CLAIM_VISIBLE_SECONDS

        while True:
            entries = [
                entry
                for entry in await self._records(ledger)
                if entry.headers.get(_RESOLVES) == letter_id
            ]
            if any(entry.headers.get(_CLAIM_TOKEN) == token for entry in entries):
                return entries

            if asyncio.get_running_loop().time() >= deadline:
                raise BackendUnavailableError(
                    f"the claim to retry dead letter {letter_id} was published "
                    f"to {ledger!r} but did not show there within "
                    f"{_CLAIM_VISIBLE_SECONDS:.0f}s"
                )
            await asyncio.sleep(_CLAIM_POLL_SECONDS)

    async def _open_letters(self, topic: str) -> list[DLQMessage]:
        resolved = await self._resolved(topic)
        return [
            letter
            for letter in await self._letters(topic)
            if letter.dlq_message_id not in resolved
        ]

    async def _replay(self, letter: DLQMessage) -> None:
        original: EventMessage = letter.original_message
        headers = {
            **original.headers,
            f"{HEADER_PREFIX}replay_count": letter.replay_count + 1,
        }
        replayed = dataclasses.replace(
            original, headers=headers, partition=None, offset=None
        )
        await self.bus.publish_event(letter.original_topic, replayed)

    async def _resolve(self, topic: str, letter_ids: list[str], outcome: str) -> None:
        ledger = self._writer.ledger_for(topic)
        now = datetime.now(UTC).isoformat()
        for letter_id in letter_ids:
            entry = EventMessage(
                topic=ledger,
                value=b"",
                key=letter_id.encode(),
                headers={
                    _RESOLVES: letter_id,
                    _RESOLUTION: outcome,
                    f"{HEADER_PREFIX}resolved_at": now,
                },
            )
            await self.bus.publish_event(ledger, entry)


def _as_dlq_message(letter: EventMessage) -> DLQMessage:
    headers = letter.headers

    def text(name: str) -> str:
        value = headers.get(f"{HEADER_PREFIX}{name}")
        return value if isinstance(value, str) else ""

    def number(name: str) -> int:
        value = headers.get(f"{HEADER_PREFIX}{name}")
        return value if isinstance(value, int) else 0

    try:
        original = EventMessage.from_bytes(letter.value)
    except SerializationError:
        original = EventMessage(topic=text("original_topic") or "unknown", value=b"")
        original = dataclasses.replace(original, value=letter.value)

    partition = headers.get(f"{HEADER_PREFIX}original_partition")
    offset = headers.get(f"{HEADER_PREFIX}original_offset")
    group = headers.get(f"{HEADER_PREFIX}consumer_group")
    last = _parse_time(text("last_failure_at")) or letter.timestamp
    return DLQMessage(
        dlq_message_id=str(letter.message_id),
        original_message=original,
        original_topic=text("original_topic"),
        original_partition=partition if isinstance(partition, int) else None,
        original_offset=offset if isinstance(offset, str) else None,
        consumer_group=group if isinstance(group, str) else None,
        failure_reason=text("exception_message"),
        exception_type=text("exception_type"),
        stack_trace=text("stack_trace"),
        attempt_count=number("attempts"),
        first_failure_at=_parse_time(text("first_failure_at")) or last,
        last_failure_at=last,
        replay_count=number("replay_count"),
        payload_omitted=text("payload_omitted") or None,
        original_size=number("original_size") or None,
    )


MAX_HOURS: Final = 24 * 365 * 100
"""The longest look back, in hours, that the queue's methods take: a century."""


def _hours(name: str, hours: int) -> timedelta:
    """``hours`` as a look-back, or a clear error for one that makes no sense."""
    number = isinstance(hours, int | float) and not isinstance(hours, bool)
    if not number or not 0 <= hours <= MAX_HOURS:
        raise ConfigurationError(
            f"{name} must be between 0 and {MAX_HOURS} (a century), got {hours}"
        )
    return timedelta(hours=hours)


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
