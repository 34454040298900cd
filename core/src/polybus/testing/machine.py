"""Property-based equivalence of a backend and the reference model.

:class:`ConformanceMachine` is a Hypothesis ``RuleBasedStateMachine``. Its rules
create topics, publish (random keys, values and typed headers), subscribe and
unsubscribe with and without a group, pause and resume, and restart a
connection. Every rule runs on real buses over the backend under test and on
:class:`~polybus.testing.model.ContractModel`. What a handler does with a
message (return, ack, raise once, nack once, always raise, reject) follows from
the message's behaviour header, so both sides agree on each message's fate.

When the program ends the machine brings the system to quiescence (resumes
what is paused, gives each memberless group a member, waits until every
consumer has accounted for its messages, then fences each topic) and checks:

- conservation per group: published = handled + dead-lettered (+ in flight,
  which must by then be nothing);
- per-key order of what each consumer handled (if ``partition_order``);
- the handled and dead-lettered multisets equal the model's, a subset for a
  broadcast that has ended (and for a group that lost members, if the backend
  declares ``redelivers_unacked=False``);
- every handled message carries exactly what was published.

A failure shrinks to a short program that Hypothesis prints as Python, ready
to become a regression case (see :mod:`polybus.testing.regressions`).

One event loop per example: made in ``__init__``, closed in ``teardown`` after
every bus is closed, so nothing leaks between examples.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, ClassVar, Final

from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from polybus.bus import EventBus
from polybus.dlq import HEADER_PREFIX
from polybus.message import EventMessage
from polybus.settings import RetrySettings
from polybus.testing.checks import compare_delivery, typed_differences
from polybus.testing.harness import (
    Collector,
    ConditionTimeoutError,
    Harness,
    close_loop,
)
from polybus.testing.model import (
    BEHAVIOUR_HEADER,
    BEHAVIOURS,
    Behaviour,
    ContractModel,
    Expectation,
    ModelMessage,
)
from polybus.testing.profiles import CI_PROFILE, machine_settings
from polybus.types import ContextValue

__all__ = ["ConformanceMachine", "HandlerFailure", "bind_machine", "run_machine"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 2
CONNECTIONS: Final = 2
MAX_TOPICS: Final = 3
MAX_LIVE_SUBSCRIPTIONS: Final = 6

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
header_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
"""Header values of every type the envelope keeps, nested a little."""


def _merged(
    parts: tuple[dict[str, ContextValue], dict[str, ContextValue]],
) -> dict[str, ContextValue]:
    typed, extra = parts
    return {**extra, **typed}


headers_strategy = st.tuples(
    st.fixed_dictionaries(
        {"int": st.integers(min_value=-(2**63), max_value=2**64 - 1)},
        optional={
            "float": st.floats(allow_nan=False),
            "bool": st.booleans(),
            "none": st.none(),
            "text": st.text(max_size=8),
            "nested": header_values,
        },
    ),
    st.dictionaries(
        st.text(max_size=6).filter(lambda name: name != BEHAVIOUR_HEADER),
        header_values,
        max_size=2,
    ),
).map(_merged)
"""Headers with an int always, other types often, and a few random ones."""
keys_strategy = st.sampled_from([None, b"a", b"b", b"c", b"\x00\xff"])
behaviours_strategy = st.sampled_from(("ack", "ack", "ack", *BEHAVIOURS))
groups_strategy = st.none() | st.sampled_from(["g0", "g1"])


class HandlerFailure(Exception):
    """Raised by the machine's handler when a message's behaviour says so."""


async def act(message: EventMessage, context: dict[str, ContextValue]) -> None:
    """Do to ``message`` what its behaviour header says."""
    behaviour = message.headers.get(BEHAVIOUR_HEADER, "ack")
    first = context.get("attempt") == 1

    if behaviour == "ack_explicit":
        await message.ack()
    elif behaviour == "fail_once" and first:
        raise HandlerFailure("fails on the first attempt")
    elif behaviour == "nack_once" and first:
        await message.nack(requeue=True)
    elif behaviour == "fail_always":
        raise HandlerFailure("fails on every attempt")
    elif behaviour == "reject":
        await message.nack(requeue=False)


class ConformanceMachine(RuleBasedStateMachine):
    """Runs one random program on the backend and on the model, then compares.

    Use :func:`bind_machine` to get a subclass tied to a backend.
    """

    template: ClassVar[Harness | None] = None

    topics = Bundle("topics")
    subscriptions = Bundle("subscriptions")

    def __init__(self) -> None:
        super().__init__()
        template = type(self).template
        if template is None:
            raise TypeError("use bind_machine() to tie the machine to a backend")

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.h = Harness(template.factory, timeout_scale=template.timeout_scale)
        self.capabilities = template.capabilities
        self.model = ContractModel(max_attempts=MAX_ATTEMPTS)
        self.buses: list[EventBus] = []
        self.live: dict[str, tuple[int, str]] = {}
        self.paused: set[str] = set()
        self.groups: dict[tuple[str, str], Collector] = {}
        self.broadcasts: dict[str, Collector] = {}
        self.letters: dict[str, Collector] = {}
        self.sent: dict[Any, EventMessage] = {}
        self.group_names: dict[str, str] = {}
        self.counter = 0
        self.closed = False

        self._run(self._start())

    # -- plumbing ---------------------------------------------------------------

    def _run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    async def _start(self) -> None:
        retry = RetrySettings(
            max_attempts=MAX_ATTEMPTS, backoff_ms=1, backoff_max_ms=5, jitter_ms=1
        )
        for _ in range(CONNECTIONS + 1):
            self.buses.append(await self.h.bus(retry=retry, drain_timeout_ms=2_000))

    @property
    def observer(self) -> EventBus:
        """The connection that reads dead letters and publishes fences."""
        return self.buses[CONNECTIONS]

    def _group_id(self, name: str) -> str:
        if name not in self.group_names:
            self.group_names[name] = self.h.name(name)
        return self.group_names[name]

    # -- rules ------------------------------------------------------------------

    @initialize(
        target=topics,
        partitions=st.integers(min_value=1, max_value=3),
        group=st.sampled_from(["g0", "g1"]),
        via=st.integers(min_value=0, max_value=CONNECTIONS - 1),
    )
    def first_topic(self, partitions: int, group: str, via: int) -> str:
        """Every program starts with a topic read by a group and a broadcast."""
        topic = self._create_topic(partitions)

        self._subscribe(topic, group, via)
        self._subscribe(topic, None, CONNECTIONS - 1 - via)
        return topic

    @precondition(lambda self: len(self.model.partitions) < MAX_TOPICS)
    @rule(target=topics, partitions=st.integers(min_value=1, max_value=3))
    def create_topic(self, partitions: int) -> str:
        """Create a topic and start reading its dead letters."""
        return self._create_topic(partitions)

    def _create_topic(self, partitions: int) -> str:
        topic = self.h.name(f"t{len(self.model.partitions)}")

        created = self._run(self.buses[0].create_topic(topic, partitions))
        assert created == self.model.create_topic(topic, partitions)

        letters = Collector(f"dead letters of {topic}")
        dlq = self.observer.dead_letters.topic_for(topic)
        self._run(self.observer.subscribe_to_topic(dlq, letters.handler("dlq")))
        self.letters[topic] = letters
        return topic

    @rule(topic=topics, partitions=st.integers(min_value=1, max_value=3))
    def create_existing_topic(self, topic: str, partitions: int) -> None:
        """Creating a topic again answers False and changes nothing."""
        created = self._run(self.buses[1].create_topic(topic, partitions))
        assert created is False, f"create_topic of existing {topic!r} returned True"

        info = self._run(self.buses[1].get_topic_info(topic))
        expected = self.model.partitions[topic]
        assert info is not None, f"no info for existing topic {topic!r}"
        assert info.partition_count == expected, (
            f"partition count of {topic!r} is {info.partition_count}, "
            f"expected {expected}"
        )

    @rule(
        topic=topics,
        key=keys_strategy,
        value=st.binary(max_size=16),
        headers=headers_strategy,
        behaviour=behaviours_strategy,
        count=st.integers(min_value=1, max_value=6),
        via=st.integers(min_value=0, max_value=CONNECTIONS - 1),
    )
    def publish(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: dict[str, ContextValue],
        behaviour: Behaviour,
        count: int,
        via: int,
    ) -> None:
        """Publish ``count`` messages alike but for a counter in the value."""
        for index in range(count):
            message = EventMessage(
                topic=topic,
                value=value + index.to_bytes(2, "big"),
                key=key,
                headers={**headers, BEHAVIOUR_HEADER: behaviour},
            )
            self._run(self.buses[via].publish_event(topic, message))
            self.sent[message.message_id] = message
            self.model.publish(
                ModelMessage(message.message_id, topic, message.key, behaviour)
            )

    @precondition(lambda self: len(self.model.live()) < MAX_LIVE_SUBSCRIPTIONS)
    @rule(
        target=subscriptions,
        topic=topics,
        group=groups_strategy,
        via=st.integers(min_value=0, max_value=CONNECTIONS - 1),
    )
    def subscribe(self, topic: str, group: str | None, via: int) -> str:
        """Subscribe a member of a group, or a broadcast."""
        return self._subscribe(topic, group, via)

    def _subscribe(self, topic: str, group: str | None, via: int) -> str:
        group_id = self._group_id(group) if group else None
        name: str = self._run(self._member(topic, group_id, via))
        return name

    async def _member(self, topic: str, group_id: str | None, via: int) -> str:
        name = f"s{self.counter}"
        self.counter += 1

        if group_id is None:
            collector = self.broadcasts[name] = Collector(
                f"broadcast {name} on {topic}"
            )
        else:
            collector = self.groups.setdefault(
                (topic, group_id), Collector(f"group {group_id} on {topic}")
            )

        subscription = await self.buses[via].subscribe_to_topic(
            topic, collector.handler(name, act), group_id=group_id
        )
        self.model.subscribe(name, topic, group_id, via)
        self.live[name] = (via, subscription)
        return name

    @rule(subscription=consumes(subscriptions))
    def unsubscribe(self, subscription: str) -> None:
        """Stop a subscription; what it did not handle stays with its group."""
        if subscription not in self.live:
            return

        via, subscription_id = self.live.pop(subscription)
        self.paused.discard(subscription)
        self._run(self.buses[via].unsubscribe_from_topic(subscription_id))
        self.model.unsubscribe(subscription)

    @rule(subscription=subscriptions)
    def pause(self, subscription: str) -> None:
        """Pause a live subscription."""
        if subscription not in self.live:
            return

        via, subscription_id = self.live[subscription]
        assert self._run(self.buses[via].pause_subscription(subscription_id)) is True
        self.paused.add(subscription)

    @rule(subscription=subscriptions)
    def resume(self, subscription: str) -> None:
        """Resume a live subscription."""
        if subscription not in self.live:
            return

        via, subscription_id = self.live[subscription]
        assert self._run(self.buses[via].resume_subscription(subscription_id)) is True
        self.paused.discard(subscription)

    @rule(via=st.integers(min_value=0, max_value=CONNECTIONS - 1))
    def restart_connection(self, via: int) -> None:
        """Close one bus (all its subscriptions end) and start it again."""
        bus = self.buses[via]

        self._run(bus.close())
        self._run(bus.start())
        for name in self.model.close_connection(via):
            self.live.pop(name, None)
            self.paused.discard(name)

    # -- the end of a program ---------------------------------------------------

    def teardown(self) -> None:
        """Reach quiescence, compare with the model, and close everything."""
        try:
            if not self.closed:
                stalls = self._run(self._quiesce())
                self._check(stalls)
        finally:
            self.closed = True
            self._run(self.h.aclose())
            close_loop(self.loop, grace=self.h.seconds(5))

    async def _quiesce(self) -> list[str]:
        """Bring every consumer to rest; return the waits that ran out.

        A wait that runs out does not fail here: the comparison that follows
        says what is missing, which is more use than "timed out".
        """
        stalls: list[str] = []

        for name in sorted(self.paused):
            via, subscription_id = self.live[name]
            await self.buses[via].resume_subscription(subscription_id)
        self.paused.clear()

        for topic, group_id in self.model.memberless_groups():
            await self._member(topic, group_id, 0)

        try:
            await self.h.wait_until(
                self._accounted, lambda: "quiescence never came", 30
            )
        except ConditionTimeoutError as stalled:
            return [str(stalled)]

        for topic in self.model.partitions:
            dlq = self.observer.dead_letters.topic_for(topic)
            fences = [
                (topic, self._live_collectors(topic)),
                (dlq, [self.letters[topic]]),
            ]
            for fenced, collectors in fences:
                try:
                    await self.h.fence(self.observer, fenced, collectors)
                except ConditionTimeoutError as stalled:
                    stalls.append(str(stalled))

        return stalls

    def _live_collectors(self, topic: str) -> list[Collector]:
        collectors = []
        for subscription in self.model.live():
            if subscription.topic != topic:
                continue
            if subscription.group_id is None:
                collectors.append(self.broadcasts[subscription.name])
            else:
                collectors.append(self.groups[(topic, subscription.group_id)])
        return list({id(c): c for c in collectors}.values())

    def _collector(self, expectation: Expectation) -> Collector:
        kind, topic, name = expectation.consumer
        return self.groups[(topic, name)] if kind == "group" else self.broadcasts[name]

    def _letters_of(self, topic: str, group_id: str | None) -> list[EventMessage]:
        found: list[EventMessage] = []
        for letter in self.letters[topic].handled:
            if letter.headers.get(f"{HEADER_PREFIX}consumer_group") != group_id:
                continue
            original = letter.headers.get(f"{HEADER_PREFIX}original_message_id")
            found.extend(m for m in self.sent.values() if str(m.message_id) == original)
        return found

    def _accounted(self) -> bool:
        for expectation in self.model.expectations():
            if not expectation.exact or not self._strict(expectation):
                continue
            collector = self._collector(expectation)
            if not collector.has_handled(self._messages(expectation.handled)):
                return False
            if expectation.consumer[0] == "group":
                topic, group_id = expectation.consumer[1:]
                lettered = {m.message_id for m in self._letters_of(topic, group_id)}
                if any(m.message_id not in lettered for m in expectation.dead_lettered):
                    return False
        return True

    def _strict(self, expectation: Expectation) -> bool:
        return self.capabilities.redelivers_unacked or not expectation.members_left

    def _messages(self, messages: tuple[ModelMessage, ...]) -> list[EventMessage]:
        return [self.sent[m.message_id] for m in messages]

    def _report(self) -> str:
        lines = []
        for expectation in self.model.expectations():
            collector = self._collector(expectation)
            lines.append(collector.describe(self._messages(expectation.handled)))
        return "\n".join(lines)

    def _check(self, stalls: list[str]) -> None:
        problems: list[str] = []
        key_order = self.capabilities.partition_order

        for expectation in self.model.expectations():
            collector = self._collector(expectation)
            exact = expectation.exact and self._strict(expectation)
            label = " ".join(expectation.consumer)
            report = compare_delivery(
                self._messages(expectation.handled),
                collector.handled,
                exact=exact,
                key_order=key_order,
            )
            if not report.ok:
                problems.append(report.render(f"{label} handled"))

            if expectation.consumer[0] == "group":
                problems.extend(self._check_group_letters(expectation, exact, label))

        for topic in self.model.partitions:
            problems.extend(self._check_broadcast_letters(topic))

        problems.extend(self._check_fidelity())
        problems.extend(f"wait ran out: {stall}" for stall in stalls)

        if problems:
            raise AssertionError(
                "the backend differs from the model:\n" + "\n".join(problems)
            )

    def _check_group_letters(
        self, expectation: Expectation, exact: bool, label: str
    ) -> list[str]:
        _, topic, group_id = expectation.consumer
        letters = self._letters_of(topic, group_id)
        expected = self._messages(expectation.dead_lettered)
        problems = []

        report = compare_delivery(expected, letters, exact=exact, key_order=False)
        if not report.ok:
            problems.append(report.render(f"{label} dead letters"))

        handled = len(set(self.groups[(topic, group_id)].handled_ids()))
        published = len(expectation.handled) + len(expectation.dead_lettered)
        in_flight = published - handled - len({m.message_id for m in letters})
        if exact and in_flight != 0:
            problems.append(
                f"{label}: conservation fails: published {published} = handled "
                f"{handled} + dead-lettered {len(letters)} + in flight {in_flight}"
            )
        return problems

    def _check_broadcast_letters(self, topic: str) -> list[str]:
        low: Counter[Any] = Counter()
        high: Counter[Any] = Counter()
        for expectation in self.model.expectations():
            if (
                expectation.consumer[0] != "broadcast"
                or expectation.consumer[1] != topic
            ):
                continue
            for message in expectation.dead_lettered:
                high[message.message_id] += 1
                if expectation.exact:
                    low[message.message_id] += 1

        got = Counter(m.message_id for m in self._letters_of(topic, None))
        problems = []
        for message_id in sorted(low.keys() | high.keys() | got.keys(), key=str):
            if not low[message_id] <= got[message_id] <= high[message_id]:
                problems.append(
                    f"broadcast dead letters of {topic}: {message_id} dead-lettered "
                    f"{got[message_id]} times, expected {low[message_id]} to "
                    f"{high[message_id]}"
                )
        return problems

    def _check_fidelity(self) -> list[str]:
        problems = []
        collectors = [*self.groups.values(), *self.broadcasts.values()]
        for collector in collectors:
            for message in collector.handled:
                sent = self.sent.get(message.message_id)
                if sent is None:
                    continue
                differences = typed_differences(
                    sent.headers, message.headers, "headers"
                )
                if message.value != sent.value or message.key != sent.key:
                    differences.append("value or key changed")
                if differences:
                    problems.append(
                        f"{collector.name}: message {message.message_id} changed: "
                        + "; ".join(differences)
                    )
        return problems[:10]


def bind_machine(harness: Harness) -> type[ConformanceMachine]:
    """A :class:`ConformanceMachine` subclass running on ``harness``'s backend."""
    return type(
        f"ConformanceMachine_{harness.backend_name}",
        (ConformanceMachine,),
        {"template": harness},
    )


def run_machine(harness: Harness, profile: str = CI_PROFILE) -> None:
    """Run the state machine on ``harness``'s backend.

    :param profile: the Hypothesis profile unless ``POLYBUS_HYPOTHESIS_PROFILE``
        names another.
    """
    settings = machine_settings(profile)
    run_state_machine_as_test(bind_machine(harness), settings=settings)
