"""Errors of the RabbitMQ backend, in polybus's exception family."""

from __future__ import annotations

import re

from polybus.errors import ConfigurationError, PolybusError

__all__ = ["MessageReturnedError", "QueueArgumentsMismatchError"]

_INEQUIVALENT = re.compile(r"inequivalent arg '(?P<argument>[^']+)'")


class QueueArgumentsMismatchError(ConfigurationError):
    """A queue exists on the broker with arguments other than those asked for.

    RabbitMQ refuses to redeclare a queue with different arguments (for example
    another ``x-queue-type``); this names the queue and the argument instead of
    leaving a closed channel behind.
    """

    def __init__(self, queue: str, argument: str | None, detail: str) -> None:
        self.queue = queue
        self.argument = argument
        self.detail = detail
        what = f"argument {argument!r}" if argument else "arguments"
        super().__init__(
            f"queue {queue!r} already exists with a different {what} ({detail}); "
            "delete the queue, or use the settings it was created with "
            "(queue_type, name_prefix)"
        )

    @classmethod
    def from_reply(cls, queue: str, reply: str) -> QueueArgumentsMismatchError:
        """Build the error from the broker's PRECONDITION_FAILED reply text."""
        match = _INEQUIVALENT.search(reply)
        return cls(queue, match["argument"] if match else None, reply)


class MessageReturnedError(PolybusError):
    """The broker returned a ``mandatory`` message: no queue could take it.

    The message was not stored; publishing it again to the same place fails
    the same way until a queue is bound for its routing key.
    """

    def __init__(
        self, exchange: str, routing_key: str, reply_code: int, reply_text: str
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.reply_code = reply_code
        self.reply_text = reply_text
        super().__init__(
            f"the broker returned the message published to exchange {exchange!r} "
            f"with routing key {routing_key!r} ({reply_code} {reply_text}): no "
            "queue is bound to receive it"
        )
