"""Checks on command-line values, run by Typer before a command starts.

Each check is an option callback: a value out of its range is refused with
:class:`typer.BadParameter`, which Typer prints as a usage error naming the option,
the value given and the values allowed, and exits with status 2. Nothing is sent or
consumed before every option has passed its check.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import typer

from polybus.dlq import MAX_HOURS
from polybus.errors import InvalidTopicNameError
from polybus.validation import validate_topic_name

__all__ = [
    "MAX_HOURS",
    "backend_name",
    "group_name",
    "int_range",
    "optional_seconds",
    "seconds",
    "topic_name",
    "topic_prefix",
]

logger = logging.getLogger(__name__)


def _describe(low: int, high: int | None) -> str:
    if high is None:
        return f"an integer of at least {low}"
    return f"an integer from {low} to {high}"


def int_range(low: int, high: int | None = None) -> Callable[[int | None], int | None]:
    """A callback refusing an integer below ``low`` or above ``high``.

    ``None`` (an option left out that has no default) passes.
    """

    def check(value: int | None) -> int | None:
        if value is None or (low <= value and (high is None or value <= high)):
            return value
        raise typer.BadParameter(f"{value} is out of range; use {_describe(low, high)}")

    return check


def _checked_seconds(value: float) -> float:
    if math.isfinite(value) and value > 0:
        return value
    raise typer.BadParameter(
        f"{value:g} is not a usable number of seconds; use a finite number greater "
        "than 0"
    )


def seconds(value: float) -> float:
    """A callback refusing a timeout that is 0, negative, NaN or infinite."""
    return _checked_seconds(value)


def optional_seconds(value: float | None) -> float | None:
    """Like :func:`seconds`, but ``None`` (wait without a limit) passes."""
    return None if value is None else _checked_seconds(value)


def topic_name(value: str) -> str:
    """A callback refusing a topic name that no backend accepts."""
    try:
        return validate_topic_name(value)
    except InvalidTopicNameError as exc:
        raise typer.BadParameter(str(exc)) from exc


def topic_prefix(value: str) -> str:
    """A callback refusing a prefix that would make illegal topic names.

    The topics are ``<prefix>.<event>``, so the prefix follows the topic naming
    rule, leaving room for a dot and an event name.
    """
    try:
        return validate_topic_name(value)
    except InvalidTopicNameError as exc:
        message = str(exc).replace("invalid topic name", "invalid topic prefix", 1)
        raise typer.BadParameter(message) from exc


def group_name(value: str | None) -> str | None:
    """A callback refusing an empty consumer group name; ``None`` passes."""
    if value is None or value.strip():
        return value
    raise typer.BadParameter(
        "a consumer group name is empty; leave --group out to read without a group"
    )


def backend_name(value: str | None) -> str | None:
    """A callback refusing an empty backend name; ``None`` passes.

    Whether a backend of that name is installed is checked when the settings are
    read, so a name from ``POLYBUS_BACKEND`` gets the same check.
    """
    if value is None or value.strip():
        return value
    raise typer.BadParameter(
        "the backend name is empty; run `polybus plugins` to list the backends"
    )
