"""A Redis restart in the middle of publishing and consuming.

The server here is a private ``redis-server`` with an append-only file
(``appendfsync always``), so what it acknowledged survives the restart; the
shared server of the other tests is never touched.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from polybus.errors import TopicNotFoundError
from polybus.message import EventMessage
from redis_support import PrivateRedis, RedisEnv, core_settings, wait_until

pytestmark = pytest.mark.slow


async def test_restart_loses_nothing_and_misses_nothing(
    private_env: RedisEnv,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = core_settings(default_partitions=2)
    publisher = await private_env.bus(core=core)
    consumer = await private_env.bus(core=core)
    published: list[int] = []
    handled: list[tuple[int, int]] = []
    broadcast: list[int] = []

    async def handle(message: EventMessage, context: dict[str, Any]) -> None:
        handled.append((int(str(context["partition"])), int(message.value)))

    async def watch(message: EventMessage, context: dict[str, Any]) -> None:
        broadcast.append(int(message.value))

    await consumer.subscribe_to_topic("events", handle, group_id="g")
    await consumer.subscribe_to_topic("events", watch)
    restarted = asyncio.Event()
    first_after_restart: list[int] = []

    async def publish() -> None:
        # Publishes on through the restart, then 300 more once it is over.
        n = 0
        while not first_after_restart or n < first_after_restart[0] + 300:
            if restarted.is_set() and not first_after_restart:
                first_after_restart.append(n)
            await publisher.publish_event(
                "events", EventMessage("events", str(n).encode(), key=b"%d" % (n % 7))
            )
            published.append(n)
            n += 1

    publishing = asyncio.create_task(publish())
    await wait_until(lambda: len(handled) >= 100, "100 handled before the restart")
    await asyncio.to_thread(private_redis.restart)
    restarted.set()
    await publishing
    total = len(published)

    await wait_until(
        lambda: {n for _, n in handled} == set(range(total)),
        "every message handled after the restart",
        timeout=30,
    )
    per_partition: dict[int, list[int]] = {}
    for partition, n in handled:
        per_partition.setdefault(partition, []).append(n)
    for numbers in per_partition.values():
        firsts = list(dict.fromkeys(numbers))
        assert firsts == sorted(firsts)

    after = set(range(first_after_restart[0], total))
    await wait_until(
        lambda: after <= set(broadcast), "broadcast sees what came after the restart"
    )

    retried = [r for r in caplog.records if r.name.startswith("polybus_redis")]
    assert retried, "the restart should have interrupted publishing or reading"

    client = aioredis.Redis.from_url(private_env.url)
    try:

        async def nothing_pending() -> bool:
            counts = [
                (await client.xpending(f"{private_env.prefix}{{events}}:p:{p}", "g"))[
                    "pending"
                ]
                for p in range(2)
            ]
            return counts == [0, 0]

        await wait_until(nothing_pending, "every message acknowledged")
    finally:
        await client.aclose()


async def test_consumer_recovers_after_the_server_lost_its_data(
    env: RedisEnv,
) -> None:
    """A server restarted without persistence: topic, groups and leases are gone."""
    publisher = await env.bus()
    consumer = await env.bus()
    seen: list[bytes] = []

    async def handle(message: EventMessage, context: dict[str, Any]) -> None:
        seen.append(message.value)

    await consumer.subscribe_to_topic("lost", handle, group_id="g")
    await publisher.publish_event("lost", EventMessage("lost", b"before"))
    await wait_until(lambda: seen == [b"before"], "the first message")

    env.cleanup()  # every key of this test gone, as after a restart
    with pytest.raises(TopicNotFoundError):
        await publisher.publish_event("lost", EventMessage("lost", b"x"))
    await publisher.publish_event("lost", EventMessage("lost", b"after"))

    await wait_until(lambda: b"after" in seen, "the message after the loss")
    assert b"x" not in seen
