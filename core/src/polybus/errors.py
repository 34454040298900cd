"""The exceptions polybus raises.

Every error derives from :class:`PolybusError`, so a service can catch the whole
family in one place. Each message says what was wrong, with the offending value,
and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BackendUnavailableError",
    "BusClosedError",
    "CodecUnavailableError",
    "DeadLetterNotFoundError",
    "DeadLetterPayloadOmittedError",
    "ConfigurationError",
    "DuplicateBackendError",
    "InvalidHandlerError",
    "InvalidMessageError",
    "InvalidTopicNameError",
    "MessageAlreadySettledError",
    "MessageNotDeliveredError",
    "MessageRejectedError",
    "MessageTooLargeError",
    "PluginLoadError",
    "PolybusError",
    "SerializationError",
    "SubscriptionNotFoundError",
    "TopicNotFoundError",
    "UnknownBackendError",
    "UnsupportedOperationError",
]


class PolybusError(Exception):
    """Base class of every error raised by polybus."""


class ConfigurationError(PolybusError):
    """The settings given to polybus cannot be used."""


class UnknownBackendError(ConfigurationError):
    """The configured backend name matches no installed backend plugin."""

    def __init__(self, name: str, installed: Sequence[str], extra: str | None) -> None:
        self.name = name
        self.installed = tuple(sorted(installed))
        self.extra = extra

        listed = ", ".join(self.installed) or "none"
        hint = (
            f"install it with `pip install 'polybus[{extra}]'`"
            if extra
            else "install the distribution that provides it"
        )
        super().__init__(
            f"unknown event bus backend {name!r}; installed backends: {listed}; {hint}"
        )


class PluginLoadError(ConfigurationError):
    """A backend plugin could not be imported or registered."""

    def __init__(self, entry_point: str, distribution: str, cause: BaseException):
        self.entry_point = entry_point
        self.distribution = distribution
        self.cause = cause
        super().__init__(
            f"backend plugin {entry_point!r} from distribution {distribution!r} "
            f"failed to load: {type(cause).__name__}: {cause}"
        )


class DuplicateBackendError(ConfigurationError):
    """Two plugins claim the same backend name."""

    def __init__(self, name: str, first: str, second: str) -> None:
        self.name = name
        self.distributions = (first, second)
        super().__init__(
            f"backend name {name!r} is claimed by both {first!r} and {second!r}; "
            "uninstall one of them"
        )


class InvalidTopicNameError(PolybusError, ValueError):
    """A topic name breaks the naming rule shared by every backend."""

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(
            f"invalid topic name {topic!r}: {reason} (a topic name is 1 to 249 "
            "characters of [A-Za-z0-9._-] and is neither '.' nor '..')"
        )


class TopicNotFoundError(PolybusError, LookupError):
    """The topic does not exist and automatic creation is switched off."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(
            f"topic {topic!r} does not exist; create it with create_topic() or "
            "enable auto_create_topics"
        )


class MessageTooLargeError(PolybusError, ValueError):
    """A message is larger than the configured maximum size."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        self.topic = topic
        self.size = size
        self.limit = limit
        super().__init__(
            f"message for topic {topic!r} is {size} bytes once serialized, over "
            f"the limit of {limit} bytes (setting max_message_bytes)"
        )


class SerializationError(PolybusError, ValueError):
    """Bytes could not be turned into a message, or a message into bytes."""


class InvalidMessageError(SerializationError):
    """A field of an event message has a value of the wrong type or form."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field} must be {expected}, got {value!r}")


class CodecUnavailableError(ConfigurationError):
    """A compression codec was asked for but its package is not installed."""

    def __init__(self, codec: str, package: str) -> None:
        self.codec = codec
        self.package = package
        super().__init__(
            f"compression {codec!r} needs the package {package!r}; install it "
            f"with `pip install {package}` or `pip install 'polybus[{codec}]'`"
        )


class SubscriptionNotFoundError(PolybusError, LookupError):
    """No live subscription has the given id."""

    def __init__(self, subscription_id: str) -> None:
        self.subscription_id = subscription_id
        super().__init__(f"no active subscription with id {subscription_id!r}")


class BackendUnavailableError(PolybusError, ConnectionError):
    """The broker cannot be reached; the operation may succeed when retried."""


class UnsupportedOperationError(PolybusError, NotImplementedError):
    """The backend declares that it cannot perform this operation."""

    def __init__(self, backend: str, operation: str, reason: str) -> None:
        self.backend = backend
        self.operation = operation
        super().__init__(f"backend {backend!r} does not support {operation}: {reason}")


class MessageAlreadySettledError(PolybusError, RuntimeError):
    """ack() or nack() was called on a message that was already settled."""

    def __init__(self, message_id: object, outcome: str) -> None:
        self.message_id = message_id
        self.outcome = outcome
        super().__init__(
            f"message {message_id} was already settled ({outcome}); a message is "
            "acknowledged or rejected once"
        )


class BusClosedError(PolybusError, RuntimeError):
    """The event bus was used before start() or after close()."""


class MessageNotDeliveredError(PolybusError, RuntimeError):
    """ack() or nack() was called on a message no subscription delivered."""

    def __init__(self, message_id: object) -> None:
        self.message_id = message_id
        super().__init__(
            f"message {message_id} was not delivered by a subscription, so there "
            "is nothing to acknowledge; ack() and nack() belong in a handler"
        )


class MessageRejectedError(PolybusError):
    """A handler settled a message with nack() instead of raising."""

    def __init__(self, message_id: object, requeue: bool) -> None:
        self.message_id = message_id
        self.requeue = requeue
        super().__init__(
            f"handler rejected message {message_id} with nack(requeue={requeue})"
        )


class InvalidHandlerError(PolybusError, TypeError):
    """A subscription was given something that cannot handle messages."""

    def __init__(self, handler: object) -> None:
        self.handler = handler
        super().__init__(
            f"a handler is an async callable (message, context) -> None, such as "
            f"an `async def` function; got {handler!r}"
        )


class DeadLetterNotFoundError(PolybusError, LookupError):
    """No dead-letter topic (or not the one of ``topic``) holds that id."""

    def __init__(self, dlq_message_id: str, topic: str | None = None) -> None:
        self.dlq_message_id = dlq_message_id
        self.topic = topic
        where = f" among the dead letters of {topic!r}" if topic else ""
        super().__init__(f"no dead letter with id {dlq_message_id!r}{where}")


class DeadLetterPayloadOmittedError(PolybusError):
    """A dead letter stored without its original's bytes cannot be replayed."""

    def __init__(
        self,
        dlq_message_id: str,
        reason: str,
        where: str,
        size: int | None,
    ) -> None:
        self.dlq_message_id = dlq_message_id
        self.reason = reason
        self.where = where
        self.size = size
        bytes_ = f" of {size} bytes" if size is not None else ""
        super().__init__(
            f"dead letter {dlq_message_id!r} holds no copy of its original"
            f"{bytes_} ({reason}); it cannot be retried from the dead-letter "
            f"queue; the original lies at {where}"
        )
