"""Compression by Kafka itself: ``EventPublisher`` with a codec the broker takes.

Each batch is checked three ways: through a polybus subscription (values and
headers arrive exactly, with no codec header), on the wire (the broker keeps
record batches compressed with the chosen codec, whose sizes add up to the
bytes the publisher reports), and in the publisher's metrics.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from kafka_wire import CODEC_IDS, fetch_batches
from polybus import CODEC_HEADER, EventPublisher
from polybus.backend import OutboundRecord
from polybus.errors import (
    CodecUnavailableError,
    MessageTooLargeError,
    TopicNotFoundError,
    UnsupportedOperationError,
)
from polybus.message import EventMessage
from polybus.settings import PolybusSettings
from polybus.testing.harness import async_test, wait_until
from polybus.types import ContextValue, LiteralCompressionType
from polybus_kafka import CAPABILITIES, KafkaBackend, KafkaEventBus, _connection
from polybus_kafka.testing import KafkaTestServer

Server = KafkaTestServer[KafkaBackend]

NATIVE: list[LiteralCompressionType] = ["gzip", "snappy", "lz4", "zstd"]
PARTITIONS = 2


def unique(stem: str) -> str:
    """A topic or group name no other test uses."""
    return f"kn-{stem}-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def kafka_bus(server: Server, **settings: Any) -> AsyncIterator[KafkaEventBus]:
    """A started Kafka bus on the session's broker, closed afterwards."""
    core = PolybusSettings(default_partitions=PARTITIONS, drain_timeout_ms=2_000)
    async with KafkaEventBus(server.backend(**settings), core) as bus:
        yield bus


def messages(topic: str, count: int) -> list[EventMessage]:
    """Compressible messages with keys and headers of several types."""
    return [
        EventMessage(
            topic,
            b'{"order": %d, "lines": "%s"}' % (i, b"widget " * 40),
            key=b"customer-%d" % (i % 5) if i % 3 else None,
            headers={"i": i, "kind": "order", "tags": ["a", "b"], "ratio": 0.5},
        )
        for i in range(count)
    ]


class Collector:
    """A handler that keeps what it handled by message id."""

    def __init__(self) -> None:
        self.seen: dict[uuid.UUID, EventMessage] = {}

    async def handle(
        self, message: EventMessage, context: dict[str, ContextValue]
    ) -> None:
        self.seen[message.message_id] = message


@pytest.mark.parametrize("codec", NATIVE)
@async_test(120)
async def test_batch_is_compressed_by_kafka(
    kafka_server: Server, codec: LiteralCompressionType
) -> None:
    topic = unique(codec)
    sent = messages(topic, 40)
    collector = Collector()

    async with kafka_bus(kafka_server) as bus:
        await bus.create_topic(topic, PARTITIONS)
        await bus.subscribe_to_topic(topic, collector.handle, group_id=unique("g"))
        publisher = EventPublisher(bus)

        result = await publisher.publish_batch(topic, list(sent), codec)

        assert (result.success_count, result.failure_count) == (len(sent), 0)
        assert result.compression == codec
        await wait_until(
            lambda: len(collector.seen) == len(sent),
            timeout=30,
            describe=lambda: f"{len(collector.seen)} of {len(sent)} with {codec}",
        )
        metrics = await publisher.get_publisher_metrics()

    # Through polybus: every message exactly as published, no codec header.
    for message in sent:
        got = collector.seen[message.message_id]
        assert (got.value, got.key, got.headers) == (
            message.value,
            message.key,
            message.headers,
        )
        assert CODEC_HEADER not in got.headers

    # On the wire: batches compressed with the codec, holding the plain
    # envelopes (the value was not compressed by polybus, nor a header set).
    batches = await fetch_batches(kafka_server.bootstrap_servers, topic, PARTITIONS)
    assert batches
    assert {b.compression for b in batches} == {CODEC_IDS[codec]}
    assert all(b.crc_valid for b in batches)
    stored = [
        EventMessage.from_bytes(value)
        for batch in batches
        for value in batch.values
        if value is not None
    ]
    assert sorted(m.message_id for m in stored) == sorted(m.message_id for m in sent)
    by_id = {m.message_id: m for m in sent}
    for envelope in stored:
        assert CODEC_HEADER not in envelope.headers
        assert envelope.value == by_id[envelope.message_id].value

    # The metrics: the bytes the broker took are the compressed batches.
    plain = sum(len(m.to_bytes()) for m in sent)
    assert result.bytes_sent == sum(b.size for b in batches)
    assert metrics.bytes_published == result.bytes_sent
    assert metrics.uncompressed_bytes == plain
    assert metrics.compression_ratio == pytest.approx(plain / result.bytes_sent)
    assert metrics.compression_ratio > 3


@async_test(90)
async def test_single_compressed_publish_is_native_too(kafka_server: Server) -> None:
    topic = unique("single")
    message = messages(topic, 1)[0]

    async with kafka_bus(kafka_server) as bus:
        await bus.create_topic(topic, 1)
        publisher = EventPublisher(bus)
        assert await publisher.publish_compressed(topic, message, "zstd")
        metrics = await publisher.get_publisher_metrics()

    (batch,) = await fetch_batches(kafka_server.bootstrap_servers, topic, 1)
    assert batch.compression == CODEC_IDS["zstd"]
    assert batch.values == (message.to_bytes(),)
    assert metrics.bytes_published == batch.size


@async_test(90)
async def test_codec_producers_are_started_once_and_closed(
    kafka_server: Server,
) -> None:
    topic = unique("producers")

    async with kafka_bus(kafka_server, compression="gzip") as bus:
        backend = bus.backend
        await bus.create_topic(topic, 1)
        publisher = EventPublisher(bus)
        codecs: list[LiteralCompressionType] = ["gzip", "lz4", "lz4", "zstd"]
        for codec in codecs:
            result = await publisher.publish_batch(
                topic, list(messages(topic, 3)), codec
            )
            assert result.success

        # gzip is the shared producer's own compression: no producer of its own.
        assert sorted(backend._codec_producers) == ["lz4", "zstd"]

    assert backend._codec_producers == {}
    assert not backend.connected

    # A restarted bus starts its codec producers afresh.
    async with KafkaEventBus(backend) as bus:
        result = await EventPublisher(bus).publish_batch(
            topic, list(messages(topic, 2)), "lz4"
        )
        assert result.success

    batches = await fetch_batches(kafka_server.bootstrap_servers, topic, 1)
    assert [b.compression for b in batches] == [
        CODEC_IDS[c] for c in ["gzip", "lz4", "lz4", "zstd", "lz4"]
    ]


@async_test(90)
async def test_oversized_record_fails_alone(kafka_server: Server) -> None:
    topic = unique("oversized")

    async with kafka_bus(kafka_server, max_request_size=65_536) as bus:
        await bus.create_topic(topic, 1)
        records = [
            OutboundRecord(topic, 0, None, b"a" * 1_000, uuid.uuid4()),
            OutboundRecord(topic, 0, None, b"b" * 100_000, uuid.uuid4()),
            OutboundRecord(topic, 5, None, b"c", uuid.uuid4()),
            OutboundRecord(topic, 0, None, b"d" * 1_000, uuid.uuid4()),
        ]

        result = await bus.backend.publish_compressed(records, "gzip")

    first, oversized, bad_partition, last = result.outcomes
    assert first is None
    assert last is None
    assert isinstance(oversized, MessageTooLargeError)
    assert isinstance(bad_partition, TopicNotFoundError)
    (batch,) = await fetch_batches(kafka_server.bootstrap_servers, topic, 1)
    assert batch.values == (b"a" * 1_000, b"d" * 1_000)
    assert result.bytes_sent == batch.size


@async_test(90)
async def test_many_records_span_several_batches(kafka_server: Server) -> None:
    topic = unique("span")
    # Incompressible values, so max_batch_size (in uncompressed bytes) splits
    # the partition's records into several batches, sent in order.
    values = [uuid.uuid4().bytes * 64 for _ in range(100)]

    async with kafka_bus(kafka_server, max_batch_size=16_384) as bus:
        await bus.create_topic(topic, 1)
        records = [
            OutboundRecord(topic, 0, None, value, uuid.uuid4()) for value in values
        ]
        result = await bus.backend.publish_compressed(records, "snappy")

    assert result.outcomes == [None] * len(values)
    batches = await fetch_batches(kafka_server.bootstrap_servers, topic, 1)
    assert len(batches) > 1
    assert [v for b in batches for v in b.values] == values
    assert result.bytes_sent == sum(b.size for b in batches)


@async_test(60)
async def test_missing_codec_package_sends_nothing(
    kafka_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = unique("missing-codec")

    async with kafka_bus(kafka_server) as bus:
        await bus.create_topic(topic, 1)
        publisher = EventPublisher(bus)

        # The package is gone for polybus' codecs...
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, "cramjam", None)
            with pytest.raises(CodecUnavailableError, match="cramjam"):
                await publisher.publish_batch(topic, list(messages(topic, 3)), "zstd")

        # ...or only for aiokafka's: the backend checks before sending too.
        with monkeypatch.context() as patch:
            patch.setattr(_connection, "module_available", lambda name: False)
            with pytest.raises(CodecUnavailableError, match="cramjam") as raised:
                await publisher.publish_batch(topic, list(messages(topic, 3)), "lz4")
            assert raised.value.codec == "lz4"

        info = await bus.get_topic_info(topic)
        assert info is not None
        assert info.message_count == 0
        assert bus.backend._codec_producers == {}


@async_test(60)
async def test_only_declared_codecs_are_native(kafka_server: Server) -> None:
    assert CAPABILITIES.native_compression == frozenset(NATIVE)

    async with kafka_bus(kafka_server) as bus:
        record = OutboundRecord(unique("none"), 0, None, b"x", uuid.uuid4())
        with pytest.raises(UnsupportedOperationError):
            await bus.backend.publish_compressed([record], "none")
