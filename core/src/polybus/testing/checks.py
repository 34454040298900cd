"""Checks that compare what was published with what was delivered.

Each check raises :class:`AssertionError` with a report a person can act on:
which messages are missing, which were not expected, which came more than
once, which key went out of order, which field of a message changed and how.
They work on plain :class:`~polybus.message.EventMessage` lists, so a backend's
own tests can use them too.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from polybus.message import EventMessage

__all__ = [
    "DeliveryReport",
    "check_delivery",
    "check_same_message",
    "compare_delivery",
    "typed_differences",
]

logger = logging.getLogger(__name__)

_SHOWN = 8


@dataclass(slots=True)
class DeliveryReport:
    """What differs between the messages expected and those delivered."""

    missing: list[EventMessage] = field(default_factory=list)
    unexpected: list[EventMessage] = field(default_factory=list)
    duplicated: dict[UUID, int] = field(default_factory=dict)
    out_of_order: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing differs."""
        return not (
            self.missing or self.unexpected or self.duplicated or self.out_of_order
        )

    def render(self, label: str) -> str:
        """The report as text, a section per kind of problem."""
        lines = [f"{label}: delivery does not match what was published"]

        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {_listing(self.missing)}")
        if self.unexpected:
            lines.append(
                f"  unexpected ({len(self.unexpected)}): {_listing(self.unexpected)}"
            )
        if self.duplicated:
            shown = list(self.duplicated.items())[:_SHOWN]
            listed = ", ".join(f"{mid} x{count}" for mid, count in shown)
            lines.append(f"  duplicated ({len(self.duplicated)}): {listed}")
        if self.out_of_order:
            lines.append(f"  out of order ({len(self.out_of_order)} keys):")
            lines.extend(f"    {line}" for line in self.out_of_order[:_SHOWN])

        return "\n".join(lines)


def _describe(message: EventMessage) -> str:
    key = message.key.decode(errors="replace") if message.key is not None else None
    return f"{message.message_id} (key={key!r}, value={message.value[:24]!r})"


def _listing(messages: Sequence[EventMessage]) -> str:
    shown = ", ".join(_describe(m) for m in messages[:_SHOWN])
    more = f" and {len(messages) - _SHOWN} more" if len(messages) > _SHOWN else ""
    return shown + more


def compare_delivery(
    expected: Sequence[EventMessage],
    delivered: Sequence[EventMessage],
    *,
    exact: bool = True,
    duplicates_allowed: bool = False,
    key_order: bool = True,
) -> DeliveryReport:
    """Compare what a consumer handled with what it should have handled.

    :param expected: the messages, in publish order.
    :param delivered: the messages the consumer handled, in handling order.
    :param exact: ``False`` accepts a subset of ``expected`` (nothing missing is
        reported).
    :param duplicates_allowed: accept a message handled more than once.
    :param key_order: check that each key's messages were handled in publish
        order (first handling of each message counts).
    """
    report = DeliveryReport()
    position = {m.message_id: index for index, m in enumerate(expected)}
    counts = Counter(m.message_id for m in delivered)

    if exact:
        report.missing = [m for m in expected if m.message_id not in counts]

    seen: set[UUID] = set()
    for message in delivered:
        if message.message_id not in position and message.message_id not in seen:
            report.unexpected.append(message)
        seen.add(message.message_id)

    if not duplicates_allowed:
        report.duplicated = {
            mid: count for mid, count in counts.items() if count > 1 and mid in position
        }

    if key_order:
        report.out_of_order = _order_problems(delivered, position)

    return report


def _order_problems(
    delivered: Iterable[EventMessage], position: dict[UUID, int]
) -> list[str]:
    firsts: defaultdict[bytes, list[EventMessage]] = defaultdict(list)
    seen: set[UUID] = set()

    for message in delivered:
        if message.key is None or message.message_id not in position:
            continue
        if message.message_id in seen:
            continue
        seen.add(message.message_id)
        firsts[message.key].append(message)

    problems = []
    for key, messages in firsts.items():
        for before, after in itertools.pairwise(messages):
            if position[before.message_id] > position[after.message_id]:
                problems.append(
                    f"key {key!r}: #{position[before.message_id]} "
                    f"{before.message_id} was handled before "
                    f"#{position[after.message_id]} {after.message_id}, which was "
                    "published earlier"
                )
                break

    return problems


def check_delivery(
    expected: Sequence[EventMessage],
    delivered: Sequence[EventMessage],
    *,
    label: str = "consumer",
    exact: bool = True,
    duplicates_allowed: bool = False,
    key_order: bool = True,
) -> None:
    """Fail with a report unless ``delivered`` matches ``expected``.

    Takes the same options as :func:`compare_delivery`.

    :raises AssertionError: listing what is missing, unexpected, duplicated or
        out of order.
    """
    report = compare_delivery(
        expected,
        delivered,
        exact=exact,
        duplicates_allowed=duplicates_allowed,
        key_order=key_order,
    )
    if not report.ok:
        raise AssertionError(report.render(label))


def typed_differences(sent: object, got: object, path: str = "") -> list[str]:
    """Every place where two header values differ in value or in type.

    ``1``, ``1.0`` and ``True`` are equal in Python; here they differ, and so do
    ``0.0`` and ``-0.0``.
    """
    where = path or "value"
    if type(sent) is not type(got):
        return [
            f"{where}: sent {type(sent).__name__} {sent!r}, "
            f"got {type(got).__name__} {got!r}"
        ]

    if isinstance(sent, float) and isinstance(got, float):
        same = (math.isnan(sent) and math.isnan(got)) or (
            sent == got and math.copysign(1, sent) == math.copysign(1, got)
        )
        return [] if same else [f"{where}: sent {sent!r}, got {got!r}"]

    if isinstance(sent, list) and isinstance(got, list):
        if len(sent) != len(got):
            return [f"{where}: sent {len(sent)} items {sent!r}, got {len(got)} {got!r}"]
        problems: list[str] = []
        for index, (a, b) in enumerate(zip(sent, got, strict=True)):
            problems.extend(typed_differences(a, b, f"{where}[{index}]"))
        return problems

    if isinstance(sent, dict) and isinstance(got, dict):
        problems = []
        for name in sorted(sent.keys() | got.keys(), key=repr):
            if name not in got:
                problems.append(f"{where}[{name!r}]: sent {sent[name]!r}, missing")
            elif name not in sent:
                problems.append(f"{where}[{name!r}]: not sent, got {got[name]!r}")
            else:
                problems.extend(
                    typed_differences(sent[name], got[name], f"{where}[{name!r}]")
                )
        return problems

    return [] if sent == got else [f"{where}: sent {sent!r}, got {got!r}"]


def check_same_message(sent: EventMessage, got: EventMessage) -> None:
    """Fail unless ``got`` carries exactly what ``sent`` carried.

    Compares topic, key, value, typed headers, timestamp and the message,
    correlation and causation ids; offset and partition are not compared.

    :raises AssertionError: naming every field that differs.
    """
    problems: list[str] = []

    for name in ("topic", "key", "value", "timestamp", "message_id"):
        a, b = getattr(sent, name), getattr(got, name)
        if a != b or type(a) is not type(b):
            problems.append(f"{name}: sent {a!r}, got {b!r}")

    for name in ("correlation_id", "causation_id"):
        a, b = getattr(sent, name), getattr(got, name)
        if a != b:
            problems.append(f"{name}: sent {a}, got {b}")

    problems.extend(typed_differences(sent.headers, got.headers, "headers"))

    if problems:
        raise AssertionError(
            f"message {sent.message_id} changed in transit:\n  " + "\n  ".join(problems)
        )
