"""The event message, its validation and its envelope."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polybus import (
    ContextValue,
    EventMessage,
    InvalidMessageError,
    MessageAlreadySettledError,
    MessageNotDeliveredError,
    ProtocolEventMessage,
    SerializationError,
)
from polybus.message import ENVELOPE_MAGIC, ENVELOPE_VERSION

header_values: st.SearchStrategy[ContextValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

messages = st.builds(
    EventMessage,
    topic=st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True),
    value=st.binary(max_size=256),
    key=st.none() | st.binary(max_size=32),
    headers=st.dictionaries(st.text(max_size=16), header_values, max_size=6),
    timestamp=st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(UTC),
    ),
    correlation_id=st.none() | st.uuids(),
    causation_id=st.none() | st.uuids(),
    message_id=st.uuids(),
)


def _typed(value: ContextValue) -> object:
    """A value with every type spelled out, so 1 and 1.0 and True differ."""
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, dict):
        return ("dict", {k: _typed(v) for k, v in value.items()})
    return (type(value).__name__, value)


def test_topic_and_value_are_enough() -> None:
    message = EventMessage("orders", b"{}")

    assert message.key is None
    assert message.headers == {}
    assert isinstance(message.message_id, UUID)
    assert message.timestamp.tzinfo is not None
    assert message.timestamp.utcoffset() == timedelta(0)
    assert message.offset is None
    assert message.partition is None
    assert isinstance(message, ProtocolEventMessage)


def test_message_ids_are_new_for_each_message() -> None:
    assert EventMessage("t", b"").message_id != EventMessage("t", b"").message_id


def test_ids_given_as_strings_become_uuids() -> None:
    correlation = uuid4()

    message = EventMessage("t", b"", correlation_id=str(correlation))  # type: ignore[arg-type]

    assert message.correlation_id == correlation


def test_correlation_id_that_is_not_a_uuid_is_refused() -> None:
    with pytest.raises(InvalidMessageError, match="correlation_id must be a UUID"):
        EventMessage("t", b"", correlation_id="req-abc123")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"value": "text"}, "value"),
        ({"key": 12}, "key"),
        ({"headers": {"h": (1, 2)}}, "headers\\['h'\\]"),
        ({"headers": {"h": {1: "x"}}}, "headers\\['h'\\] key"),
        ({"headers": {"h": 2**70}}, "headers\\['h'\\]"),
        ({"headers": {"h": b"bytes"}}, "headers\\['h'\\]"),
        ({"timestamp": datetime(2024, 1, 1)}, "timestamp"),
        ({"message_id": None}, "message_id"),
    ],
)
def test_bad_fields_are_refused_with_the_field_named(
    kwargs: dict[str, object], field: str
) -> None:
    arguments: dict[str, object] = {"topic": "t", "value": b"v", **kwargs}

    with pytest.raises(InvalidMessageError, match=f"^{field}"):
        EventMessage(**arguments)  # type: ignore[arg-type]


def test_text_keys_are_encoded() -> None:
    assert EventMessage("t", b"", key="user-1").key == b"user-1"  # type: ignore[arg-type]


def test_timestamps_are_kept_in_utc() -> None:
    local = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))

    message = EventMessage("t", b"", timestamp=local)

    assert message.timestamp == local
    assert message.timestamp.tzinfo == UTC


@given(messages)
def test_envelope_round_trips_every_field_and_header_type(
    message: EventMessage,
) -> None:
    decoded = EventMessage.from_bytes(message.to_bytes())

    assert decoded == message
    assert _typed(decoded.headers) == _typed(message.headers)


def test_nan_and_infinity_headers_survive() -> None:
    message = EventMessage("t", b"", headers={"nan": math.nan, "inf": math.inf})

    decoded = EventMessage.from_bytes(message.to_bytes())

    assert math.isnan(decoded.headers["nan"])  # type: ignore[arg-type]
    assert decoded.headers["inf"] == math.inf


def test_envelope_starts_with_magic_and_version() -> None:
    data = EventMessage("t", b"v").to_bytes()

    assert data[:2] == ENVELOPE_MAGIC
    assert data[2] == ENVELOPE_VERSION


@pytest.mark.asyncio
async def test_serialize_and_deserialize_are_the_protocol_face() -> None:
    original = EventMessage("t", b"v", key=b"k", headers={"n": 1})
    target = EventMessage("other", b"")

    await target.deserialize(await original.serialize())

    assert target == original


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a polybus envelope"),
        (b"{json}", "not a polybus envelope"),
        (ENVELOPE_MAGIC + b"\x09rest", "unsupported envelope version 9"),
        (ENVELOPE_MAGIC + bytes([ENVELOPE_VERSION]) + b"\xc1", "corrupt envelope"),
        (ENVELOPE_MAGIC + bytes([ENVELOPE_VERSION]) + b"\x01", "body is not a map"),
        (ENVELOPE_MAGIC + bytes([ENVELOPE_VERSION]) + b"\x80", "malformed envelope"),
    ],
)
def test_bad_envelopes_raise_serialization_errors(data: bytes, match: str) -> None:
    with pytest.raises(SerializationError, match=match):
        EventMessage.from_bytes(data)


@pytest.mark.asyncio
async def test_ack_outside_a_handler_is_an_error() -> None:
    with pytest.raises(MessageNotDeliveredError, match="not delivered"):
        await EventMessage("t", b"").ack()


@pytest.mark.asyncio
async def test_a_delivered_message_is_settled_once() -> None:
    delivered = EventMessage("t", b"")._delivered_copy()

    await delivered.ack()

    assert delivered.settlement == "ack"
    with pytest.raises(MessageAlreadySettledError, match="already settled"):
        await delivered.nack(requeue=False)


@pytest.mark.parametrize(("requeue", "outcome"), [(True, "requeue"), (False, "reject")])
@pytest.mark.asyncio
async def test_nack_records_the_outcome(requeue: bool, outcome: str) -> None:
    delivered = EventMessage("t", b"")._delivered_copy()

    await delivered.nack(requeue=requeue)

    assert delivered.settlement == outcome
