"""The event message and its wire envelope.

An :class:`EventMessage` travels as one envelope, the same on every backend::

    b"PB" | version (1 byte) | MessagePack map

Version 1 of the map holds ``id`` (16 bytes), ``topic`` (str), ``key`` (bytes or
nil), ``value`` (bytes), ``headers`` (map of str to typed values), ``ts`` (int,
microseconds since the Unix epoch, UTC), ``corr`` and ``cause`` (16 bytes or nil).
Offset and partition are positions in a broker, so they are filled in on delivery
and never written. MessagePack keeps the header value types apart (int, float,
bool, nil, str, array, map), which is why headers survive every broker unchanged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, NoReturn
from uuid import UUID, uuid4

import msgpack

from polybus.errors import (
    InvalidMessageError,
    MessageAlreadySettledError,
    MessageNotDeliveredError,
    SerializationError,
)
from polybus.protocols import ProtocolEventMessage
from polybus.types import ContextValue

__all__ = [
    "ENVELOPE_MAGIC",
    "ENVELOPE_VERSION",
    "EventMessage",
    "Settlement",
    "as_event_message",
]

logger = logging.getLogger(__name__)

ENVELOPE_MAGIC: Final = b"PB"
ENVELOPE_VERSION: Final = 1
_PREFIX: Final = ENVELOPE_MAGIC + bytes([ENVELOPE_VERSION])
_INT_MIN: Final = -(2**63)
_UINT_MAX: Final = 2**64 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_MAX_HEADER_DEPTH: Final = 32

Settlement = Literal["ack", "requeue", "reject"]
"""How a handler settled a message: acknowledged, retried, or dead-lettered."""


def _coerce_uuid(name: str, value: object, *, required: bool) -> UUID | None:
    if value is None and not required:
        return None

    if isinstance(value, UUID):
        return value

    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass

    raise InvalidMessageError(name, value, "a UUID (or its string form)")


def _as_value(value: object) -> bytes:
    if isinstance(value, bytes):
        return value

    if isinstance(value, bytearray | memoryview):
        return bytes(value)

    raise InvalidMessageError("value", value, "bytes (encode text with .encode())")


def _as_key(key: object) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key

    if isinstance(key, str):
        return key.encode()

    if isinstance(key, bytearray | memoryview):
        return bytes(key)

    raise InvalidMessageError("key", key, "bytes, str or None")


def _is_scalar_header(value: object) -> bool:
    """Whether ``value`` is a header value of its own: no list, no dict."""
    if value is None or isinstance(value, str | bool | float):
        return True
    return isinstance(value, int) and _INT_MIN <= value <= _UINT_MAX


def _check_headers(headers: object) -> None:
    if not isinstance(headers, dict):
        raise InvalidMessageError("headers", headers, "a dict")

    for name, header in headers.items():
        if not isinstance(name, str):
            raise InvalidMessageError("header name", name, "a str")
        # Most headers are scalars: checked here, without spelling out the path
        # that only an error needs.
        if not _is_scalar_header(header):
            _check_header_value(f"headers[{name!r}]", header)


def _check_header_value(path: str, value: object, depth: int = 0) -> None:
    if depth > _MAX_HEADER_DEPTH:
        raise InvalidMessageError(
            path, "...", f"nested at most {_MAX_HEADER_DEPTH} levels deep"
        )

    if _is_scalar_header(value):
        return

    if isinstance(value, int):
        raise InvalidMessageError(path, value, "an integer within 64 bits")

    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_header_value(f"{path}[{index}]", item, depth + 1)
        return

    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidMessageError(f"{path} key", key, "a str")
            _check_header_value(f"{path}[{key!r}]", item, depth + 1)
        return

    raise InvalidMessageError(
        path, value, "str, int, float, bool, None, list or dict of those"
    )


@dataclass(slots=True, eq=False)
class EventMessage:
    """One event: a value with its key, typed headers and tracing ids.

    Only ``topic`` and ``value`` are needed; ``message_id`` is a new UUID unless
    given and ``timestamp`` is now (UTC). Ids may be given as strings; a string that
    is not a UUID raises :class:`~polybus.errors.InvalidMessageError`.

    A message handed to a handler is settled with :meth:`ack` or :meth:`nack`; a
    handler that returns without settling acknowledges it.
    """

    topic: str
    value: bytes
    key: bytes | None = None
    headers: dict[str, ContextValue] = field(default_factory=dict)
    offset: str | None = None
    partition: int | None = None
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    correlation_id: UUID | None = None
    causation_id: UUID | None = None
    message_id: UUID = field(default_factory=uuid4)
    _settlement: Settlement | None = field(default=None, repr=False)
    _deliverable: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._check_content()

        if not isinstance(self.timestamp, datetime) or self.timestamp.tzinfo is None:
            raise InvalidMessageError(
                "timestamp", self.timestamp, "a timezone-aware datetime"
            )
        self.timestamp = self.timestamp.astimezone(UTC)

        self.correlation_id = _coerce_uuid(
            "correlation_id", self.correlation_id, required=False
        )
        self.causation_id = _coerce_uuid(
            "causation_id", self.causation_id, required=False
        )
        self.message_id = _coerce_uuid(  # type: ignore[assignment]
            "message_id", self.message_id, required=True
        )

    def _check_content(self) -> None:
        """Check topic, value, key and headers; bring value and key to bytes.

        These are the fields whose type an envelope does not fix: MessagePack
        can carry text where bytes belong, or a binary header value. The
        timestamp and ids of a decoded envelope are made by :meth:`from_bytes`
        itself, so only the constructor checks those.
        """
        if not isinstance(self.topic, str):
            raise InvalidMessageError("topic", self.topic, "a str")

        self.value = _as_value(self.value)
        self.key = _as_key(self.key)
        _check_headers(self.headers)

    @classmethod
    def _unchecked(
        cls,
        *,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: dict[str, ContextValue],
        timestamp: datetime,
        correlation_id: UUID | None,
        causation_id: UUID | None,
        message_id: UUID,
        partition: int | None = None,
        offset: str | None = None,
    ) -> EventMessage:
        """A message from fields that are already valid, skipping ``__post_init__``.

        Only for fields taken from a message that was checked, or made by
        :meth:`from_bytes` (which checks the rest); the timestamp must be in
        UTC. Every field is given, so none is left unset.
        """
        message = cls.__new__(cls)
        message.topic = topic
        message.value = value
        message.key = key
        message.headers = headers
        message.offset = offset
        message.partition = partition
        message.timestamp = timestamp
        message.correlation_id = correlation_id
        message.causation_id = causation_id
        message.message_id = message_id
        message._settlement = None
        message._deliverable = False
        return message

    def _replace(
        self, *, value: bytes | None = None, headers: dict[str, ContextValue]
    ) -> EventMessage:
        """An unsettled copy with new headers and, if given, a new value.

        The value and headers must be valid already (a codec's output, a
        subset or copy of this message's own).
        """
        return EventMessage._unchecked(
            topic=self.topic,
            value=self.value if value is None else value,
            key=self.key,
            headers=headers,
            timestamp=self.timestamp,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            message_id=self.message_id,
            partition=self.partition,
            offset=self.offset,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventMessage):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self.message_id)

    def _fields(self) -> tuple[object, ...]:
        return (
            self.topic,
            self.key,
            self.value,
            self.headers,
            self.timestamp,
            self.correlation_id,
            self.causation_id,
            self.message_id,
        )

    # -- envelope -------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Encode the message as a version 1 envelope."""
        body = {
            "id": self.message_id.bytes,
            "topic": self.topic,
            "key": self.key,
            "value": self.value,
            "headers": self.headers,
            "ts": (self.timestamp - _EPOCH) // _MICROSECOND,
            "corr": self.correlation_id.bytes if self.correlation_id else None,
            "cause": self.causation_id.bytes if self.causation_id else None,
        }
        try:
            packed = _pack(body)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot encode message: {exc}") from exc
        return _PREFIX + packed

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        partition: int | None = None,
        offset: str | None = None,
    ) -> EventMessage:
        """Decode an envelope made by :meth:`to_bytes`.

        :raises SerializationError: if the bytes are not a polybus envelope of a
            known version.
        """
        body = _unpack(data)

        # The timestamp and ids are built here, so they are valid by making;
        # the other fields are checked as the constructor checks them.
        try:
            message = cls._unchecked(
                topic=body["topic"],
                value=body["value"],
                key=body["key"],
                headers=body["headers"],
                timestamp=_EPOCH + _micros(body["ts"]),
                correlation_id=_uuid_from(body["corr"]),
                causation_id=_uuid_from(body["cause"]),
                message_id=UUID(bytes=body["id"]),
                partition=partition,
                offset=offset,
            )
            message._check_content()
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"malformed envelope: {exc!r}") from exc

        return message

    async def serialize(self) -> bytes:
        """Encode the message as a version 1 envelope."""
        return self.to_bytes()

    async def deserialize(self, data: bytes) -> None:
        """Replace this message's fields with those of an envelope."""
        decoded = EventMessage.from_bytes(data)

        self.topic = decoded.topic
        self.key = decoded.key
        self.value = decoded.value
        self.headers = decoded.headers
        self.timestamp = decoded.timestamp
        self.correlation_id = decoded.correlation_id
        self.causation_id = decoded.causation_id
        self.message_id = decoded.message_id

    # -- settlement -----------------------------------------------------------

    async def ack(self) -> None:
        """Acknowledge the message: it is never delivered to this group again."""
        self._settle("ack")

    async def nack(self, requeue: bool = True) -> None:
        """Reject the message.

        :param requeue: ``True`` counts this as a failed attempt, so the message
            is tried again within the retry policy; ``False`` dead-letters it now.
        """
        self._settle("requeue" if requeue else "reject")

    @property
    def settlement(self) -> Settlement | None:
        """How the handler settled the message so far, if it did."""
        return self._settlement

    def _settle(self, outcome: Settlement) -> None:
        if not self._deliverable:
            raise MessageNotDeliveredError(self.message_id)

        if self._settlement is not None:
            raise MessageAlreadySettledError(self.message_id, self._settlement)

        self._settlement = outcome

    def _delivered_copy(self) -> EventMessage:
        """A fresh, unsettled copy for one handler attempt."""
        copy = self._replace(headers=dict(self.headers))
        copy._deliverable = True
        return copy


def _unpack(data: object) -> dict[str, Any]:
    if isinstance(data, bytes):
        raw = data
    elif isinstance(data, bytearray | memoryview):
        raw = bytes(data)
    else:
        raise SerializationError(f"an envelope is bytes, got {type(data).__name__}")

    if raw[:3] != _PREFIX:
        _refuse_prefix(raw)

    try:
        body = msgpack.unpackb(raw[3:], raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise SerializationError(f"corrupt envelope: {exc}") from exc

    if not isinstance(body, dict):
        raise SerializationError("corrupt envelope: body is not a map")
    return body


def _refuse_prefix(raw: bytes) -> NoReturn:
    if raw[:2] != ENVELOPE_MAGIC:
        raise SerializationError(
            f"not a polybus envelope: starts with {raw[:8]!r}, expected {_PREFIX!r}"
        )

    version = raw[2] if len(raw) > 2 else None
    raise SerializationError(
        f"unsupported envelope version {version}; this polybus reads version "
        f"{ENVELOPE_VERSION}"
    )


_packers = threading.local()


def _pack(body: dict[str, Any]) -> bytes:
    """``body`` in MessagePack, by this thread's packer.

    ``msgpack.packb`` makes a packer, with its buffer, for every call; reusing
    one halves the cost of packing an envelope. A packer is not safe to share
    between threads, hence one per thread; it resets after every call, one
    that failed included.
    """
    packer: msgpack.Packer | None = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(body)
    return packed


def _micros(value: object) -> timedelta:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"timestamp must be an int, got {value!r}")
    return value * _MICROSECOND


def _uuid_from(value: object) -> UUID | None:
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise TypeError(f"id must be 16 bytes, got {value!r}")
    return UUID(bytes=value)


def as_event_message(message: ProtocolEventMessage) -> EventMessage:
    """``message`` as an :class:`EventMessage`, copied if it is another kind.

    :raises InvalidMessageError: if it is not an event message at all.
    """
    if isinstance(message, EventMessage):
        return message

    if not isinstance(message, ProtocolEventMessage):
        raise InvalidMessageError("message", message, "an EventMessage")

    return EventMessage(
        topic=message.topic,
        value=message.value,
        key=message.key,
        headers=dict(message.headers),
        timestamp=message.timestamp,
        correlation_id=message.correlation_id,
        causation_id=message.causation_id,
        message_id=message.message_id,
    )
