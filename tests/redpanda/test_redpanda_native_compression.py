"""Record compression by the broker on the Redpanda backend (the Kafka code)."""

from __future__ import annotations

import uuid

from kafka_wire import CODEC_IDS, fetch_batches
from polybus import CODEC_HEADER, EventPublisher
from polybus.message import EventMessage
from polybus.settings import PolybusSettings
from polybus.testing.harness import async_test, wait_until
from polybus.types import ContextValue
from polybus_kafka.testing import KafkaTestServer
from polybus_redpanda import CAPABILITIES, RedpandaBackend, RedpandaEventBus

Server = KafkaTestServer[RedpandaBackend]


@async_test(90)
async def test_zstd_batch_is_compressed_by_the_broker(redpanda_server: Server) -> None:
    assert "zstd" in CAPABILITIES.native_compression
    topic = f"rp-native-{uuid.uuid4().hex[:10]}"
    sent = [
        EventMessage(topic, b"line item " * 60, headers={"i": i}) for i in range(10)
    ]
    seen: dict[uuid.UUID, EventMessage] = {}

    async def handle(message: EventMessage, context: dict[str, ContextValue]) -> None:
        seen[message.message_id] = message

    core = PolybusSettings(default_partitions=1, drain_timeout_ms=2_000)
    async with RedpandaEventBus(redpanda_server.backend(), core) as bus:
        await bus.create_redpanda_topic(topic, 1)
        await bus.subscribe_to_topic(topic, handle, group_id=f"g-{topic}")

        result = await EventPublisher(bus).publish_batch(topic, list(sent), "zstd")

        assert result.success
        await wait_until(
            lambda: len(seen) == len(sent),
            timeout=30,
            describe=lambda: f"{len(seen)} of {len(sent)}",
        )

    assert [(seen[m.message_id].value, seen[m.message_id].headers) for m in sent] == [
        (m.value, m.headers) for m in sent
    ]
    batches = await fetch_batches(redpanda_server.bootstrap_servers, topic, 1)
    assert {b.compression for b in batches} == {CODEC_IDS["zstd"]}
    assert result.bytes_sent == sum(b.size for b in batches)
    stored = [EventMessage.from_bytes(v) for b in batches for v in b.values if v]
    assert all(CODEC_HEADER not in m.headers for m in stored)
