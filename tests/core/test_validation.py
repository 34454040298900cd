"""Topic names are checked the same way for every backend."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polybus import InvalidTopicNameError, validate_topic_name


@pytest.mark.parametrize(
    "topic", ["a", "orders", "Orders.v2", "user_events-1", "x" * 249, "...", "_"]
)
def test_valid_names_pass(topic: str) -> None:
    assert validate_topic_name(topic) == topic


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "it is empty"),
        (".", "reserved"),
        ("..", "reserved"),
        ("x" * 250, "250 characters long, over 249"),
        ("has space", "contains ' '"),
        ("a/b", "contains '/'"),
        ("naïve", "contains 'ï'"),
        ("a:b*c", "contains '\\*', ':'"),
    ],
)
def test_invalid_names_say_why(topic: str, reason: str) -> None:
    with pytest.raises(InvalidTopicNameError, match=reason) as caught:
        validate_topic_name(topic)

    assert caught.value.topic == topic
    assert isinstance(caught.value, ValueError)


def test_non_string_names_are_refused() -> None:
    with pytest.raises(InvalidTopicNameError, match="is a str"):
        validate_topic_name(42)


@given(st.from_regex(r"[A-Za-z0-9._-]{1,249}", fullmatch=True))
def test_every_legal_name_but_the_dots_passes(topic: str) -> None:
    if topic in {".", ".."}:
        with pytest.raises(InvalidTopicNameError):
            validate_topic_name(topic)
    else:
        assert validate_topic_name(topic) == topic
