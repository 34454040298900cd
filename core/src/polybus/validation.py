"""Checks applied the same way on every backend before anything is sent."""

from __future__ import annotations

import hashlib
import re
from typing import Final

from polybus.errors import InvalidTopicNameError

__all__ = ["MAX_TOPIC_LENGTH", "derived_topic_name", "validate_topic_name"]

MAX_TOPIC_LENGTH: Final = 249
_LEGAL: Final = re.compile(r"[A-Za-z0-9._-]+")


def validate_topic_name(topic: object) -> str:
    """Return ``topic`` if it follows Kafka's naming rule, else raise.

    :raises InvalidTopicNameError: if the name is empty, too long, ``.`` or
        ``..``, or holds a character outside ``[A-Za-z0-9._-]``.
    """
    if not isinstance(topic, str):
        raise InvalidTopicNameError(repr(topic), "a topic name is a str")

    if not topic:
        raise InvalidTopicNameError(topic, "it is empty")

    if len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidTopicNameError(
            topic, f"it is {len(topic)} characters long, over {MAX_TOPIC_LENGTH}"
        )

    if topic in {".", ".."}:
        raise InvalidTopicNameError(topic, "'.' and '..' are reserved")

    if not _LEGAL.fullmatch(topic):
        bad = sorted({c for c in topic if not _LEGAL.fullmatch(c)})
        raise InvalidTopicNameError(
            topic, f"it contains {', '.join(repr(c) for c in bad)}"
        )

    return topic


def derived_topic_name(topic: str, suffix: str) -> str:
    """``topic + suffix``, shortened to a legal length when it would be too long.

    A shortened name keeps the start of ``topic`` and adds eight hex digits of
    its SHA-1, so two long topics never share a derived topic.
    """
    name = topic + suffix
    if len(name) <= MAX_TOPIC_LENGTH:
        return name

    digest = hashlib.sha1(topic.encode(), usedforsecurity=False).hexdigest()[:8]
    keep = MAX_TOPIC_LENGTH - len(suffix) - len(digest) - 1
    return f"{topic[:keep]}-{digest}{suffix}"
