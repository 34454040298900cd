"""Browsing topics and the dead-letter life cycle on Redis."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest
from typer.testing import CliRunner

from polybus import DeadLetterQueue, EventMessage
from polybus.cli.app import app
from polybus.settings import RetrySettings
from polybus.types import ContextValue
from redis_support import RedisEnv, core_settings, wait_until


async def test_read_topic_lists_every_partition_in_order(env: RedisEnv) -> None:
    bus = await env.bus()
    topic = f"browse-{uuid4().hex[:8]}"
    await bus.create_topic(topic, 3)
    sent = [EventMessage(topic, b"%d" % i, key=b"k%d" % (i % 5)) for i in range(30)]
    for message in sent:
        await bus.publish_event(topic, message)

    records = await bus.backend.read_topic(topic)
    limited = await bus.backend.read_topic(topic, limit=7)

    assert len(records) == 30
    assert len(limited) == 7
    decoded = [EventMessage.from_bytes(r.payload) for r in records]
    assert {m.message_id for m in decoded} == {m.message_id for m in sent}
    for partition in range(3):
        values = [
            int(m.value)
            for m, r in zip(decoded, records, strict=True)
            if r.partition == partition
        ]
        assert values == sorted(values)


async def test_dead_letter_life_cycle_across_processes(env: RedisEnv) -> None:
    retry = RetrySettings(max_attempts=2, backoff_ms=1, backoff_max_ms=2, jitter_ms=0)
    bus = await env.bus(core_settings(retry=retry))
    topic = f"orders-{uuid4().hex[:8]}"
    fixed: list[EventMessage] = []

    async def handler(message: EventMessage, context: dict[str, ContextValue]) -> None:
        if message.headers.get("polybus.dlq.replay_count"):
            fixed.append(message)
            return
        raise ValueError(f"order {message.value.decode()} has no customer")

    await bus.subscribe_to_topic(topic, handler, group_id="billing")
    for index in range(3):
        await bus.publish_event(topic, EventMessage(topic, b"%d" % index))
    await wait_until(
        lambda: bus.counters.topics[topic].dead_lettered == 3, "three dead letters"
    )

    dlq = DeadLetterQueue(await env.bus())
    letters = await dlq.get_dlq_messages(topic)
    assert len(letters) == 3
    assert {x.exception_type for x in letters} == {"ValueError"}
    assert {x.consumer_group for x in letters} == {"billing"}
    assert (await dlq.analyze_failure_patterns(topic, 1)).total_failures == 3

    assert await dlq.retry_failed_message(letters[0].dlq_message_id)
    assert not await dlq.retry_failed_message(letters[0].dlq_message_id)
    assert await dlq.clear_dlq_messages(topic, older_than_hours=0) == 2
    assert await dlq.get_dlq_messages(topic) == []

    await wait_until(lambda: len(fixed) == 1, "the replayed order")
    assert fixed[0].message_id == letters[0].original_message.message_id


def test_dlq_commands_work_from_another_process(
    env: RedisEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"cli-{uuid4().hex[:8]}"

    async def fail_two() -> None:
        retry = RetrySettings(max_attempts=1, backoff_ms=1, jitter_ms=0)
        bus = await env.bus(core_settings(retry=retry))

        async def handler(
            message: EventMessage, context: dict[str, ContextValue]
        ) -> None:
            raise KeyError("customer")

        await bus.subscribe_to_topic(topic, handler, group_id="cli")
        for index in range(2):
            await bus.publish_event(topic, EventMessage(topic, b"%d" % index))
        await wait_until(
            lambda: bus.counters.topics[topic].dead_lettered == 2, "dead letters"
        )
        await env.aclose()

    asyncio.run(fail_two())
    monkeypatch.setenv("POLYBUS_BACKEND", "redis")
    monkeypatch.setenv("POLYBUS_REDIS__URL", env.url)
    monkeypatch.setenv("POLYBUS_REDIS__KEY_PREFIX", env.prefix)
    runner = CliRunner()

    listed = runner.invoke(app, ["dlq", "list", topic])
    analyzed = runner.invoke(app, ["dlq", "analyze", topic, "--hours", "1"])
    letters = asyncio.run(_letters(env, topic))
    shown = runner.invoke(app, ["dlq", "show", topic, letters[0]])
    retried = runner.invoke(app, ["dlq", "retry", topic, letters[0]])
    again = runner.invoke(app, ["dlq", "retry", topic, letters[0]])
    cleared = runner.invoke(app, ["dlq", "clear", topic])

    assert listed.exit_code == 0, listed.output
    assert listed.stdout.count("KeyError") == 2
    assert "2 failure(s)" in analyzed.stdout
    assert "KeyError" in analyzed.stdout
    assert shown.exit_code == 0, shown.output
    assert '"consumer_group": "cli"' in shown.stdout
    assert retried.exit_code == 0, retried.output
    assert again.exit_code == 1
    assert "already retried" in again.stderr
    assert "cleared 1 dead letter(s)" in cleared.stdout


async def _letters(env: RedisEnv, topic: str) -> list[str]:
    dlq = DeadLetterQueue(await env.bus())
    try:
        return [x.dlq_message_id for x in await dlq.get_dlq_messages(topic)]
    finally:
        await env.aclose()
