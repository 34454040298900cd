"""What a conformance test stands on: buses, unique names, collectors, deadlines.

Every wait in the kit is on a condition with a deadline (:func:`wait_until`),
never a fixed sleep, and a wait that runs out says what it was waiting for and
what it saw. Deadlines are multiplied by a scale factor, so a slow broker in CI
can be given more time without touching the tests.

:func:`async_test` runs one coroutine test in a fresh event loop, so the kit
needs no asyncio pytest plugin and ignores one that is installed.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, ParamSpec, Protocol

from polybus.backend import Backend, Capabilities
from polybus.bus import EventBus
from polybus.errors import PolybusError
from polybus.message import EventMessage
from polybus.partitioner import partition_for_key
from polybus.settings import DeadLetterSettings, PolybusSettings, RetrySettings
from polybus.testing.checks import compare_delivery
from polybus.types import ContextValue

if TYPE_CHECKING:
    from polybus.testing.outage import Outage

__all__ = [
    "FENCE_HEADER",
    "Attempt",
    "BackendFactory",
    "Behaviour",
    "Collector",
    "ConditionTimeoutError",
    "Harness",
    "MissingCapabilityError",
    "Outcome",
    "async_test",
    "close_loop",
    "fast_settings",
    "free_port",
    "key_for_partition",
    "wait_until",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")

FENCE_HEADER: Final = "polybus.testing.fence"
"""Header marking a fence message; its value is the fence token."""

_POLL_SECONDS: Final = 0.005

Outcome = Literal["ack", "raise", "requeue", "reject", "cancelled"]
"""What one handler attempt did with its message."""

Behaviour = Callable[[EventMessage, dict[str, ContextValue]], Awaitable[None]]
"""The body of a test handler; it may raise, ``ack()`` or ``nack()``."""


class BackendFactory(Protocol):
    """Makes a fresh, unstarted backend connected to the server under test.

    Backends made by one factory must see the same topics and consumer groups
    (for a broker: the same server; for an embedded store: a shared store).
    """

    def __call__(self) -> Backend:
        """Return a new backend, not yet connected."""


class ConditionTimeoutError(AssertionError):
    """A condition the test waited for did not come true before its deadline."""


class MissingCapabilityError(Exception):
    """A test needs a capability that the backend declares it does not have."""

    def __init__(self, backend: str, capability: str, reason: str | None) -> None:
        self.backend = backend
        self.capability = capability
        because = f": {reason}" if reason else ""
        super().__init__(
            f"backend {backend!r} declares capability {capability}=False{because}"
        )


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float,
    describe: Callable[[], str],
) -> None:
    """Return once ``condition()`` is true; fail after ``timeout`` seconds.

    :param condition: a check, plain or async, polled every few milliseconds.
    :param timeout: seconds before giving up.
    :param describe: what was awaited and what was seen, for the failure report.
    :raises ConditionTimeoutError: if the deadline passes first.
    """
    deadline = time.monotonic() + timeout

    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return

        if time.monotonic() >= deadline:
            raise ConditionTimeoutError(f"after {timeout:.1f}s: {describe()}")

        await asyncio.sleep(_POLL_SECONDS)


def async_test(
    timeout: float = 60.0,
) -> Callable[
    [Callable[P, Coroutine[Any, Any, None]]],
    Callable[P, None],
]:
    """Turn a coroutine test into a plain one that runs in its own event loop.

    The loop is made for the test and closed after it (see :func:`close_loop`),
    so no state leaks from one test to the next. A :class:`Harness` among the
    test's arguments is closed inside that loop, within its own deadline.
    Raising :class:`MissingCapabilityError` skips the test with its message.

    :param timeout: seconds the whole test may take, times the harness's scale.
    """

    def decorate(
        test: Callable[P, Coroutine[Any, Any, None]],
    ) -> Callable[P, None]:
        @functools.wraps(test)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            harnesses = [a for a in (*args, *kwargs.values()) if isinstance(a, Harness)]
            scale = max((h.timeout_scale for h in harnesses), default=1.0)

            async def main() -> None:
                try:
                    async with asyncio.timeout(timeout * scale):
                        await test(*args, **kwargs)
                finally:
                    for harness in harnesses:
                        await harness.aclose()

            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(main())
            except MissingCapabilityError as missing:
                import pytest

                pytest.skip(str(missing))
            finally:
                close_loop(loop, grace=5 * scale)

        return run

    return decorate


def close_loop(loop: asyncio.AbstractEventLoop, *, grace: float) -> None:
    """Cancel what a test left running, then close its loop.

    :param grace: seconds the leftover tasks get to finish cancelling.
    :raises AssertionError: naming the tasks that ignored cancellation, which
        a backend must not leave behind: they would hold connections forever.
    """
    asyncio.set_event_loop(None)

    try:
        stubborn = loop.run_until_complete(_cancel_leftovers(grace))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()

    if stubborn:
        raise AssertionError(
            f"{len(stubborn)} tasks still ran {grace:.1f}s after being cancelled "
            f"at the end of the test: {', '.join(sorted(stubborn))}"
        )


async def _cancel_leftovers(grace: float) -> list[str]:
    current = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not current]
    if not leftovers:
        return []

    logger.debug("Cancelling %d tasks left by the test", len(leftovers))
    for task in leftovers:
        task.cancel()
    _, pending = await asyncio.wait(leftovers, timeout=grace)

    return [task.get_name() for task in pending]


def key_for_partition(partition: int, partition_count: int, stem: str) -> bytes:
    """A key that Kafka's partitioner places on ``partition``."""
    for index in range(100_000):
        key = f"{stem}-{index}".encode()
        if partition_for_key(key, partition_count) == partition:
            return key

    raise ValueError(f"no key found for partition {partition} of {partition_count}")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call of a test handler."""

    message: EventMessage
    context: dict[str, ContextValue]
    member: str
    outcome: Outcome
    at: float = field(default_factory=time.monotonic)

    @property
    def attempt(self) -> int:
        """The attempt number the dispatcher passed in the context."""
        value = self.context.get("attempt")
        return value if isinstance(value, int) else 0


async def _acknowledge(message: EventMessage, context: dict[str, ContextValue]) -> None:
    """The default behaviour: return, which acknowledges."""


class Collector:
    """Records every handler call of one consumer: a group or a broadcast.

    Members of one group share a collector and tell themselves apart by
    ``member``. Fence messages (see :meth:`Harness.fence`) are recorded apart
    and never reach the behaviour.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.attempts: list[Attempt] = []
        self.fences: defaultdict[str, set[int]] = defaultdict(set)
        self.running = 0

    def handler(
        self, member: str = "m0", behaviour: Behaviour = _acknowledge
    ) -> Callable[[EventMessage, dict[str, ContextValue]], Awaitable[None]]:
        """A handler that records each attempt and then acts as ``behaviour``."""

        async def handle(
            message: EventMessage, context: dict[str, ContextValue]
        ) -> None:
            token = message.headers.get(FENCE_HEADER)
            if isinstance(token, str):
                partition = context.get("partition")
                self.fences[token].add(partition if isinstance(partition, int) else -1)
                return

            self.running += 1
            outcome: Outcome = "cancelled"
            try:
                await behaviour(message, context)
                outcome = _outcome_of(message, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outcome = _outcome_of(message, exc)
                raise
            finally:
                self.running -= 1
                self.attempts.append(Attempt(message, dict(context), member, outcome))

        return handle

    @property
    def handled(self) -> list[EventMessage]:
        """Messages of successful attempts, in the order they were handled."""
        return [a.message for a in self.attempts if a.outcome == "ack"]

    def handled_by(self, member: str) -> list[EventMessage]:
        """Messages one member handled successfully."""
        return [
            a.message
            for a in self.attempts
            if a.outcome == "ack" and a.member == member
        ]

    def attempts_of(self, message_id: uuid.UUID) -> list[Attempt]:
        """Every attempt at one message."""
        return [a for a in self.attempts if a.message.message_id == message_id]

    def handled_ids(self) -> Counter[uuid.UUID]:
        """How often each message was handled successfully."""
        return Counter(m.message_id for m in self.handled)

    def has_handled(self, messages: Iterable[EventMessage]) -> bool:
        """Whether each of ``messages`` was handled successfully at least once."""
        seen = self.handled_ids()
        return all(m.message_id in seen for m in messages)

    def describe(self, expected: Sequence[EventMessage] = ()) -> str:
        """A short account of what this collector saw, for failure reports."""
        seen = self.handled_ids()
        missing = [str(m.message_id) for m in expected if m.message_id not in seen]
        outcomes = Counter(a.outcome for a in self.attempts)
        return (
            f"{self.name}: {len(self.attempts)} attempts {dict(outcomes)}, "
            f"{len(seen)} distinct messages handled; "
            f"{len(missing)} of {len(expected)} expected still missing"
            + (f" (first: {', '.join(missing[:5])})" if missing else "")
        )


def _outcome_of(message: EventMessage, error: BaseException | None) -> Outcome:
    settlement = message.settlement
    if settlement == "ack":
        return "ack"
    if settlement == "reject":
        return "reject"
    if settlement == "requeue":
        return "requeue"
    return "ack" if error is None else "raise"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on, for a test server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def fast_settings(**overrides: Any) -> PolybusSettings:
    """Core settings for tests: short retry backoffs, short drains, no env noise.

    :param overrides: any :class:`PolybusSettings` field.
    """
    values: dict[str, Any] = {
        "max_message_bytes": 1_048_576,
        "auto_create_topics": True,
        "default_partitions": 1,
        "prefetch": 16,
        "drain_timeout_ms": 5_000,
        "metadata_max_age_ms": 30_000,
        "start_position": "latest",
        "retry": RetrySettings(
            max_attempts=3, backoff_ms=5, backoff_max_ms=40, jitter_ms=5
        ),
        "dead_letter": DeadLetterSettings(),
    }
    values.update(overrides)
    return PolybusSettings(**values)


class Harness:
    """Buses, names and deadlines for one test against one backend.

    :param factory: makes fresh, unstarted backends of the server under test.
    :param restart_server: restarts the broker, if the backend's tests can.
    :param outage: gives the :class:`polybus.testing.outage.Outage` that
        cuts backends off from the running broker and lets them back, or
        ``None`` if the backend's tests cannot; called on first use only, so
        tests that need no outage set none up.
    :param timeout_scale: multiplies every deadline.
    """

    def __init__(
        self,
        factory: BackendFactory,
        *,
        restart_server: Callable[[], object] | None = None,
        outage: Callable[[], Outage | None] | None = None,
        timeout_scale: float = 1.0,
    ) -> None:
        self.factory = factory
        self.restart_server = restart_server
        self._outage_provider = outage
        self.timeout_scale = timeout_scale
        self.run_id = uuid.uuid4().hex[:10]
        self.buses: list[EventBus] = []
        self._capabilities: Capabilities | None = None
        self._backend_name = ""

    @functools.cached_property
    def outage(self) -> Outage | None:
        """How to cut the backends off from the broker, if the tests can."""
        return self._outage_provider() if self._outage_provider else None

    # -- what the backend declares --------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        """The backend's capability declaration, read without connecting."""
        if self._capabilities is None:
            probe = self.factory()
            self._capabilities = probe.capabilities
            self._backend_name = probe.name
        return self._capabilities

    @property
    def backend_name(self) -> str:
        """Name of the backend under test."""
        _ = self.capabilities
        return self._backend_name

    def require(self, capability: str) -> None:
        """Skip the test unless the backend declares ``capability`` true.

        :raises MissingCapabilityError: if it is declared false.
        """
        declared = getattr(self.capabilities, capability)
        if not declared:
            reason = self.capabilities.limitations.get(capability)
            raise MissingCapabilityError(self.backend_name, capability, reason)

    # -- names and time -------------------------------------------------------

    def name(self, stem: str) -> str:
        """A topic or group name no other test run uses."""
        return f"pbt-{stem}-{self.run_id}-{uuid.uuid4().hex[:8]}"

    def seconds(self, base: float) -> float:
        """``base`` seconds, scaled for the backend under test."""
        return base * self.timeout_scale

    async def wait_until(
        self,
        condition: Callable[[], bool | Awaitable[bool]],
        describe: Callable[[], str],
        timeout: float = 20.0,
    ) -> None:
        """:func:`wait_until` with the harness's scaled deadline."""
        await wait_until(condition, timeout=self.seconds(timeout), describe=describe)

    async def wait_handled(
        self,
        collector: Collector,
        expected: Sequence[EventMessage],
        timeout: float = 20.0,
    ) -> None:
        """Wait until ``collector`` handled each of ``expected`` successfully."""

        def report() -> str:
            found = compare_delivery(
                expected, collector.handled, duplicates_allowed=True
            )
            return found.render(collector.name) + "\n  " + collector.describe(expected)

        await self.wait_until(lambda: collector.has_handled(expected), report, timeout)

    # -- buses ----------------------------------------------------------------

    async def bus(
        self, *, factory: BackendFactory | None = None, **settings: Any
    ) -> EventBus:
        """A started bus on a new backend connection; closed with the harness.

        :param factory: makes the backend; the harness's own when ``None``.
        :param settings: overrides of :func:`fast_settings`.
        """
        backend = (factory or self.factory)()
        bus = EventBus(backend, fast_settings(**settings))
        await bus.start()
        self.buses.append(bus)
        return bus

    async def topic(self, bus: EventBus, partitions: int = 1, stem: str = "t") -> str:
        """Create a topic with a unique name and ``partitions`` partitions."""
        topic = self.name(stem)
        created = await bus.create_topic(topic, partitions)
        assert created, f"create_topic({topic!r}) returned False for a new topic"
        return topic

    async def publish(
        self,
        bus: EventBus,
        topic: str,
        count: int,
        *,
        keys: Sequence[bytes | None] = (None,),
        stem: str = "m",
        headers: dict[str, ContextValue] | None = None,
    ) -> list[EventMessage]:
        """Publish ``count`` messages, keys taken in turn; return them in order."""
        published: list[EventMessage] = []

        for index in range(count):
            message = EventMessage(
                topic=topic,
                value=f"{stem}-{index}".encode(),
                key=keys[index % len(keys)],
                headers={"seq": index, **(headers or {})},
            )
            await bus.publish_event(topic, message)
            published.append(message)

        return published

    async def fence(
        self,
        bus: EventBus,
        topic: str,
        collectors: Sequence[Collector],
        timeout: float = 20.0,
    ) -> None:
        """Wait until ``collectors`` handled everything published to ``topic`` so far.

        With per-partition order, one fence message goes to every partition and
        each collector must see all of them: whatever was published earlier on
        a partition was handled before its fence. Without it, the wait is for a
        quiet spell in which no collector handles anything.
        """
        if not self.capabilities.partition_order:
            await self._quiet(collectors, timeout)
            return

        info = await bus.get_topic_info(topic)
        assert info is not None, f"topic {topic!r} vanished before its fence"
        token = uuid.uuid4().hex

        for partition in range(info.partition_count):
            key = key_for_partition(partition, info.partition_count, f"fence-{token}")
            fence = EventMessage(
                topic=topic, value=b"", key=key, headers={FENCE_HEADER: token}
            )
            await bus.publish_event(topic, fence)

        await self.wait_until(
            lambda: all(
                len(c.fences[token]) == info.partition_count for c in collectors
            ),
            lambda: (
                f"fence on {topic!r} ({info.partition_count} partitions): "
                + "; ".join(
                    f"{c.name} saw {sorted(c.fences[token])}" for c in collectors
                )
            ),
            timeout,
        )

    async def _quiet(self, collectors: Sequence[Collector], timeout: float) -> None:
        quiet = self.seconds(0.5)
        last = [len(c.attempts) for c in collectors]
        since = time.monotonic()

        def settled() -> bool:
            nonlocal last, since
            now = [len(c.attempts) for c in collectors]
            if now != last:
                last, since = now, time.monotonic()
            return time.monotonic() - since >= quiet

        await self.wait_until(settled, lambda: "collectors never went quiet", timeout)

    async def dead_letters(self, bus: EventBus, topic: str) -> Collector:
        """Subscribe a collector to ``topic``'s dead-letter topic, from now on."""
        collector = Collector(f"dead letters of {topic}")
        dlq = bus.dead_letters.topic_for(topic)
        await bus.subscribe_to_topic(dlq, collector.handler("dlq"))
        return collector

    async def aclose(self) -> None:
        """Close every bus this harness started, all within one deadline.

        Errors are logged, not raised: the test has had its say by then, and a
        bus that will not close shows up as a task left running.
        """
        buses, self.buses = self.buses, []

        async def close(bus: EventBus) -> None:
            try:
                await bus.close()
            except (PolybusError, OSError) as exc:
                logger.warning("Closing a test bus failed: %r", exc)

        try:
            async with asyncio.timeout(self.seconds(30)):
                await asyncio.gather(*(close(bus) for bus in buses))
        except TimeoutError:
            logger.warning("Test buses did not close within %.0fs", self.seconds(30))
