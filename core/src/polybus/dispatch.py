"""The dispatch layer: how every backend's deliveries reach a handler.

A backend stream hands each fetched envelope to a :class:`Dispatcher`, one per
subscription. The dispatcher keeps one worker per partition, so a partition's
messages are handled one at a time in order while partitions run side by side.
For each message it:

1. decodes the envelope (an undecodable one goes straight to the dead-letter
   queue, bytes intact);
2. calls the handler with a fresh message and a context dict;
3. acknowledges when the handler returns without settling, or acks;
4. on an exception or ``nack(requeue=True)``, tries again with exponential
   backoff and jitter, up to ``retry.max_attempts`` attempts in all;
5. on ``nack(requeue=False)`` or when attempts run out, writes a dead letter and
   acknowledges the original only once the dead letter is stored.

Pausing stops the workers between messages; nothing fetched is dropped. Draining
lets each running handler finish (up to a timeout) and leaves the rest
unacknowledged, so the group receives it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Literal, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_exponential_jitter,
)

from polybus.backend import Delivery
from polybus.codecs import decompress_message
from polybus.errors import (
    CodecUnavailableError,
    MessageRejectedError,
    MessageTooLargeError,
    PolybusError,
    SerializationError,
)
from polybus.message import EventMessage
from polybus.metrics import BusCounters
from polybus.settings import RetrySettings
from polybus.types import ContextValue, SubscriptionInfo

__all__ = ["DeadLetterTarget", "Dispatcher", "Handler", "SubscriptionState"]

logger = logging.getLogger(__name__)

Handler = Callable[[EventMessage, dict[str, ContextValue]], Awaitable[None]]
"""What a subscription calls for each message."""

SubscriptionState = Literal["active", "paused", "stopping", "stopped"]


class DeadLetterTarget(Protocol):
    """Where the dispatcher sends messages it gives up on."""

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
    ) -> object:
        """Store a dead letter durably, or raise if it could not be stored."""


class _Failure(Exception):
    """A handler attempt that did not succeed."""

    def __init__(self, cause: BaseException, attempt: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.attempt = attempt
        self.first_failure_at = datetime.now(UTC)


class _AttemptFailed(_Failure):
    """The handler raised or asked for another attempt."""


class _Rejected(_Failure):
    """The handler asked for the message to be dead-lettered now."""


class _Abandoned(Exception):
    """The subscription stopped while the message waited for a retry."""


class Dispatcher:
    """Runs one subscription's handler over what its stream delivers."""

    def __init__(
        self,
        *,
        subscription_id: str,
        topic: str,
        group_id: str | None,
        handler: Handler,
        retry: RetrySettings,
        dead_letters: DeadLetterTarget,
        counters: BusCounters,
        prefetch: int,
        drain_timeout: float,
        backend_name: str,
    ) -> None:
        self.subscription_id = subscription_id
        self.topic = topic
        self.group_id = group_id
        self.retry = retry
        self.drain_timeout = drain_timeout
        self._handler = handler
        self._dead_letters = dead_letters
        self._counters = counters.topics[topic]
        self._prefetch = prefetch
        self._backend_name = backend_name
        self._workers: dict[int, _PartitionWorker] = {}
        self._assigned: tuple[int, ...] = ()
        self._running = asyncio.Event()
        self._running.set()
        self._state: SubscriptionState = "active"
        self._created_at = datetime.now(UTC)
        # Wall-clock seconds, made a datetime only when asked for: reading the
        # clock as a datetime for every message costs more than the rest of
        # the bookkeeping.
        self._last_message_time: float | None = None
        self.received = 0
        self.acked = 0
        self.failed = 0
        self.dead_lettered = 0

    # -- the sink a stream feeds ----------------------------------------------

    async def deliver(self, delivery: Delivery) -> None:
        """Queue a delivery on its partition's worker, waiting if it is full."""
        worker = self._workers.get(delivery.partition)
        if worker is None:
            worker = _PartitionWorker(self, delivery.partition, self._prefetch)
            self._workers[delivery.partition] = worker

        await worker.put(delivery)

    async def revoke(self, partitions: Sequence[int]) -> None:
        """Let running handlers of ``partitions`` finish, drop the rest."""
        workers = [self._workers.pop(p) for p in partitions if p in self._workers]
        await asyncio.gather(*(w.stop(self.drain_timeout) for w in workers))

    def assigned(self, partitions: Sequence[int]) -> None:
        """Record the partitions the stream reads now."""
        self._assigned = tuple(sorted(partitions))

    # -- control --------------------------------------------------------------

    @property
    def state(self) -> SubscriptionState:
        """Lifecycle state of the subscription."""
        return self._state

    def pause(self) -> None:
        """Hold every worker before its next message."""
        if self._state == "active":
            self._state = "paused"
            self._running.clear()

    def resume(self) -> None:
        """Let the workers go on where they stopped."""
        if self._state == "paused":
            self._state = "active"
            self._running.set()

    async def drain(self) -> None:
        """Finish running handlers, give up the rest, stop every worker."""
        self._state = "stopping"
        self._running.set()
        workers = list(self._workers.values())
        self._workers.clear()

        await asyncio.gather(*(w.stop(self.drain_timeout) for w in workers))
        self._state = "stopped"

    def info(self) -> SubscriptionInfo:
        """A snapshot of the subscription."""
        in_flight = sum(w.in_flight for w in self._workers.values())
        last = self._last_message_time
        return SubscriptionInfo(
            subscription_id=self.subscription_id,
            topic=self.topic,
            group_id=self.group_id,
            state=self._state,
            created_at=self._created_at,
            assigned_partitions=self._assigned,
            messages_received=self.received,
            messages_acked=self.acked,
            messages_failed=self.failed,
            messages_dead_lettered=self.dead_lettered,
            in_flight=in_flight,
            last_message_at=None if last is None else datetime.fromtimestamp(last, UTC),
        )

    # -- handling one message -------------------------------------------------

    async def handle(self, delivery: Delivery, stopping: asyncio.Event) -> None:
        """Take one delivery through attempts, retries and dead-lettering."""
        self.received += 1
        self._last_message_time = time.time()
        self._counters.bytes_consumed += len(delivery.payload)

        try:
            message = decompress_message(
                EventMessage.from_bytes(
                    delivery.payload,
                    partition=delivery.partition,
                    offset=delivery.offset,
                )
            )
        except (SerializationError, CodecUnavailableError) as exc:
            await self._dead_letter_undecodable(delivery, exc, stopping)
            return

        try:
            failure = await self._run_attempts(message, delivery, stopping)
        except _Abandoned:
            logger.debug(
                "Subscription %s stopped while message %s waited for a retry",
                self.subscription_id,
                message.message_id,
            )
            return

        if failure is not None:
            await self._give_up(
                message,
                delivery,
                failure.cause,
                failure.attempt,
                failure.first_failure_at,
                stopping,
            )
            return

        await delivery.ack()
        self.acked += 1
        self._counters.consumed += 1

    async def _run_attempts(
        self, message: EventMessage, delivery: Delivery, stopping: asyncio.Event
    ) -> _Failure | None:
        """Try the handler until it succeeds; return the final failure if not."""
        try:
            await self._attempt(message, 1, delivery)
            return None
        except _Rejected as rejected:
            return rejected
        except _AttemptFailed as failure:
            first = failure

        try:
            await self._retry(message, delivery, first, stopping)
        except _Failure as last:
            last.first_failure_at = first.first_failure_at
            return last
        return None

    async def _attempt(
        self, message: EventMessage, attempt: int, delivery: Delivery
    ) -> None:
        # The decoded message serves the first attempt; a retry gets a fresh,
        # unsettled copy so the previous attempt's settlement does not leak.
        candidate = message._delivered_copy() if attempt > 1 else message
        candidate._deliverable = True
        context: dict[str, ContextValue] = {
            "subscription_id": self.subscription_id,
            "topic": self.topic,
            "group_id": self.group_id,
            "partition": delivery.partition,
            "offset": delivery.offset,
            "attempt": attempt,
            "max_attempts": self.retry.max_attempts,
            "delivery_count": delivery.delivery_count,
            "backend": self._backend_name,
        }

        error: Exception | None = None
        try:
            await self._handler(candidate, context)
        except Exception as exc:
            error = exc

        settlement = candidate.settlement
        if settlement == "ack" or (settlement is None and error is None):
            if error is not None:
                logger.warning(
                    "Handler of subscription %s acked message %s and then raised "
                    "%r; the message stays acknowledged",
                    self.subscription_id,
                    message.message_id,
                    error,
                )
            return

        self.failed += 1
        self._counters.failed += 1

        if settlement == "reject":
            cause = error or MessageRejectedError(message.message_id, requeue=False)
            raise _Rejected(cause, attempt)

        cause = error or MessageRejectedError(message.message_id, requeue=True)
        logger.debug(
            "Attempt %d of %d failed for message %s: %r",
            attempt,
            self.retry.max_attempts,
            message.message_id,
            cause,
        )
        raise _AttemptFailed(cause, attempt)

    async def _retry(
        self,
        message: EventMessage,
        delivery: Delivery,
        first: _AttemptFailed,
        stopping: asyncio.Event,
    ) -> None:
        async def sleep(seconds: float) -> None:
            if await _stopped_within(stopping, seconds):
                raise _Abandoned
            await self._running.wait()

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry.max_attempts),
            wait=wait_exponential_jitter(
                multiplier=self.retry.backoff_ms / 1000,
                max=self.retry.backoff_max_ms / 1000,
                jitter=self.retry.jitter_ms / 1000,
            ),
            retry=retry_if_exception_type(_AttemptFailed),
            sleep=sleep,
            reraise=True,
        )

        try:
            async for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    # The first attempt already ran on the fast path, outside
                    # tenacity; replaying its failure here lets tenacity own the
                    # count and the delay before every later attempt.
                    if number == 1:
                        raise first
                    self._counters.retried += 1
                    await self._attempt(message, number, delivery)
        except RetryError as exc:  # pragma: no cover - reraise=True prevents it
            raise first from exc

    async def _give_up(
        self,
        message: EventMessage,
        delivery: Delivery,
        error: BaseException,
        attempts: int,
        first_failure_at: datetime,
        stopping: asyncio.Event,
    ) -> None:
        stored = await self._store_dead_letter(
            message, delivery.payload, error, attempts, first_failure_at, stopping
        )
        if not stored:
            return

        await delivery.ack()
        self.dead_lettered += 1
        self._counters.dead_lettered += 1

    async def _dead_letter_undecodable(
        self, delivery: Delivery, error: PolybusError, stopping: asyncio.Event
    ) -> None:
        logger.error(
            "Message at %s/%d@%s of subscription %s cannot be decoded: %s",
            self.topic,
            delivery.partition,
            delivery.offset,
            self.subscription_id,
            error,
        )
        raw = EventMessage(
            topic=self.topic,
            value=delivery.payload,
            partition=delivery.partition,
            offset=delivery.offset,
        )
        await self._give_up(raw, delivery, error, 0, datetime.now(UTC), stopping)

    async def _store_dead_letter(
        self,
        message: EventMessage,
        payload: bytes,
        error: BaseException,
        attempts: int,
        first_failure_at: datetime,
        stopping: asyncio.Event,
    ) -> bool:
        """Write the dead letter, retrying until it is stored or we stop.

        The original is acknowledged only after this returns ``True``; while the
        dead-letter write fails the partition waits, so nothing is lost.
        """
        omitted: str | None = None

        async def write() -> None:
            nonlocal omitted
            try:
                await self._dead_letters.dead_letter(
                    message,
                    error,
                    attempts,
                    payload=payload,
                    group_id=self.group_id,
                    first_failure_at=first_failure_at,
                    payload_omitted=omitted,
                )
            except MessageTooLargeError as exc:
                if omitted is not None:
                    raise
                # No retry can make it smaller: keep the failure and where the
                # original lies, without its bytes, rather than block the
                # partition for good.
                omitted = str(exc)
                logger.error(
                    "Dead letter for message %s of topic %s is too large (%s); "
                    "storing it without the original's bytes",
                    message.message_id,
                    self.topic,
                    exc,
                )
                await write()

        async def sleep(seconds: float) -> None:
            if await _stopped_within(stopping, seconds):
                raise _Abandoned

        def report(state: RetryCallState) -> None:
            logger.error(
                "Could not store dead letter for message %s of topic %s, "
                "retrying in %.2fs: %r",
                message.message_id,
                self.topic,
                state.upcoming_sleep,
                state.outcome.exception() if state.outcome else None,
            )

        floor = max(self.retry.backoff_ms, 10) / 1000
        retrying = AsyncRetrying(
            wait=wait_exponential(
                multiplier=floor,
                min=floor,
                max=max(self.retry.backoff_max_ms, 10) / 1000,
            ),
            retry=retry_if_exception_type(Exception),
            sleep=sleep,
            before_sleep=report,
            reraise=True,
        )

        try:
            async for attempt in retrying:
                with attempt:
                    await write()
        except _Abandoned:
            return False
        return True


async def _stopped_within(stopping: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``stopping``; tell whether it was set.

    ``asyncio.timeout`` rather than ``wait_for``: on Python 3.11 ``wait_for`` can
    swallow a cancellation that arrives just as the event is set (CPython
    gh-86296), which would leave a worker running after its subscription ended.
    """
    try:
        async with asyncio.timeout(seconds):
            await stopping.wait()
    except TimeoutError:
        return stopping.is_set()
    return True


class _PartitionWorker:
    """Handles one partition's deliveries one at a time, in order.

    Deliveries wait in a deque bounded by ``prefetch``: :meth:`put` waits while
    it is full, which is how the stream feels backpressure. Two events say when
    a delivery arrived and when room was made; that is all ``asyncio.Queue``
    would do here, at a fraction of its cost per message.
    """

    def __init__(self, dispatcher: Dispatcher, partition: int, prefetch: int) -> None:
        self.partition = partition
        self._dispatcher = dispatcher
        self._pending: deque[Delivery] = deque()
        self._capacity = prefetch
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = asyncio.Event()
        self._busy = False
        self._current: Delivery | None = None
        self._task = asyncio.create_task(
            self._run(),
            name=f"polybus-{dispatcher.subscription_id[:8]}-p{partition}",
        )

    @property
    def in_flight(self) -> int:
        """Deliveries held and not settled."""
        return len(self._pending) + int(self._current is not None)

    async def put(self, delivery: Delivery) -> None:
        """Queue a delivery behind the others, waiting while the queue is full."""
        while len(self._pending) >= self._capacity:
            self._room.clear()
            await self._room.wait()

        self._pending.append(delivery)
        self._arrived.set()

    async def _run(self) -> None:
        dispatcher = self._dispatcher
        pending = self._pending

        while True:
            while not pending:
                self._arrived.clear()
                await self._arrived.wait()
            self._current = pending.popleft()
            self._room.set()

            if not dispatcher._running.is_set():
                await dispatcher._running.wait()
            if self._stopping.is_set():
                return

            self._busy = True
            try:
                await dispatcher.handle(self._current, self._stopping)
            except Exception:
                logger.exception(
                    "Delivery at partition %d offset %s of subscription %s was "
                    "left unacknowledged after an internal error",
                    self.partition,
                    self._current.offset,
                    dispatcher.subscription_id,
                )
            finally:
                self._busy = False
                self._current = None

            if self._stopping.is_set():
                return

    async def stop(self, grace: float) -> None:
        """Finish the running handler within ``grace`` seconds, drop what waits."""
        self._stopping.set()
        if not self._busy:
            self._task.cancel()

        done, _ = await asyncio.wait({self._task}, timeout=grace)
        if not done:
            logger.warning(
                "Handler on partition %d of subscription %s still ran after %.1fs; "
                "cancelled, its message stays unacknowledged",
                self.partition,
                self._dispatcher.subscription_id,
                grace,
            )
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            return

        if not self._task.cancelled() and self._task.exception() is not None:
            logger.error(
                "Worker of partition %d stopped with %r",
                self.partition,
                self._task.exception(),
            )
