"""The Kafka backend through the event bus, on the session's broker."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    UnknownError,
    UnknownTopicOrPartitionError,
)
from pydantic import SecretStr

from polybus.backend import OutboundRecord
from polybus.dlq import DeadLetterQueue
from polybus.errors import (
    BackendUnavailableError,
    CodecUnavailableError,
    MessageTooLargeError,
    TopicNotFoundError,
)
from polybus.factory import create_event_bus
from polybus.message import EventMessage
from polybus.partitioner import partition_for_key
from polybus.protocols import ProtocolKafkaAdapter
from polybus.settings import DeadLetterSettings, PolybusSettings, RetrySettings
from polybus.testing.harness import async_test, wait_until
from polybus.types import ContextValue
from polybus_kafka import (
    ConsumerGroupActiveError,
    KafkaBackend,
    KafkaBackendError,
    KafkaEventBus,
    KafkaSettings,
    KafkaStream,
    _connection,
)
from polybus_kafka.progress import PartitionProgress
from polybus_kafka.testing import KafkaTestServer

Server = KafkaTestServer[KafkaBackend]
Handler = Callable[[EventMessage, dict[str, ContextValue]], Awaitable[None]]


def unique(stem: str) -> str:
    """A topic or group name no other test uses."""
    return f"kt-{stem}-{uuid.uuid4().hex[:10]}"


def core_settings(**overrides: Any) -> PolybusSettings:
    """Core settings with fast retries and short drains."""
    values: dict[str, Any] = {
        "default_partitions": 1,
        "prefetch": 16,
        "drain_timeout_ms": 2_000,
        "retry": RetrySettings(max_attempts=3, backoff_ms=5, backoff_max_ms=20),
        "dead_letter": DeadLetterSettings(),
    }
    values.update(overrides)
    return PolybusSettings(**values)


@asynccontextmanager
async def kafka_bus(
    server: Server, core: PolybusSettings | None = None, **settings: Any
) -> AsyncIterator[KafkaEventBus]:
    """A started Kafka bus on the session's broker, closed afterwards."""
    bus = KafkaEventBus(server.backend(**settings), core or core_settings())
    async with bus:
        yield bus


class Recorder:
    """A handler that records what it handled, per member."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, EventMessage, dict[str, ContextValue]]] = []

    def handler(self, member: str = "m") -> Handler:
        async def handle(
            message: EventMessage, context: dict[str, ContextValue]
        ) -> None:
            self.seen.append((member, message, context))

        return handle

    def values(self, member: str | None = None) -> list[bytes]:
        return [m.value for who, m, _ in self.seen if member in (None, who)]


async def publish(
    bus: KafkaEventBus,
    topic: str,
    count: int,
    *,
    stem: str = "v",
    key: bytes | None = None,
) -> list[bytes]:
    values = [f"{stem}-{i}".encode() for i in range(count)]
    for value in values:
        await bus.publish_event(topic, EventMessage(topic, value, key=key))
    return values


# -- plugin, settings -----------------------------------------------------------


@async_test(60)
async def test_plugin_builds_a_kafka_bus(kafka_server: Server) -> None:
    bus = create_event_bus(
        core_settings(backend="kafka"), backend_settings=kafka_server.settings()
    )
    assert isinstance(bus, KafkaEventBus)

    async with bus:
        health = await bus.get_service_health()
    assert health.backend_reachable, health.issues


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYBUS_KAFKA__BOOTSTRAP_SERVERS", "k1:9092, k2:9093")
    monkeypatch.setenv("POLYBUS_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("POLYBUS_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("POLYBUS_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("POLYBUS_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("POLYBUS_KAFKA__COMPRESSION", "zstd")

    settings = KafkaSettings()

    assert settings.bootstrap_servers == ["k1:9092", "k2:9093"]
    assert settings.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.compression == "zstd"
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.public_dict())
    options = _connection.client_options(settings, "producer")
    assert options["sasl_plain_password"] == "hunter2"
    assert options["client_id"] == "polybus-producer"


def test_settings_reject_sasl_without_credentials() -> None:
    with pytest.raises(ValueError, match="sasl_mechanism, sasl_username"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT")

    with pytest.raises(ValueError, match="needs security_protocol"):
        KafkaSettings(
            sasl_mechanism="PLAIN", sasl_username="u", sasl_password=SecretStr("p")
        )


@async_test(60)
async def test_idempotence_falls_back_when_the_broker_refuses(
    kafka_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    if kafka_server.tansu is None:
        pytest.skip("only Tansu is known to refuse InitProducerId")

    with caplog.at_level(logging.WARNING, logger="polybus_kafka"):
        async with kafka_bus(kafka_server) as bus:
            assert not bus.backend.idempotent
    assert "refused an idempotent producer" in caplog.text

    required = KafkaEventBus(kafka_server.backend(enable_idempotence=True))
    with pytest.raises(KafkaBackendError, match="enable_idempotence=True"):
        await required.start()
    assert not required.running


# -- topics ---------------------------------------------------------------------


@async_test(60)
async def test_topics_are_kafka_topics(kafka_server: Server) -> None:
    topic = unique("topics")

    async with kafka_bus(kafka_server) as bus:
        assert await bus.get_topic_info(topic) is None
        assert await bus.create_topic(topic, 3)
        assert not await bus.create_topic(topic, 5)
        await publish(bus, topic, 4)

        info = await bus.get_topic_info(topic)
        assert info is not None
        assert (info.partition_count, info.message_count) == (3, 4)
        assert info.created_at is None
        assert topic in await bus.list_topics()

        assert await bus.delete_topic(topic)
        assert not await bus.delete_topic(topic)
        assert await bus.get_topic_info(topic) is None


@async_test(60)
async def test_publish_never_creates_a_missing_topic(kafka_server: Server) -> None:
    topic = unique("missing")

    async with kafka_bus(kafka_server, core_settings(auto_create_topics=False)) as bus:
        with pytest.raises(TopicNotFoundError):
            await bus.publish_event(topic, EventMessage(topic, b"x"))

        record = OutboundRecord(topic, 0, None, b"x", uuid.uuid4())
        (outcome,) = await bus.backend.publish([record])
        assert isinstance(outcome, TopicNotFoundError)
        assert await bus.get_topic_info(topic) is None


@async_test(60)
async def test_batch_outcomes_are_per_record(kafka_server: Server) -> None:
    topic = unique("batch")

    async with kafka_bus(kafka_server) as bus:
        await bus.create_topic(topic, 2)
        records = [
            OutboundRecord(topic, 0, None, b"a", uuid.uuid4()),
            OutboundRecord(topic, 7, None, b"b", uuid.uuid4()),
            OutboundRecord(topic, 1, None, b"c" * 2_000_000, uuid.uuid4()),
            OutboundRecord(topic, 1, None, b"d", uuid.uuid4()),
        ]

        outcomes = await bus.backend.publish(records)

        assert outcomes[0] is None
        assert outcomes[3] is None
        assert isinstance(outcomes[1], TopicNotFoundError)
        assert isinstance(outcomes[2], MessageTooLargeError)
        info = await bus.get_topic_info(topic)
        assert info is not None
        assert info.message_count == 2


# -- delivery -------------------------------------------------------------------


@async_test(90)
async def test_publish_subscribe_round_trip(kafka_server: Server) -> None:
    topic = unique("round")
    recorder = Recorder()

    async with kafka_bus(kafka_server) as bus:
        await bus.subscribe_to_topic(topic, recorder.handler(), group_id=unique("g"))
        message = EventMessage(
            topic, b"payload", key=b"k", headers={"n": 1, "f": 1.5, "l": [1, "a"]}
        )
        await bus.publish_event(topic, message)

        await wait_until(
            lambda: len(recorder.seen) == 1, timeout=20, describe=lambda: "delivery"
        )

    _, got, context = recorder.seen[0]
    assert (got.value, got.key, got.headers) == (
        b"payload",
        b"k",
        {"n": 1, "f": 1.5, "l": [1, "a"]},
    )
    assert got.message_id == message.message_id
    assert context["backend"] == "kafka"
    assert context["delivery_count"] == 1


@async_test(120)
async def test_two_members_share_the_work(kafka_server: Server) -> None:
    topic = unique("share")
    group = unique("g")
    recorder = Recorder()

    async with kafka_bus(kafka_server) as bus:
        await bus.create_topic(topic, 4)
        first = await bus.subscribe_to_topic(
            topic, recorder.handler("a"), group_id=group
        )
        second = await bus.subscribe_to_topic(
            topic, recorder.handler("b"), group_id=group
        )

        await wait_until(
            lambda: (
                all(s.assigned_partitions for s in bus.subscriptions())
                and sum(len(s.assigned_partitions) for s in bus.subscriptions()) == 4
            ),
            timeout=20,
            describe=lambda: f"partitions split: {bus.subscriptions()}",
        )
        for index in range(40):
            key = f"key-{index}".encode()
            await bus.publish_event(topic, EventMessage(topic, b"%d" % index, key=key))

        await wait_until(
            lambda: len(recorder.seen) >= 40,
            timeout=20,
            describe=lambda: f"{len(recorder.seen)} of 40 handled",
        )
        info = {s.subscription_id: s for s in bus.subscriptions()}
        assert set(info[first].assigned_partitions).isdisjoint(
            info[second].assigned_partitions
        )

    assert sorted(recorder.values()) == sorted(b"%d" % i for i in range(40))
    assert recorder.values("a")
    assert recorder.values("b")


@async_test(90)
async def test_per_key_order_and_partition(kafka_server: Server) -> None:
    topic = unique("order")
    recorder = Recorder()

    async with kafka_bus(kafka_server, linger_ms=20) as bus:
        await bus.create_topic(topic, 3)
        await bus.subscribe_to_topic(topic, recorder.handler(), group_id=unique("g"))
        keys = [b"alpha", b"beta", b"gamma"]
        for index in range(60):
            key = keys[index % 3]
            await bus.publish_event(topic, EventMessage(topic, b"%d" % index, key=key))

        await wait_until(
            lambda: len(recorder.seen) == 60,
            timeout=20,
            describe=lambda: f"{len(recorder.seen)} of 60 handled",
        )

    by_key: dict[bytes, list[int]] = defaultdict(list)
    for _, message, context in recorder.seen:
        stored_key = message.key
        assert stored_key is not None
        assert context["partition"] == partition_for_key(stored_key, 3)
        by_key[stored_key].append(int(message.value))
    for key, values in by_key.items():
        assert values == sorted(values), f"order broken for {key!r}"


@async_test(90)
async def test_broadcast_sees_only_what_follows(kafka_server: Server) -> None:
    topic = unique("broadcast")
    one, two = Recorder(), Recorder()

    async with kafka_bus(kafka_server) as bus:
        await bus.create_topic(topic, 2)
        await publish(bus, topic, 3, stem="before")
        await bus.subscribe_to_topic(topic, one.handler())
        await bus.subscribe_to_topic(topic, two.handler())
        after = await publish(bus, topic, 6, stem="after")

        await wait_until(
            lambda: len(one.seen) == 6 and len(two.seen) == 6,
            timeout=20,
            describe=lambda: f"broadcasts saw {len(one.seen)} and {len(two.seen)}",
        )

    assert sorted(one.values()) == sorted(after) == sorted(two.values())


@async_test(120)
async def test_unsettled_message_goes_to_the_next_member(kafka_server: Server) -> None:
    topic = unique("redeliver")
    group = unique("g")
    stuck = asyncio.Event()
    later = Recorder()

    async def never_finishes(
        message: EventMessage, context: dict[str, ContextValue]
    ) -> None:
        stuck.set()
        await asyncio.Event().wait()

    core = core_settings(drain_timeout_ms=200)
    async with kafka_bus(kafka_server, core) as bus:
        await bus.create_topic(topic, 1)
        first = await bus.subscribe_to_topic(topic, never_finishes, group_id=group)
        values = await publish(bus, topic, 3)
        await wait_until(stuck.is_set, timeout=20, describe=lambda: "first delivery")

        await bus.unsubscribe_from_topic(first)
        await bus.subscribe_to_topic(topic, later.handler(), group_id=group)

        await wait_until(
            lambda: len(later.seen) == 3,
            timeout=20,
            describe=lambda: f"redelivered: {later.values()}",
        )

    assert later.values() == values


@async_test(90)
async def test_failing_handler_dead_letters(kafka_server: Server) -> None:
    topic = unique("dlq")
    attempts = Recorder()
    letters = Recorder()

    async def fails(message: EventMessage, context: dict[str, ContextValue]) -> None:
        attempts.seen.append(("m", message, context))
        raise RuntimeError("boom")

    async with kafka_bus(kafka_server) as bus:
        await bus.create_topic(topic, 1)
        await bus.create_topic(f"{topic}.dlq", 1)
        await bus.subscribe_to_topic(f"{topic}.dlq", letters.handler())
        await bus.subscribe_to_topic(topic, fails, group_id=unique("g"))
        (value,) = await publish(bus, topic, 1)

        await wait_until(
            lambda: len(letters.seen) == 1,
            timeout=20,
            describe=lambda: f"{len(attempts.seen)} attempts, no dead letter",
        )

    assert len(attempts.seen) == 3
    _, letter, _ = letters.seen[0]
    assert EventMessage.from_bytes(letter.value).value == value
    assert any(name.startswith("polybus.dlq.") for name in letter.headers)


@async_test(120)
async def test_slow_handler_keeps_its_membership(kafka_server: Server) -> None:
    """Handlers slower than the session, with backpressure, lose nothing."""
    topic = unique("slow")
    group = unique("g")
    recorder = Recorder()
    assignments: list[list[int]] = []

    async def slow(message: EventMessage, context: dict[str, ContextValue]) -> None:
        await asyncio.sleep(0.15)
        recorder.seen.append(("m", message, context))

    core = core_settings(prefetch=2)
    async with kafka_bus(kafka_server, core) as bus:
        await bus.create_topic(topic, 1)
        subscription = await bus.subscribe_to_topic(topic, slow, group_id=group)
        dispatcher = bus._subscriptions[subscription].dispatcher
        original = dispatcher.assigned

        def record(partitions: Any) -> None:
            assignments.append(list(partitions))
            original(partitions)

        dispatcher.assigned = record  # type: ignore[method-assign]
        values = await publish(bus, topic, 20)

        await wait_until(
            lambda: len(recorder.seen) == 20,
            timeout=30,
            describe=lambda: f"{len(recorder.seen)} of 20 handled",
        )

    assert recorder.values() == values
    assert assignments == [], f"the member was rebalanced: {assignments}"


@async_test(90)
async def test_pause_holds_and_resume_continues(kafka_server: Server) -> None:
    topic = unique("pause")
    recorder = Recorder()

    async with kafka_bus(kafka_server) as bus:
        await bus.create_topic(topic, 2)
        sid = await bus.subscribe_to_topic(
            topic, recorder.handler(), group_id=unique("g")
        )
        await bus.pause_subscription(sid)
        values = await publish(bus, topic, 10)
        stream = bus._subscriptions[sid].stream
        assert isinstance(stream, KafkaStream)
        consumer = stream._consumer
        assert consumer is not None

        async def stored_while_paused() -> bool:
            info = await bus.get_topic_info(topic)
            return info is not None and info.message_count == 10

        await wait_until(
            stored_while_paused, timeout=10, describe=lambda: "messages stored"
        )
        assert consumer.paused() == consumer.assignment()
        assert recorder.seen == []

        await bus.resume_subscription(sid)
        await wait_until(
            lambda: len(recorder.seen) == 10,
            timeout=20,
            describe=lambda: f"{len(recorder.seen)} of 10 after resume",
        )

    assert sorted(recorder.values()) == sorted(values)


# -- compression ------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
@async_test(90)
async def test_compression_round_trip(kafka_server: Server, codec: str) -> None:
    topic = unique(f"codec-{codec}")
    recorder = Recorder()
    payload = b"compressible " * 500

    async with kafka_bus(kafka_server, compression=codec) as bus:
        await bus.subscribe_to_topic(topic, recorder.handler(), group_id=unique("g"))
        for _ in range(5):
            await bus.publish_event(topic, EventMessage(topic, payload))

        await wait_until(
            lambda: len(recorder.seen) == 5,
            timeout=20,
            describe=lambda: f"{len(recorder.seen)} of 5 with {codec}",
        )

    assert recorder.values() == [payload] * 5


@async_test(30)
async def test_missing_codec_package_fails_at_connect(
    kafka_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_connection, "module_available", lambda name: False)
    bus = KafkaEventBus(kafka_server.backend(compression="zstd"))

    with pytest.raises(CodecUnavailableError, match="cramjam") as raised:
        await bus.start()

    assert raised.value.codec == "zstd"
    assert not bus.running
    _connection.check_codec("gzip")  # the standard library's, always there
    _connection.check_codec("none")


# -- the Kafka adapter ------------------------------------------------------------


@async_test(90)
async def test_kafka_adapter_topics_and_metadata(kafka_server: Server) -> None:
    topic = unique("adapter")

    async with kafka_bus(kafka_server) as bus:
        assert await bus.create_kafka_topic(topic, 3, 1)
        assert not await bus.create_kafka_topic(topic, 3, 1)

        metadata = await bus.get_kafka_metadata()
        assert metadata.topics[topic] == 3
        assert metadata.brokers
        assert metadata.cluster_id

        assert await bus.delete_kafka_topic(topic)
        assert topic not in (await bus.get_kafka_metadata()).topics


@async_test(120)
async def test_kafka_adapter_group_info_and_reset(kafka_server: Server) -> None:
    topic = unique("groups")
    group = unique("g")
    fresh = unique("fresh")
    recorder = Recorder()
    replay = Recorder()

    async with kafka_bus(kafka_server) as bus:
        await bus.create_topic(topic, 2)
        sid = await bus.subscribe_to_topic(topic, recorder.handler(), group_id=group)
        values = await publish(bus, topic, 6)
        await wait_until(
            lambda: len(recorder.seen) == 6, timeout=20, describe=lambda: "handled"
        )

        async def committed() -> bool:
            info = await bus.get_consumer_group_info(group)
            return sum(p.committed_offset or 0 for p in info.offsets) == 6

        await wait_until(committed, timeout=10, describe=lambda: "offsets committed")
        info = await bus.get_consumer_group_info(group)
        assert info.members
        assert info.total_lag == 0
        assert {(p.topic, p.partition) for p in info.offsets} == {
            (topic, 0),
            (topic, 1),
        }

        with pytest.raises(ConsumerGroupActiveError):
            await bus.reset_consumer_group_offset(group, topic, -2)
        await bus.unsubscribe_from_topic(sid)

        assert await bus.reset_consumer_group_offset(fresh, topic, -2)
        reset = await bus.get_consumer_group_info(fresh)
        assert reset.total_lag == 6
        await bus.subscribe_to_topic(topic, replay.handler(), group_id=fresh)
        await wait_until(
            lambda: len(replay.seen) == 6,
            timeout=20,
            describe=lambda: f"replayed {replay.values()}",
        )

    assert sorted(replay.values()) == sorted(values)


def test_progress_commits_only_the_settled_prefix() -> None:
    progress = PartitionProgress(5)
    assert progress.due() == 5

    progress.handed_out(5)
    progress.handed_out(7)
    progress.settle(7)
    assert progress.due() == 5

    progress.settle(5)
    assert progress.due() == 8

    progress.committed(8)
    assert progress.due() is None
    progress.settle(3)
    assert progress.due() is None


@async_test(60)
async def test_read_topic_browses_without_consuming(kafka_server: Server) -> None:
    topic = unique("browse")

    async with kafka_bus(kafka_server) as bus:
        await bus.create_topic(topic, 2)
        for index in range(6):
            key = f"key-{index}".encode()
            await bus.publish_event(topic, EventMessage(topic, b"%d" % index, key=key))

        records = await bus.backend.read_topic(topic)
        again = await bus.backend.read_topic(topic, limit=2)

        with pytest.raises(TopicNotFoundError):
            await bus.backend.read_topic(unique("absent"))

    assert len(records) == 6
    assert [(r.partition, int(r.offset)) for r in records] == sorted(
        (r.partition, int(r.offset)) for r in records
    )
    values = sorted(EventMessage.from_bytes(r.payload).value for r in records)
    assert values == sorted(b"%d" % i for i in range(6))
    assert again == records[:2]


@async_test(90)
async def test_dead_letter_queue_lists_and_replays(kafka_server: Server) -> None:
    topic = unique("dlqh")
    replayed = Recorder()

    async with kafka_bus(kafka_server) as bus:
        await bus.create_topic(topic, 1)
        queue = DeadLetterQueue(bus)
        message = EventMessage(topic, b"poison")
        result = await queue.handle_failed_message(message, ValueError("bad"), 3)
        assert result.dead_lettered

        letters = await queue.get_dlq_messages(topic)
        assert [letter.original_message.value for letter in letters] == [b"poison"]
        assert letters[0].exception_type == "ValueError"

        await bus.subscribe_to_topic(topic, replayed.handler(), group_id=unique("g"))
        assert letters[0].dlq_message_id is not None
        assert await queue.retry_failed_message(letters[0].dlq_message_id)
        await wait_until(
            lambda: replayed.values() == [b"poison"],
            timeout=20,
            describe=lambda: f"replayed {replayed.values()}",
        )
        assert await queue.get_dlq_messages(topic) == []


@async_test(60)
async def test_connect_and_disconnect_from_cluster(kafka_server: Server) -> None:
    bus = KafkaEventBus(kafka_server.backend(bootstrap_servers=["127.0.0.1:1"]))
    assert isinstance(bus, ProtocolKafkaAdapter)

    assert await bus.connect_to_cluster(kafka_server.bootstrap_servers.split(","))
    assert bus.running
    assert (await bus.get_service_health()).backend_reachable

    assert await bus.disconnect_from_cluster()
    assert not bus.running


def test_aiokafka_errors_become_polybus_errors() -> None:
    down = _connection.translate_error(KafkaConnectionError("refused"), "publish")
    missing = _connection.translate_error(
        UnknownTopicOrPartitionError(), "publish", topic="t"
    )
    big = _connection.translate_error(
        MessageSizeTooLargeError(), "publish", topic="t", size=9, limit=5
    )
    other = _connection.translate_error(UnknownError(), "publish")

    assert isinstance(down, BackendUnavailableError)
    assert isinstance(missing, TopicNotFoundError)
    assert isinstance(big, MessageTooLargeError)
    assert (big.size, big.limit) == (9, 5)
    assert isinstance(other, KafkaBackendError)
    assert isinstance(other.__cause__, UnknownError)


@async_test(60)
async def test_close_after_the_topic_was_deleted_does_not_hang(
    kafka_server: Server,
) -> None:
    """Commits to a deleted topic fail forever in aiokafka; close is bounded."""
    topic = unique("deleted")
    recorder = Recorder()

    async with kafka_bus(kafka_server, request_timeout_ms=2_000) as bus:
        await bus.create_topic(topic, 1)
        await bus.subscribe_to_topic(topic, recorder.handler(), group_id=unique("g"))
        await publish(bus, topic, 1)
        await wait_until(
            lambda: len(recorder.seen) == 1, timeout=20, describe=lambda: "handled"
        )
        assert await bus.delete_topic(topic)

        async with asyncio.timeout(15):
            await bus.close()
