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

import logging
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

from polybus.message import EventMessage
from polybus.settings import DeadLetterSettings
from polybus.types import ContextValue

__all__ = ["HEADER_PREFIX", "DeadLetterWriter", "dead_letter_headers"]

logger = logging.getLogger(__name__)

HEADER_PREFIX: Final = "polybus.dlq."

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
        return f"{topic}{self._settings.topic_suffix}"

    async def dead_letter(
        self,
        message: EventMessage,
        error: BaseException,
        attempts: int,
        *,
        payload: bytes,
        group_id: str | None,
        first_failure_at: datetime,
    ) -> None:
        """Store ``message`` as a dead letter; raise if it could not be stored.

        :param payload: the bytes the broker delivered, kept as the value.
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
            return

        headers = dead_letter_headers(
            message,
            error,
            attempts,
            group_id=group_id,
            first_failure_at=first_failure_at,
            max_stack_trace_chars=self._settings.max_stack_trace_chars,
        )
        target = self.topic_for(message.topic)
        letter = EventMessage(
            topic=target,
            value=payload,
            key=message.key,
            headers=headers,
            correlation_id=message.correlation_id,
            causation_id=message.message_id,
        )

        await self._publish(target, letter)
        logger.warning(
            "Message %s of topic %s dead-lettered to %s after %d attempts: %s: %s",
            message.message_id,
            message.topic,
            target,
            attempts,
            type(error).__name__,
            error,
        )
