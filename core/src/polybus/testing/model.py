"""A pure reference model of the delivery contract.

The model knows nothing of brokers, tasks or time. It is fed the same program
as a real bus (create a topic, publish, subscribe with or without a group,
unsubscribe, close a connection) and says, for every consumer, which messages
it must end up handling and which it must dead-letter:

- a consumer group gets every message published to its topic after the group
  was created (``start_position=latest``), whether it had a member then or not;
- a broadcast subscription gets what was published while it was live; once it
  is gone it may have handled only part of that window;
- what a handler does with a message follows from the message's
  :data:`BEHAVIOUR_HEADER`, so the final outcome (handled or dead-lettered) is
  known from the message alone.

Pausing changes when, never what, so the model ignores it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias, get_args
from uuid import UUID

__all__ = [
    "BEHAVIOUR_HEADER",
    "Behaviour",
    "ConsumerKey",
    "ContractModel",
    "Expectation",
    "FinalOutcome",
    "ModelMessage",
    "final_outcome",
]

logger = logging.getLogger(__name__)

BEHAVIOUR_HEADER: Final = "polybus.testing.behaviour"
"""Header naming what the test handler does with the message."""

Behaviour = Literal[
    "ack", "ack_explicit", "fail_once", "nack_once", "fail_always", "reject"
]
"""What the test handler does: return, ``ack()``, raise on the first attempt only,
``nack(requeue=True)`` on the first attempt only, always raise, or
``nack(requeue=False)``."""

BEHAVIOURS: Final[tuple[Behaviour, ...]] = get_args(Behaviour)

FinalOutcome = Literal["handled", "dead_lettered"]

ConsumerKey: TypeAlias = tuple[str, str, str]
"""``("group", topic, group_id)`` or ``("broadcast", topic, subscription)``."""


def final_outcome(behaviour: Behaviour, max_attempts: int) -> FinalOutcome:
    """Where a message ends up under ``behaviour`` with ``max_attempts`` tries."""
    if behaviour in ("fail_always", "reject"):
        return "dead_lettered"
    if behaviour in ("fail_once", "nack_once") and max_attempts < 2:
        return "dead_lettered"
    return "handled"


@dataclass(frozen=True, slots=True)
class ModelMessage:
    """What the model needs of a published message."""

    message_id: UUID
    topic: str
    key: bytes | None
    behaviour: Behaviour


@dataclass(slots=True)
class _Subscription:
    name: str
    topic: str
    group_id: str | None
    connection: int
    start: int
    end: int | None = None


@dataclass(frozen=True, slots=True)
class Expectation:
    """What one consumer must have done once the system is quiet."""

    consumer: ConsumerKey
    handled: tuple[ModelMessage, ...]
    """Messages it must handle successfully, in publish order."""
    dead_lettered: tuple[ModelMessage, ...]
    """Messages it must dead-letter, in publish order."""
    exact: bool
    """``False`` when a subset is acceptable (a broadcast that has ended)."""
    members_left: bool = False
    """A member of this group stopped while the group existed."""


@dataclass(slots=True)
class ContractModel:
    """The contract as data: topics, logs, groups and subscriptions.

    :param max_attempts: the retry policy of the buses under test.
    """

    max_attempts: int
    partitions: dict[str, int] = field(default_factory=dict)
    logs: dict[str, list[ModelMessage]] = field(default_factory=dict)
    groups: dict[tuple[str, str], int] = field(default_factory=dict)
    left: set[tuple[str, str]] = field(default_factory=set)
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)

    # -- the program ----------------------------------------------------------

    def create_topic(self, topic: str, partition_count: int) -> bool:
        """Create a topic; ``False`` if it exists (its partitions unchanged)."""
        if topic in self.partitions:
            return False

        self.partitions[topic] = partition_count
        self.logs[topic] = []
        return True

    def publish(self, message: ModelMessage) -> None:
        """Append a message to its topic's log.

        :raises KeyError: if the topic was never created.
        """
        self.logs[message.topic].append(message)

    def subscribe(
        self, name: str, topic: str, group_id: str | None, connection: int
    ) -> None:
        """A subscription goes live; a new group starts at the end of the log."""
        end = len(self.logs[topic])
        if group_id is not None:
            self.groups.setdefault((topic, group_id), end)

        self.subscriptions[name] = _Subscription(name, topic, group_id, connection, end)

    def unsubscribe(self, name: str) -> None:
        """A subscription ends; what its group did not handle stays with the group."""
        subscription = self.subscriptions[name]
        if subscription.end is not None:
            return

        subscription.end = len(self.logs[subscription.topic])
        if subscription.group_id is not None:
            self.left.add((subscription.topic, subscription.group_id))

    def close_connection(self, connection: int) -> list[str]:
        """Every live subscription of one connection ends; return their names."""
        ended = [s.name for s in self.live() if s.connection == connection]
        for name in ended:
            self.unsubscribe(name)
        return ended

    # -- questions ------------------------------------------------------------

    def live(self) -> list[_Subscription]:
        """Subscriptions that have not ended."""
        return [s for s in self.subscriptions.values() if s.end is None]

    def is_live(self, name: str) -> bool:
        """Whether subscription ``name`` exists and has not ended."""
        subscription = self.subscriptions.get(name)
        return subscription is not None and subscription.end is None

    def memberless_groups(self) -> list[tuple[str, str]]:
        """Groups that exist but have no live member."""
        manned = {(s.topic, s.group_id) for s in self.live() if s.group_id}
        return sorted(g for g in self.groups if g not in manned)

    def expectations(self) -> list[Expectation]:
        """What every consumer must have done, groups first."""
        found = [
            self._expect(("group", topic, group_id), self.logs[topic][start:], True)
            for (topic, group_id), start in sorted(self.groups.items())
        ]

        for subscription in self.subscriptions.values():
            if subscription.group_id is not None:
                continue
            log = self.logs[subscription.topic]
            window = log[subscription.start : subscription.end]
            key = ("broadcast", subscription.topic, subscription.name)
            found.append(self._expect(key, window, subscription.end is None))

        return found

    def _expect(
        self, consumer: ConsumerKey, messages: list[ModelMessage], exact: bool
    ) -> Expectation:
        outcomes = {
            m.message_id: final_outcome(m.behaviour, self.max_attempts)
            for m in messages
        }
        return Expectation(
            consumer=consumer,
            handled=tuple(m for m in messages if outcomes[m.message_id] == "handled"),
            dead_lettered=tuple(
                m for m in messages if outcomes[m.message_id] == "dead_lettered"
            ),
            exact=exact,
            members_left=consumer[0] == "group" and consumer[1:] in self.left,
        )

    def published(self) -> Mapping[str, list[ModelMessage]]:
        """Every topic's log, in publish order."""
        return self.logs
