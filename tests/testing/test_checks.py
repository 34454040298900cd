"""The checks report each kind of difference by name."""

from __future__ import annotations

import math
from uuid import uuid4

import pytest

from polybus.message import EventMessage
from polybus.testing.checks import (
    check_delivery,
    check_same_message,
    compare_delivery,
    typed_differences,
)


def messages(count: int, key: bytes | None = b"k") -> list[EventMessage]:
    return [
        EventMessage(topic="t", value=str(i).encode(), key=key) for i in range(count)
    ]


def test_identical_delivery_passes() -> None:
    sent = messages(5)

    check_delivery(sent, list(sent))


def test_missing_unexpected_duplicated_and_out_of_order_are_all_reported() -> None:
    sent = messages(4)
    stranger = EventMessage(topic="t", value=b"x")
    delivered = [sent[1], sent[0], sent[1], stranger]

    report = compare_delivery(sent, delivered)
    text = report.render("group g")

    assert [m.message_id for m in report.missing] == [
        sent[2].message_id,
        sent[3].message_id,
    ]
    assert report.unexpected == [stranger]
    assert report.duplicated == {sent[1].message_id: 2}
    assert len(report.out_of_order) == 1
    for part in ("missing (2)", "unexpected (1)", "duplicated (1)", "out of order"):
        assert part in text


def test_options_relax_exactly_what_they_name() -> None:
    sent = messages(3)
    delivered = [sent[2], sent[2], sent[0]]

    check_delivery(
        sent, delivered, exact=False, duplicates_allowed=True, key_order=False
    )
    with pytest.raises(AssertionError, match="missing"):
        check_delivery(sent, delivered, duplicates_allowed=True, key_order=False)
    with pytest.raises(AssertionError, match="duplicated"):
        check_delivery(sent, delivered, exact=False, key_order=False)
    with pytest.raises(AssertionError, match="out of order"):
        check_delivery(sent, delivered, exact=False, duplicates_allowed=True)


def test_messages_without_key_have_no_order_to_keep() -> None:
    sent = messages(3, key=None)

    check_delivery(sent, list(reversed(sent)))


@pytest.mark.parametrize(
    ("sent", "got"),
    [
        (1, True),
        (1, 1.0),
        (0.0, -0.0),
        (1, "1"),
        (None, "None"),
        ([1, 2], [1, 2, 3]),
        ({"a": 1}, {"a": 1, "b": 2}),
        ({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2.0}]}),
    ],
)
def test_typed_differences_tell_types_apart(sent: object, got: object) -> None:
    assert typed_differences(sent, got)


def test_typed_differences_accept_equal_values() -> None:
    value = {"a": [1, 2.5, True, None, "x", {"n": math.inf}], "b": -0.0}

    assert typed_differences(value, {**value}) == []


def test_a_changed_message_is_reported_field_by_field() -> None:
    sent = EventMessage(
        topic="t", value=b"v", key=b"k", headers={"n": 7}, correlation_id=uuid4()
    )
    got = EventMessage(
        topic="t",
        value=b"v",
        key=b"k",
        headers={"n": "7"},
        message_id=sent.message_id,
        timestamp=sent.timestamp,
    )

    with pytest.raises(AssertionError) as raised:
        check_same_message(sent, got)

    assert "headers['n']: sent int 7, got str '7'" in str(raised.value)
    assert "correlation_id" in str(raised.value)
