"""Batch, compressed and retried publishing, on the in-memory backend."""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio

from polybus import (
    CODEC_HEADER,
    CodecUnavailableError,
    CompressedPublishResult,
    ConfigurationError,
    EventMessage,
    EventPublisher,
    InvalidTopicNameError,
    MessageTooLargeError,
    OutboundRecord,
    PolybusSettings,
    ProtocolEventPublisher,
    UnsupportedOperationError,
)
from polybus.types import ContextValue, LiteralCompressionType
from polybus_in_memory import InMemoryBackend, InMemoryEventBus
from waiting import Eventually

pytestmark = pytest.mark.asyncio

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


class _Unreliable(InMemoryBackend):
    """Loses the connection for the first few publishes, or for chosen ids."""

    def __init__(self, outages: int = 0, refuse: frozenset[int] = frozenset()):
        super().__init__()
        self.outages = outages
        self.refuse = refuse
        self.calls = 0

    async def publish(
        self, records: Sequence[OutboundRecord]
    ) -> list[BaseException | None]:
        self.calls += 1
        if self.outages:
            self.outages -= 1
            raise ConnectionError("connection reset by broker")

        outcomes = await super().publish(
            [r for i, r in enumerate(records) if i not in self.refuse]
        )
        taken = iter(outcomes)
        return [
            ConnectionError("not confirmed") if i in self.refuse else next(taken)
            for i in range(len(records))
        ]


def _settings() -> PolybusSettings:
    return PolybusSettings(max_message_bytes=4096)


@pytest_asyncio.fixture
async def bus() -> AsyncIterator[InMemoryEventBus]:
    async with InMemoryEventBus(InMemoryBackend(), _settings()) as started:
        yield started


async def _collect(bus: InMemoryEventBus, topic: str) -> list[EventMessage]:
    seen: list[EventMessage] = []

    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        seen.append(message)

    await bus.subscribe_to_topic(topic, handler, group_id="reader")
    return seen


async def test_publisher_implements_the_protocol(bus: InMemoryEventBus) -> None:
    assert isinstance(EventPublisher(bus), ProtocolEventPublisher)


@pytest.mark.parametrize("codec", CODECS)
async def test_batches_arrive_whole_with_every_codec(
    bus: InMemoryEventBus, eventually: Eventually, codec: str
) -> None:
    publisher = EventPublisher(bus)
    await bus.create_topic("t", 3)
    seen = await _collect(bus, "t")
    batch = [
        EventMessage("t", b"order %d " % i * 20, key=b"k%d" % (i % 4), headers={"i": i})
        for i in range(50)
    ]

    result = await publisher.publish_batch("t", list(batch), compression=codec)  # type: ignore[arg-type]

    assert (result.success_count, result.failure_count) == (50, 0)
    assert result.success
    await eventually(lambda: len(seen) == 50, "50 messages")
    assert sorted(m.headers["i"] for m in seen) == list(range(50))  # type: ignore[type-var]
    assert {m.message_id for m in seen} == {m.message_id for m in batch}
    assert all(CODEC_HEADER not in m.headers for m in seen)
    assert {m.value for m in seen} == {m.value for m in batch}
    if codec != "none":
        metrics = await publisher.get_publisher_metrics()
        assert metrics.compression_ratio > 1.5


async def test_a_partly_failed_batch_counts_only_what_was_taken(
    eventually: Eventually,
) -> None:
    backend = _Unreliable(refuse=frozenset({1, 3}))
    async with InMemoryEventBus(backend, _settings()) as bus:
        publisher = EventPublisher(bus)
        await bus.create_topic("t")
        seen = await _collect(bus, "t")
        batch = [EventMessage("t", b"%d" % i) for i in range(5)]
        batch.insert(2, EventMessage("t", b"x" * 5000))

        result = await publisher.publish_batch("t", list(batch))

        assert (result.success_count, result.failure_count) == (3, 3)
        failed = {f.message_id: f.error_type for f in result.failures}
        assert failed == {
            batch[1].message_id: "ConnectionError",
            batch[2].message_id: "MessageTooLargeError",
            batch[4].message_id: "ConnectionError",
        }
        await eventually(lambda: len(seen) == 3, "three messages")
        delivered = {m.message_id for m in seen}
        assert delivered == {batch[i].message_id for i in (0, 3, 5)}


async def test_batch_with_unknown_codec_or_bad_topic_sends_nothing(
    bus: InMemoryEventBus,
) -> None:
    publisher = EventPublisher(bus)

    with pytest.raises(ConfigurationError, match="unknown compression 'brotli'"):
        await publisher.publish_batch("t", [EventMessage("t", b"")], "brotli")  # type: ignore[arg-type]
    with pytest.raises(InvalidTopicNameError):
        await publisher.publish_batch("bad topic", [EventMessage("t", b"")])

    assert await bus.list_topics() == []


async def test_missing_codec_package_is_named_before_sending(
    bus: InMemoryEventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cramjam", None)
    publisher = EventPublisher(bus)

    with pytest.raises(
        CodecUnavailableError, match="'zstd' needs the package 'cramjam'"
    ):
        await publisher.publish_batch("t", [EventMessage("t", b"")], "zstd")

    assert await bus.list_topics() == []


async def test_retry_rides_out_a_brief_outage_with_one_message_id(
    eventually: Eventually,
) -> None:
    backend = _Unreliable(outages=2)
    async with InMemoryEventBus(backend, _settings()) as bus:
        publisher = EventPublisher(bus)
        await bus.create_topic("t")
        seen = await _collect(bus, "t")
        message = EventMessage("t", b"important")

        assert await publisher.publish_with_retry("t", message, 3, backoff_ms=1)

        await eventually(lambda: len(seen) == 1, "the message")
        assert seen[0].message_id == message.message_id
        assert backend.calls == 3
        assert (await publisher.get_publisher_metrics()).retries == 2


async def test_retry_gives_up_after_max_retries() -> None:
    backend = _Unreliable(outages=10)
    async with InMemoryEventBus(backend, _settings()) as bus:
        publisher = EventPublisher(bus)
        await bus.create_topic("t")

        ok = await publisher.publish_with_retry("t", EventMessage("t", b""), 2, 1)

        assert not ok
        assert backend.calls == 3


async def test_retry_does_not_retry_invalid_input(bus: InMemoryEventBus) -> None:
    publisher = EventPublisher(bus)

    with pytest.raises(MessageTooLargeError):
        await publisher.publish_with_retry("t", EventMessage("t", b"x" * 9000), 5, 1)

    assert (await publisher.get_publisher_metrics()).retries == 0


async def test_publish_compressed_round_trips(
    bus: InMemoryEventBus, eventually: Eventually
) -> None:
    publisher = EventPublisher(bus)
    seen = await _collect(bus, "t")

    assert await publisher.publish_compressed(
        "t", EventMessage("t", b"a" * 900), "zstd"
    )

    await eventually(lambda: len(seen) == 1, "the message")
    assert seen[0].value == b"a" * 900


class _CompressesGzip(InMemoryBackend):
    """An in-memory broker that also takes gzip batches, as Kafka takes them.

    It stores what it is given, like the plain in-memory backend, and reports
    the size of the batch gzip-compressed as the bytes it took.
    """

    capabilities = dataclasses.replace(
        InMemoryBackend.capabilities, native_compression=frozenset({"gzip"})
    )

    def __init__(self) -> None:
        super().__init__()
        self.native: list[tuple[str, list[OutboundRecord]]] = []

    async def publish_compressed(
        self, records: Sequence[OutboundRecord], codec: LiteralCompressionType
    ) -> CompressedPublishResult:
        self.native.append((codec, list(records)))
        outcomes = await self.publish(records)
        taken = zip(records, outcomes, strict=True)
        batch = b"".join(r.payload for r, outcome in taken if outcome is None)
        return CompressedPublishResult(outcomes, len(gzip.compress(batch)))


async def test_native_codec_goes_to_the_backend_uncompressed() -> None:
    backend = _CompressesGzip()
    async with InMemoryEventBus(backend, _settings()) as bus:
        publisher = EventPublisher(bus)
        await bus.create_topic("t")
        batch = [
            EventMessage("t", b"order %d " % i * 40, headers={"i": i}) for i in range(5)
        ]

        result = await publisher.publish_batch("t", list(batch), "gzip")
        assert await publisher.publish_compressed("t", batch[0], "gzip")

        assert result.success
        assert [codec for codec, _ in backend.native] == ["gzip", "gzip"]
        stored = [
            EventMessage.from_bytes(r.payload)
            for r in await bus.backend.read_topic("t")
        ]
        assert [m.value for m in stored] == [m.value for m in [*batch, batch[0]]]
        assert all(CODEC_HEADER not in m.headers for m in stored)

        plain = sum(len(m.to_bytes()) for m in [*batch, batch[0]])
        taken = [
            len(gzip.compress(b"".join(r.payload for r in records)))
            for _, records in backend.native
        ]
        assert result.bytes_sent == taken[0]
        metrics = await publisher.get_publisher_metrics()
        assert (metrics.uncompressed_bytes, metrics.bytes_published) == (
            plain,
            sum(taken),
        )
        assert metrics.compression_ratio == pytest.approx(plain / sum(taken))


async def test_other_codecs_fall_back_to_envelope_compression() -> None:
    backend = _CompressesGzip()
    async with InMemoryEventBus(backend, _settings()) as bus:
        publisher = EventPublisher(bus)
        await bus.create_topic("t")
        message = EventMessage("t", b"z" * 900)

        result = await publisher.publish_batch("t", [message], "zstd")

        assert result.success
        assert backend.native == []
        (record,) = await bus.backend.read_topic("t")
        stored = EventMessage.from_bytes(record.payload)
        assert stored.headers[CODEC_HEADER] == "zstd"
        assert result.bytes_sent == len(record.payload) < len(message.to_bytes())


async def test_a_backend_without_native_codecs_refuses_the_call() -> None:
    backend = InMemoryBackend()
    assert backend.capabilities.native_compression == frozenset()

    with pytest.raises(UnsupportedOperationError, match="gzip compression"):
        await backend.publish_compressed([], "gzip")
