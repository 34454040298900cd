"""The Redis backend under the core bus, against a real Redis server."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
import redis.asyncio as aioredis

from polybus.backend import OutboundRecord
from polybus.bus import EventBus
from polybus.errors import (
    BackendUnavailableError,
    ConfigurationError,
    TopicNotFoundError,
)
from polybus.message import EventMessage
from polybus.registry import Registry
from polybus.types import ContextValue
from polybus_redis import CAPABILITIES, RedisBackend, RedisSettings
from redis_support import RedisEnv, core_settings, wait_until


class Collector:
    """Records what a handler saw, per member."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, EventMessage, dict[str, ContextValue]]] = []

    def handler(self, member: str = "m", *, fail: bool = False) -> Any:
        async def handle(message: EventMessage, context: dict[str, Any]) -> None:
            self.seen.append((member, message, dict(context)))
            if fail:
                raise RuntimeError(f"handler of {member} fails on purpose")

        return handle

    def values(self, member: str | None = None) -> list[bytes]:
        return [m.value for who, m, _ in self.seen if member in (None, who)]

    def members(self) -> set[str]:
        return {who for who, _, _ in self.seen}


def message(topic: str, value: str, key: str | None = None) -> EventMessage:
    return EventMessage(topic, value.encode(), key=key.encode() if key else None)


async def publish_all(
    bus: EventBus, topic: str, values: list[str], key: str | None = None
) -> None:
    for value in values:
        await bus.publish_event(topic, message(topic, value, key))


# -- topics ---------------------------------------------------------------------


async def test_topic_metadata_is_shared_between_processes(env: RedisEnv) -> None:
    first = await env.bus()
    second = await env.bus()

    assert await first.create_topic("orders", partition_count=3)
    assert not await second.create_topic("orders", partition_count=5)

    info = await second.get_topic_info("orders")
    assert info is not None
    assert info.partition_count == 3
    assert info.created_at is not None
    assert await second.list_topics() == ["orders"]
    assert await second.get_topic_info("missing") is None


async def test_retention_per_topic_and_default(env: RedisEnv) -> None:
    bus = await env.bus(retention_maxlen=50)
    backend = bus.backend
    assert await backend.create_topic("short", 1, {"retention_maxlen": 10})
    assert await backend.create_topic("default", 1)

    await publish_all(bus, "short", [str(i) for i in range(500)])
    await publish_all(bus, "default", [str(i) for i in range(500)])

    short = await bus.get_topic_info("short")
    default = await bus.get_topic_info("default")
    assert short is not None
    assert default is not None
    assert short.config["retention_maxlen"] == 10
    assert default.config["retention_maxlen"] == 50
    # MAXLEN ~ trims whole macro nodes, so a little more than asked stays.
    assert (short.message_count or 0) < 500
    assert (default.message_count or 0) < 500

    with pytest.raises(ConfigurationError):
        await backend.create_topic("bad", 1, {"retention_ms": -1})


async def test_delete_topic_removes_every_key(env: RedisEnv) -> None:
    bus = await env.bus(core=core_settings(default_partitions=3))
    collector = Collector()
    await bus.subscribe_to_topic("gone", collector.handler(), group_id="g")
    await bus.subscribe_to_topic("gone", collector.handler("b"))
    await publish_all(bus, "gone", ["a", "b", "c"])
    await bus.create_topic("kept")
    await wait_until(lambda: len(collector.seen) == 6, "6 deliveries")

    assert await bus.delete_topic("gone")
    assert not await bus.delete_topic("gone")

    assert await bus.get_topic_info("gone") is None
    assert await bus.list_topics() == ["kept"]
    await wait_until(
        lambda: not [key for key in env.stored_keys() if "{gone}" in key],
        f"no key of the deleted topic left, have {env.stored_keys()}",
    )


async def test_auto_create_off_raises(env: RedisEnv) -> None:
    bus = await env.bus(core=core_settings(auto_create_topics=False))

    with pytest.raises(TopicNotFoundError):
        await bus.publish_event("nope", message("nope", "x"))

    outcomes = await bus.backend.publish(
        [OutboundRecord("nope", 0, None, b"x", message("nope", "x").message_id)]
    )
    assert isinstance(outcomes[0], TopicNotFoundError)


# -- publish and subscribe --------------------------------------------------------


async def test_publish_and_consume_in_a_group(env: RedisEnv) -> None:
    bus = await env.bus()
    collector = Collector()

    await bus.subscribe_to_topic("orders", collector.handler(), group_id="billing")
    sent = message("orders", "one", key="k")
    sent.headers["n"] = 1
    await bus.publish_event("orders", sent)

    await wait_until(lambda: len(collector.seen) == 1, "one delivery")
    _, got, context = collector.seen[0]
    assert got.value == b"one"
    assert got.key == b"k"
    assert got.headers == {"n": 1}
    assert got.message_id == sent.message_id
    assert context["group_id"] == "billing"
    assert context["backend"] == "redis"
    assert context["delivery_count"] == 1
    assert "-" in str(context["offset"])


async def test_batch_publish_returns_outcome_per_record(env: RedisEnv) -> None:
    bus = await env.bus()
    await bus.create_topic("batch", partition_count=2)
    backend = bus.backend
    ids = [message("batch", str(i)).message_id for i in range(3)]

    outcomes = await backend.publish(
        [
            OutboundRecord("batch", 0, None, b"a", ids[0]),
            OutboundRecord("batch", 5, None, b"b", ids[1]),
            OutboundRecord("missing", 0, None, b"c", ids[2]),
        ]
    )

    assert outcomes[0] is None
    assert isinstance(outcomes[1], TopicNotFoundError)
    assert isinstance(outcomes[2], TopicNotFoundError)


async def test_group_members_share_work(env: RedisEnv) -> None:
    core = core_settings(default_partitions=4)
    first, second = await env.bus(core=core), await env.bus(core=core)
    collector = Collector()
    await first.subscribe_to_topic("work", collector.handler("a"), group_id="g")
    await second.subscribe_to_topic("work", collector.handler("b"), group_id="g")

    async def both_own_partitions() -> bool:
        shares = [
            len(s.assigned_partitions)
            for b in (first, second)
            for s in b.subscriptions()
        ]
        return shares == [2, 2]

    await wait_until(both_own_partitions, "two partitions per member")
    values = [str(i) for i in range(200)]
    for value in values:
        await first.publish_event("work", message("work", value, key=value))

    await wait_until(lambda: len(collector.seen) >= 200, "200 deliveries")
    assert sorted(collector.values()) == sorted(v.encode() for v in values)
    assert collector.members() == {"a", "b"}


async def test_order_per_key_holds_across_a_rebalance(env: RedisEnv) -> None:
    core = core_settings(default_partitions=4)
    first = await env.bus(core=core)
    collector = Collector()
    await first.subscribe_to_topic("seq", collector.handler("a"), group_id="g")
    keys = [f"key-{i}" for i in range(8)]

    async def publish(start: int, stop: int) -> None:
        for n in range(start, stop):
            for key in keys:
                await first.publish_event("seq", message("seq", f"{key}:{n}", key))

    await publish(0, 30)
    second = await env.bus(core=core)
    await second.subscribe_to_topic("seq", collector.handler("b"), group_id="g")
    await publish(30, 60)

    await wait_until(
        lambda: len({v for v in collector.values()}) == 8 * 60, "every message"
    )
    per_key: dict[str, list[int]] = defaultdict(list)
    for value in collector.values():
        key, _, n = value.decode().partition(":")
        per_key[key].append(int(n))
    for key, numbers in per_key.items():
        # Redelivery after a hand-over may repeat a message; order never breaks.
        deduplicated = [n for i, n in enumerate(numbers) if n not in numbers[:i]]
        assert deduplicated == list(range(60)), key
        assert numbers == sorted(numbers), key


async def test_unsettled_message_goes_to_the_next_member(env: RedisEnv) -> None:
    core = core_settings(drain_timeout_ms=100)
    first = await env.bus(core=core)
    release = asyncio.Event()
    started = asyncio.Event()

    async def stuck(message: EventMessage, context: dict[str, Any]) -> None:
        started.set()
        await release.wait()

    subscription = await first.subscribe_to_topic("jobs", stuck, group_id="g")
    await publish_all(first, "jobs", ["a", "b", "c"])
    await asyncio.wait_for(started.wait(), 10)

    await first.unsubscribe_from_topic(subscription)
    collector = Collector()
    second = await env.bus(core=core)
    await second.subscribe_to_topic("jobs", collector.handler("b"), group_id="g")

    await wait_until(lambda: len(collector.seen) == 3, "all three again")
    assert collector.values() == [b"a", b"b", b"c"]
    counts = [context["delivery_count"] for _, _, context in collector.seen]
    assert int(str(counts[0])) >= 2
    release.set()


async def test_failing_handler_is_dead_lettered(env: RedisEnv) -> None:
    bus = await env.bus()
    failing, dead = Collector(), Collector()
    await bus.subscribe_to_topic("pay", failing.handler(fail=True), group_id="g")
    await bus.create_topic("pay.dlq")
    await bus.subscribe_to_topic("pay.dlq", dead.handler(), group_id="dlq")

    await bus.publish_event("pay", message("pay", "boom"))

    await wait_until(lambda: len(dead.seen) == 1, "one dead letter")
    _, letter, _ = dead.seen[0]
    assert EventMessage.from_bytes(letter.value).value == b"boom"
    assert any(name.startswith("polybus.dlq.") for name in letter.headers)
    assert len(failing.seen) == 3

    info = await bus.get_subscription_info(bus.subscriptions()[0].subscription_id)
    assert info is not None
    await wait_until(
        lambda: (
            info.messages_dead_lettered == 1
            or bus.subscriptions()[0].messages_dead_lettered == 1
        ),
        "the original to be acknowledged",
    )


async def test_new_group_starts_at_latest_or_earliest(env: RedisEnv) -> None:
    bus = await env.bus()
    await publish_all(bus, "history", ["old"])

    latest = Collector()
    await bus.subscribe_to_topic("history", latest.handler(), group_id="late")
    earliest_bus = await env.bus(core=core_settings(start_position="earliest"))
    earliest = Collector()
    await earliest_bus.subscribe_to_topic(
        "history", earliest.handler(), group_id="early"
    )
    await publish_all(bus, "history", ["new"])

    await wait_until(lambda: len(earliest.seen) == 2, "both for the early group")
    await wait_until(lambda: len(latest.seen) == 1, "only the new one")
    assert latest.values() == [b"new"]
    assert earliest.values() == [b"old", b"new"]


async def test_broadcast_sees_only_while_subscribed(env: RedisEnv) -> None:
    bus = await env.bus(core=core_settings(default_partitions=2))
    await publish_all(bus, "news", ["before"])
    first, second = Collector(), Collector()

    subscription = await bus.subscribe_to_topic("news", first.handler())
    await bus.subscribe_to_topic("news", second.handler())
    await publish_all(bus, "news", ["during"])
    await wait_until(lambda: len(first.seen) == 1, "first broadcast")
    await bus.unsubscribe_from_topic(subscription)
    await publish_all(bus, "news", ["after"])

    await wait_until(lambda: len(second.seen) == 2, "second broadcast")
    assert first.values() == [b"during"]
    assert second.values() == [b"during", b"after"]


async def test_pause_and_resume_lose_nothing(env: RedisEnv) -> None:
    bus = await env.bus()
    collector = Collector()
    subscription = await bus.subscribe_to_topic(
        "paused", collector.handler(), group_id="g"
    )

    await bus.pause_subscription(subscription)
    await publish_all(bus, "paused", [str(i) for i in range(20)])
    await bus.resume_subscription(subscription)

    await wait_until(lambda: len(collector.seen) == 20, "20 deliveries")
    assert collector.values() == [str(i).encode() for i in range(20)]


async def test_partition_moves_only_after_its_handler_finished(
    env: RedisEnv,
) -> None:
    """A partition goes to another member once the old owner's handler is done."""
    core = core_settings(drain_timeout_ms=10_000)
    first = await env.bus(core=core)
    release = asyncio.Event()
    seen: list[tuple[str, bytes]] = []

    async def slow(message: EventMessage, context: dict[str, Any]) -> None:
        seen.append(("a", message.value))
        if message.value == b"0":
            await release.wait()

    async def quick(message: EventMessage, context: dict[str, Any]) -> None:
        seen.append(("b", message.value))

    leaving = await first.subscribe_to_topic("handover", slow, group_id="g")
    await publish_all(first, "handover", [str(i) for i in range(5)])
    await wait_until(lambda: seen == [("a", b"0")], "the first message to start")
    second = await env.bus(core=core)
    await second.subscribe_to_topic("handover", quick, group_id="g")
    unsubscribing = asyncio.create_task(first.unsubscribe_from_topic(leaving))

    client = aioredis.Redis.from_url(env.url)
    base = f"{env.prefix}{{handover}}:g:g"
    try:
        await wait_until(
            lambda: _zcard(client, f"{base}:members", 1), "the first member to leave"
        )
        owner = await client.get(f"{base}:lease:0")
        assert owner is not None
        assert owner not in await client.zrange(f"{base}:members", 0, -1)
        assert seen == [("a", b"0")]

        release.set()
        await unsubscribing
        await wait_until(lambda: len(seen) == 5, "all five messages")
    finally:
        await client.aclose()

    assert [value for _, value in seen] == [str(i).encode() for i in range(5)]
    assert [who for who, _ in seen] == ["a", "b", "b", "b", "b"]


async def test_member_that_loses_its_lease_stops_reading(env: RedisEnv) -> None:
    """Someone else holding the lease means hands off, until it is free again."""
    bus = await env.bus()
    collector = Collector()
    subscription = await bus.subscribe_to_topic(
        "stolen", collector.handler(), group_id="g"
    )
    client = aioredis.Redis.from_url(env.url)
    lease = f"{env.prefix}{{stolen}}:g:g:lease:0"

    def assigned() -> tuple[int, ...]:
        info = bus.subscriptions()[0]
        assert info.subscription_id == subscription
        return info.assigned_partitions

    try:
        await client.set(lease, "intruder", px=60_000)
        await wait_until(lambda: assigned() == (), "the partition to be revoked")
        await publish_all(bus, "stolen", ["while stolen"])
        assert await client.get(lease) == b"intruder"
        assert collector.seen == []

        await client.delete(lease)
        await wait_until(lambda: assigned() == (0,), "the partition to come back")
        await wait_until(lambda: len(collector.seen) == 1, "the waiting message")
    finally:
        await client.aclose()

    assert collector.values() == [b"while stolen"]


async def _zcard(client: aioredis.Redis, key: str, expected: int) -> bool:
    return int(await client.zcard(key)) == expected


# -- crashes --------------------------------------------------------------------


async def test_pending_entries_of_a_crashed_member_are_claimed(env: RedisEnv) -> None:
    """A member that vanishes without a word loses its partition to the next."""
    crashed = await env.bus()
    started = asyncio.Event()

    async def hang(message: EventMessage, context: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    await crashed.subscribe_to_topic("crash", hang, group_id="g")
    await publish_all(crashed, "crash", ["a", "b"])
    await asyncio.wait_for(started.wait(), 10)
    await _kill(crashed)

    collector = Collector()
    survivor = await env.bus()
    await survivor.subscribe_to_topic("crash", collector.handler(), group_id="g")

    await wait_until(lambda: len(collector.seen) == 2, "both messages", timeout=20)
    assert collector.values() == [b"a", b"b"]


async def test_trimmed_pending_entries_are_dropped(env: RedisEnv) -> None:
    crashed = await env.bus()
    await crashed.backend.create_topic("trim", 1, {"retention_maxlen": 1})
    started = asyncio.Event()

    async def hang(message: EventMessage, context: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    await crashed.subscribe_to_topic("trim", hang, group_id="g")
    await publish_all(crashed, "trim", ["gone"])
    await asyncio.wait_for(started.wait(), 10)
    await _kill(crashed)
    client = aioredis.Redis.from_url(env.url)
    stream = f"{env.prefix}{{trim}}:p:0"
    await client.xtrim(stream, maxlen=0)
    await client.aclose()

    collector = Collector()
    survivor = await env.bus()
    await survivor.subscribe_to_topic("trim", collector.handler(), group_id="g")
    await publish_all(survivor, "trim", ["kept"])

    await wait_until(lambda: len(collector.seen) == 1, "the new message")
    assert collector.values() == [b"kept"]


async def _kill(bus: EventBus) -> None:
    """Stop a bus as a crash would: tasks gone, nothing released or acked."""
    backend = bus.backend
    assert isinstance(backend, RedisBackend)

    for stream in list(backend._streams):
        heartbeat = getattr(stream, "_heartbeat", None)
        if heartbeat is not None:
            heartbeat.cancel()
        for reader in getattr(stream, "_readers", {}).values():
            reader.task.cancel()
    for subscription in bus._subscriptions.values():
        for worker in subscription.dispatcher._workers.values():
            worker._task.cancel()
    bus._subscriptions.clear()
    await backend.client.aclose()
    backend._client = None
    backend._streams.clear()
    bus._running = False


# -- settings and plugin --------------------------------------------------------


def test_settings_from_environment_mask_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLYBUS_REDIS__URL", "redis://app:hunter2@db:6379/1")
    monkeypatch.setenv("POLYBUS_REDIS__PASSWORD", "s3cret")
    monkeypatch.setenv("POLYBUS_REDIS__LEASE_TTL_MS", "2000")

    settings = RedisSettings()

    assert settings.lease_ttl_ms == 2000
    assert settings.password is not None
    assert settings.password.get_secret_value() == "s3cret"
    shown = str(settings.public_dict())
    assert "hunter2" not in shown
    assert "s3cret" not in shown
    assert "s3cret" not in repr(settings)


def test_plugin_is_registered_by_entry_point() -> None:
    spec = Registry().get("redis").spec

    assert spec.settings_class is RedisSettings
    assert spec.capabilities is CAPABILITIES
    assert CAPABILITIES.shared_across_processes
    assert "durability" in CAPABILITIES.limitations


async def test_unreachable_server_is_reported() -> None:
    backend = RedisBackend(
        RedisSettings(url="redis://127.0.0.1:1/0", connect_timeout_ms=200)
    )

    with pytest.raises(BackendUnavailableError):
        await backend.connect()


async def test_more_partitions_than_read_connections_are_all_read(
    env: RedisEnv,
) -> None:
    # Sixteen partitions, each read blocking up to block_ms, share four read
    # connections: they are read in turn, while leases and acks go over the
    # other pool and never wait behind them.
    bus = await env.bus(pool_size=4, read_pool_size=4, block_ms=200)
    await bus.create_topic("wide", partition_count=16)
    collector = Collector()
    await bus.subscribe_to_topic("wide", collector.handler(), group_id="g")

    for index in range(64):
        await bus.publish_event("wide", message("wide", str(index), key=f"k{index}"))

    await wait_until(lambda: len(collector.seen) == 64, "64 deliveries", timeout=60)
    assert sorted(int(got.value) for _, got, _ in collector.seen) == list(range(64))
