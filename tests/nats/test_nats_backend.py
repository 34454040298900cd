"""The NATS backend under the core bus, against a real NATS JetStream server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.js.errors
import pytest
from pydantic import SecretStr

from nats_support import NatsPlace, PrivateNats, core_settings
from polybus import (
    BackendUnavailableError,
    DeadLetterQueue,
    EventBus,
    EventMessage,
    OutboundRecord,
    PolybusSettings,
    TopicNotFoundError,
    create_event_bus,
)
from polybus.settings import RetrySettings
from polybus.types import ContextValue
from polybus_nats import NatsBackend, NatsSettings
from polybus_nats.naming import TopicNames

pytestmark = pytest.mark.asyncio

Seen = list[tuple[str, EventMessage, dict[str, ContextValue]]]


async def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = 15.0
) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.01)


def recorder(
    seen: Seen,
    member: str = "m",
    behaviour: Callable[[EventMessage], Awaitable[None]] | None = None,
) -> Callable[[EventMessage, dict[str, ContextValue]], Awaitable[None]]:
    """A handler that records each call in ``seen``, then runs ``behaviour``."""

    async def handle(message: EventMessage, context: dict[str, ContextValue]) -> None:
        seen.append((member, message, dict(context)))
        if behaviour is not None:
            await behaviour(message)

    return handle


def values(seen: Seen, member: str | None = None) -> list[bytes]:
    return [m.value for who, m, _ in seen if member in (None, who)]


async def publish(
    bus: EventBus, topic: str, count: int, *, key: bytes | None = None, stem: str = "m"
) -> list[bytes]:
    sent = []
    for index in range(count):
        value = f"{stem}-{index}".encode()
        await bus.publish_event(topic, EventMessage(topic, value, key=key))
        sent.append(value)
    return sent


# -- publishing and subscribing ------------------------------------------------


async def test_publish_reaches_a_group_and_a_broadcast(place: NatsPlace) -> None:
    bus = await place.bus()
    assert await bus.create_topic("orders", partition_count=3)
    group: Seen = []
    broadcast: Seen = []

    await bus.subscribe_to_topic("orders", recorder(group), group_id="billing")
    await bus.subscribe_to_topic("orders", recorder(broadcast))
    message = EventMessage(
        "orders", b'{"id": 1}', key=b"customer-7", headers={"n": 1, "ok": True}
    )
    await bus.publish_event("orders", message)

    await wait_until(lambda: len(group) == 1 and len(broadcast) == 1, "both copies")
    for _, received, context in group + broadcast:
        assert received.message_id == message.message_id
        assert received.value == message.value
        assert received.headers == {"n": 1, "ok": True}
        assert context["backend"] == "nats"
        assert context["delivery_count"] == 1
        assert isinstance(context["offset"], str)

    assert group[0][2]["group_id"] == "billing"
    assert group[0][2]["partition"] == broadcast[0][2]["partition"]


async def test_publish_to_a_missing_topic_without_auto_create(
    place: NatsPlace,
) -> None:
    bus = await place.bus(core_settings(auto_create_topics=False))

    with pytest.raises(TopicNotFoundError):
        await bus.publish_event("nowhere", EventMessage("nowhere", b"x"))

    record = OutboundRecord("nowhere", 0, None, b"x", EventMessage("x", b"").message_id)
    (outcome,) = await bus.backend.publish([record])
    assert isinstance(outcome, TopicNotFoundError)


async def test_batch_publish_keeps_partition_order(place: NatsPlace) -> None:
    bus = await place.bus()
    await bus.create_topic("batch", partition_count=2)
    seen: Seen = []
    await bus.subscribe_to_topic("batch", recorder(seen), group_id="g")

    messages = [EventMessage("batch", f"v{i}".encode()) for i in range(40)]
    records = [
        OutboundRecord("batch", i % 2, None, m.to_bytes(), m.message_id)
        for i, m in enumerate(messages)
    ]
    outcomes = await bus.backend.publish(records)

    assert outcomes == [None] * 40
    await wait_until(lambda: len(seen) == 40, "the whole batch")
    for partition in (0, 1):
        handled = [m.value for _, m, c in seen if c["partition"] == partition]
        assert handled == [m.value for m in messages[partition::2]]


# -- consumer groups -----------------------------------------------------------


async def test_two_members_share_a_group(place: NatsPlace) -> None:
    first = await place.bus()
    second = await place.bus()
    await first.create_topic("work", partition_count=4)
    seen: Seen = []

    await first.subscribe_to_topic("work", recorder(seen, "first"), group_id="g")
    await second.subscribe_to_topic("work", recorder(seen, "second"), group_id="g")
    for index in range(60):
        message = EventMessage(
            "work", f"job-{index}".encode(), key=f"k{index}".encode()
        )
        await first.publish_event("work", message)

    await wait_until(lambda: len(seen) == 60, "60 jobs handled")
    assert sorted(values(seen)) == sorted(f"job-{i}".encode() for i in range(60))
    assert {who for who, _, _ in seen} == {"first", "second"}


async def test_per_key_order_across_members(place: NatsPlace) -> None:
    first = await place.bus()
    second = await place.bus()
    await first.create_topic("ordered", partition_count=3)
    seen: Seen = []

    async def slow(message: EventMessage) -> None:
        await asyncio.sleep(0.001)

    await first.subscribe_to_topic(
        "ordered", recorder(seen, "first", slow), group_id="g"
    )
    await second.subscribe_to_topic(
        "ordered", recorder(seen, "second", slow), group_id="g"
    )
    keys = [f"key-{i}".encode() for i in range(6)]
    for index in range(120):
        key = keys[index % len(keys)]
        message = EventMessage("ordered", key + f":{index}".encode(), key=key)
        await first.publish_event("ordered", message)

    await wait_until(lambda: len(seen) == 120, "120 messages handled")
    for key in keys:
        handled = [int(v.split(b":")[1]) for v in values(seen) if v.startswith(key)]
        assert handled == sorted(handled), f"{key!r} handled out of order: {handled}"


async def test_group_keeps_messages_published_without_members(
    place: NatsPlace,
) -> None:
    bus = await place.bus()
    await bus.create_topic("kept", partition_count=2)
    seen: Seen = []

    subscription = await bus.subscribe_to_topic("kept", recorder(seen), group_id="g")
    await bus.unsubscribe_from_topic(subscription)
    sent = await publish(bus, "kept", 6, key=b"k")

    later = await place.bus()
    await later.subscribe_to_topic("kept", recorder(seen, "later"), group_id="g")
    await wait_until(lambda: len(seen) == 6, "the messages kept for the group")
    assert values(seen) == sent


async def test_unsettled_message_comes_back_after_unsubscribe(
    place: NatsPlace,
) -> None:
    bus = await place.bus(core_settings(drain_timeout_ms=100))
    await bus.create_topic("redo", partition_count=1)
    first: Seen = []
    blocked = asyncio.Event()

    async def block(message: EventMessage) -> None:
        await blocked.wait()

    subscription = await bus.subscribe_to_topic(
        "redo", recorder(first, "first", block), group_id="g"
    )
    sent = await publish(bus, "redo", 3, key=b"k")
    await wait_until(lambda: len(first) == 1, "the first member to start")

    started = time.monotonic()
    await bus.unsubscribe_from_topic(subscription)
    second: Seen = []
    other = await place.bus()
    await other.subscribe_to_topic("redo", recorder(second, "second"), group_id="g")

    await wait_until(lambda: len(second) == 3, "the unsettled messages again")
    assert values(second) == sent
    # At least 2: the leaving member's last pull request may catch it once more
    # and give it back again.
    count = second[0][2]["delivery_count"]
    assert isinstance(count, int)
    assert count >= 2
    assert time.monotonic() - started < place.settings().ack_wait_ms / 1000, (
        "the message waited out the ack wait instead of being given back"
    )


async def test_crashed_member_message_comes_back_after_ack_wait(
    place: NatsPlace,
) -> None:
    crashing = await place.bus(core_settings(drain_timeout_ms=100), ack_wait_ms=1_000)
    await crashing.create_topic("crash", partition_count=1)
    first: Seen = []
    never = asyncio.Event()

    async def block(message: EventMessage) -> None:
        await never.wait()

    await crashing.subscribe_to_topic(
        "crash", recorder(first, "crashing", block), group_id="g"
    )
    sent = await publish(crashing, "crash", 2, key=b"k")
    await wait_until(lambda: len(first) == 1, "the crashing member to start")

    # The connection drops without the member leaving: nothing is given back.
    backend = crashing.backend
    assert isinstance(backend, NatsBackend)
    await backend.client.close()

    second: Seen = []
    other = await place.bus()
    await other.subscribe_to_topic("crash", recorder(second, "second"), group_id="g")
    await wait_until(lambda: len(second) == 2, "redelivery after the ack wait")
    assert values(second) == sent

    assert values(first) == sent[:1]
    await crashing.close()


async def test_failing_handler_is_dead_lettered(place: NatsPlace) -> None:
    core = core_settings(
        retry=RetrySettings(max_attempts=2, backoff_ms=5, backoff_max_ms=10)
    )
    bus = await place.bus(core)
    await bus.create_topic("payments", partition_count=1)
    seen: Seen = []

    async def fail_on_bad(message: EventMessage) -> None:
        if message.value == b"bad":
            raise ValueError("cannot pay")

    await bus.subscribe_to_topic(
        "payments", recorder(seen, "m", fail_on_bad), group_id="billing"
    )
    bad = EventMessage("payments", b"bad", key=b"k")
    await bus.publish_event("payments", bad)
    await bus.publish_event("payments", EventMessage("payments", b"good", key=b"k"))

    await wait_until(lambda: b"good" in values(seen), "the next message")
    assert values(seen) == [b"bad", b"bad", b"good"]

    queue = DeadLetterQueue(bus)
    letters: list[Any] = []

    async def listed() -> None:
        letters[:] = await queue.get_dlq_messages("payments")

    deadline = time.monotonic() + 10
    while not letters and time.monotonic() < deadline:
        await listed()
    assert len(letters) == 1
    letter = letters[0]
    assert letter.original_message.message_id == bad.message_id
    assert letter.exception_type == "ValueError"
    assert letter.attempt_count == 2
    assert letter.consumer_group == "billing"

    replayed: Seen = []
    await bus.subscribe_to_topic("payments", recorder(replayed, "after"))
    assert await queue.retry_failed_message(letter.dlq_message_id)
    await wait_until(lambda: len(replayed) == 1, "the replayed original")
    assert replayed[0][1].message_id == bad.message_id


# -- broadcast -----------------------------------------------------------------


async def test_broadcast_sees_only_what_is_published_while_subscribed(
    place: NatsPlace,
) -> None:
    bus = await place.bus()
    await bus.create_topic("news", partition_count=2)
    await publish(bus, "news", 3, stem="before")
    seen: Seen = []

    subscription = await bus.subscribe_to_topic("news", recorder(seen))
    during = await publish(bus, "news", 5, stem="during")
    await wait_until(lambda: len(seen) == 5, "the messages published while live")
    await bus.unsubscribe_from_topic(subscription)
    await publish(bus, "news", 3, stem="after")

    other: Seen = []
    await bus.subscribe_to_topic("news", recorder(other))
    fresh = await publish(bus, "news", 1, stem="fresh")
    await wait_until(lambda: len(other) == 1, "a later broadcast's message")
    assert sorted(values(seen)) == sorted(during)
    assert values(other) == fresh


# -- topics and metadata ---------------------------------------------------------


async def test_metadata_is_seen_from_a_second_backend(place: NatsPlace) -> None:
    first = await place.bus()
    second = await place.bus()

    assert await first.create_topic("shared.topic_x", partition_count=3)
    assert not await second.create_topic("shared.topic_x", partition_count=5)

    info = await second.get_topic_info("shared.topic_x")
    assert info is not None
    assert info.partition_count == 3
    assert info.created_at is not None
    assert info.message_count == 0
    assert await second.list_topics() == ["shared.topic_x"]
    assert await second.get_topic_info("missing") is None

    await second.subscribe_to_topic("shared.topic_x", recorder([]), group_id="ops")
    info = await first.get_topic_info("shared.topic_x")
    assert info is not None
    assert info.consumer_groups == ("ops",)


async def test_delete_topic_removes_stream_groups_and_metadata(
    place: NatsPlace,
) -> None:
    bus = await place.bus()
    await bus.create_topic("gone", partition_count=2)
    subscription = await bus.subscribe_to_topic("gone", recorder([]), group_id="g")
    await bus.unsubscribe_from_topic(subscription)
    await publish(bus, "gone", 4)

    assert await bus.delete_topic("gone")
    assert not await bus.delete_topic("gone")
    assert await bus.get_topic_info("gone") is None
    assert await bus.list_topics() == []

    names = TopicNames.of(
        "gone", stream_prefix=place.stream_prefix, subject_prefix=place.subject_prefix
    )
    client = await nats.connect(place.url)
    try:
        with pytest.raises(nats.js.errors.NotFoundError):
            await client.jetstream().stream_info(names.stream)
    finally:
        await client.close()


async def test_read_topic_browses_partition_by_partition(place: NatsPlace) -> None:
    bus = await place.bus()
    await bus.create_topic("browse", partition_count=2)
    messages = [EventMessage("browse", f"v{i}".encode()) for i in range(6)]
    records = [
        OutboundRecord("browse", i % 2, None, m.to_bytes(), m.message_id)
        for i, m in enumerate(messages)
    ]
    await bus.backend.publish(records)

    stored = await bus.backend.read_topic("browse")
    assert [r.partition for r in stored] == [0, 0, 0, 1, 1, 1]
    assert [EventMessage.from_bytes(r.payload).value for r in stored] == [
        b"v0",
        b"v2",
        b"v4",
        b"v1",
        b"v3",
        b"v5",
    ]
    assert len(await bus.backend.read_topic("browse", limit=4)) == 4
    with pytest.raises(TopicNotFoundError):
        await bus.backend.read_topic("missing")


# -- plugin, settings, connection ----------------------------------------------


async def test_create_event_bus_selects_nats_by_name(
    place: NatsPlace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYBUS_BACKEND", "nats")
    monkeypatch.setenv("POLYBUS_NATS__SERVERS", place.url)
    monkeypatch.setenv("POLYBUS_NATS__STREAM_PREFIX", place.stream_prefix)
    monkeypatch.setenv("POLYBUS_NATS__SUBJECT_PREFIX", place.subject_prefix)
    monkeypatch.setenv("POLYBUS_NATS__PULL_EXPIRES_MS", "250")

    bus = create_event_bus()
    assert isinstance(bus.backend, NatsBackend)
    assert bus.backend.settings.stream_prefix == place.stream_prefix

    async with bus:
        seen: Seen = []
        await bus.subscribe_to_topic("hello", recorder(seen), group_id="g")
        await bus.publish_event("hello", EventMessage("hello", b"world"))
        await wait_until(lambda: len(seen) == 1, "the message through the factory")


async def test_unreachable_server_raises_backend_unavailable() -> None:
    backend = NatsBackend(
        NatsSettings(servers="nats://127.0.0.1:1", connect_timeout_ms=500)
    )

    with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:1"):
        await backend.connect()
    await backend.close()


async def test_health_pings_the_server(place: NatsPlace) -> None:
    bus = await place.bus()

    health = await bus.get_service_health()

    assert health.status == "healthy"
    assert health.backend_reachable


async def test_bus_restarts_after_close(place: NatsPlace) -> None:
    bus = EventBus(place.backend(), PolybusSettings(prefetch=4))
    await bus.start()
    await bus.close()
    await bus.close()

    await bus.start()
    seen: Seen = []
    await bus.subscribe_to_topic("again", recorder(seen), group_id="g")
    await bus.publish_event("again", EventMessage("again", b"x"))
    await wait_until(lambda: len(seen) == 1, "a message after the restart")
    await bus.close()


# -- a server restart under live subscriptions -----------------------------------


async def test_live_subscriptions_survive_a_server_restart(
    private_place: NatsPlace, private_nats: PrivateNats
) -> None:
    bus = await private_place.bus()
    await bus.create_topic("durable", partition_count=2)
    group: Seen = []
    broadcast: Seen = []
    await bus.subscribe_to_topic("durable", recorder(group), group_id="g")
    await bus.subscribe_to_topic("durable", recorder(broadcast))
    before = await publish(bus, "durable", 4, stem="before")
    await wait_until(lambda: len(group) == 4 and len(broadcast) == 4, "before")

    await asyncio.to_thread(private_nats.restart)
    after: list[bytes] = []
    deadline = time.monotonic() + 20
    while len(after) < 4:
        try:
            after += await publish(bus, "durable", 1, stem=f"after{len(after)}")
        except BackendUnavailableError:
            assert time.monotonic() < deadline, "publishing never worked again"
            await asyncio.sleep(0.1)

    await wait_until(lambda: len(group) == 8, "the group after the restart", 30)
    await wait_until(lambda: len(broadcast) == 8, "the broadcast after the restart", 30)
    assert sorted(values(group)) == sorted(before + after)
    assert sorted(values(broadcast)) == sorted(before + after)


async def test_broadcast_paused_past_its_consumer_life_misses_nothing(
    place: NatsPlace,
) -> None:
    bus = await place.bus(broadcast_inactive_ms=1_000)
    await bus.create_topic("quiet", partition_count=2)
    seen: Seen = []
    subscription = await bus.subscribe_to_topic("quiet", recorder(seen))
    first = await publish(bus, "quiet", 2, stem="first")
    await wait_until(lambda: len(seen) == 2, "the messages before the pause")

    await bus.pause_subscription(subscription)
    backend = bus.backend
    assert isinstance(backend, NatsBackend)
    names = backend.names("quiet")
    consumers = await backend.jetstream.consumers_info(names.stream)
    assert len(consumers) == 1

    async def consumer_removed() -> bool:
        return not await backend.has_consumer(names, consumers[0].name)

    deadline = time.monotonic() + 10
    while not await consumer_removed():
        assert time.monotonic() < deadline, "the server kept the idle consumer"
        await asyncio.sleep(0.1)
    during = await publish(bus, "quiet", 3, stem="during")

    await bus.resume_subscription(subscription)
    await wait_until(lambda: len(seen) == 5, "the messages of the pause")
    assert sorted(values(seen)) == sorted(first + during)


async def test_create_topic_leaves_an_existing_topic_alone(place: NatsPlace) -> None:
    first = await place.bus(retention_ms=3_600_000)
    other = await place.bus(retention_ms=60_000)

    assert await first.create_topic("kept-as-is", partition_count=2)
    assert not await other.create_topic("kept-as-is", partition_count=4)

    info = await other.get_topic_info("kept-as-is")
    assert info is not None
    assert info.partition_count == 2
    assert info.config["retention_ms"] == 3_600_000


async def test_credentials_reach_the_server_and_no_log(
    guarded_nats: PrivateNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = guarded_nats.url
    in_url = f"nats://polybus:guarded-secret@127.0.0.1:{guarded_nats.port}"

    for settings in (
        NatsSettings(servers=url, user="polybus", password=SecretStr("guarded-secret")),
        NatsSettings(servers=in_url),
    ):
        backend = NatsBackend(settings.model_copy(update={"stream_prefix": "G"}))
        await backend.connect()
        await backend.ping()
        await backend.close()

    wrong = NatsBackend(
        NatsSettings(
            servers=url,
            user="polybus",
            password=SecretStr("wrong-one"),
            connect_timeout_ms=500,
        )
    )
    with pytest.raises(BackendUnavailableError, match="Authorization Violation") as e:
        await wrong.connect()

    shown = str(e.value) + caplog.text + repr(wrong.settings)
    for secret in ("guarded-secret", "wrong-one"):
        assert secret not in shown
