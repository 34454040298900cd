"""The broker dies and comes back while the bus publishes and consumes.

Tansu keeps everything in memory, so a restart loses topics and offsets; what
is tested is the client side: publishes during the outage fail with a polybus
error or succeed, none hangs, the consumer group resumes once the broker is
back, and the bus closes cleanly afterwards. A private broker is used, so the
session's broker is never restarted under other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator

import pytest

from polybus.errors import PolybusError
from polybus.message import EventMessage
from polybus.settings import PolybusSettings, RetrySettings
from polybus.testing.harness import async_test, wait_until
from polybus.testing.tansu import TansuBroker
from polybus.types import ContextValue
from polybus_kafka import KafkaBackend, KafkaEventBus
from polybus_kafka.testing import KafkaTestServer


@pytest.fixture
def private_server() -> Iterator[KafkaTestServer[KafkaBackend]]:
    """A Tansu broker of this test alone."""
    broker = TansuBroker()
    broker.start()
    try:
        yield KafkaTestServer(broker.bootstrap_servers, broker, KafkaBackend)
    finally:
        broker.stop()


@pytest.mark.slow
@async_test(150)
async def test_bus_survives_a_broker_restart(
    private_server: KafkaTestServer[KafkaBackend],
) -> None:
    broker = private_server.tansu
    assert broker is not None
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    seen: list[bytes] = []
    outcomes: list[str] = []

    async def handle(message: EventMessage, context: dict[str, ContextValue]) -> None:
        seen.append(message.value)

    backend = private_server.backend(
        request_timeout_ms=3_000, metadata_max_age_ms=1_000
    )
    core = PolybusSettings(drain_timeout_ms=2_000, retry=RetrySettings(backoff_ms=5))
    bus = KafkaEventBus(backend, core)
    await bus.start()
    await bus.create_topic(topic, 2)
    await bus.subscribe_to_topic(topic, handle, group_id="restart-group")
    await bus.publish_event(topic, EventMessage(topic, b"before"))
    await wait_until(lambda: b"before" in seen, timeout=20, describe=lambda: f"{seen}")

    async def publish_through_the_outage() -> None:
        for index in range(30):
            started = time.monotonic()
            try:
                await bus.publish_event(
                    topic, EventMessage(topic, b"during-%d" % index)
                )
            except PolybusError as exc:
                outcomes.append(type(exc).__name__)
            else:
                outcomes.append("ok")
            assert time.monotonic() - started < 15, "a publish hung"
            await asyncio.sleep(0.1)

    publisher = asyncio.create_task(publish_through_the_outage())
    await asyncio.to_thread(broker.restart)
    await publisher

    # The restarted broker forgot the topic; once it exists again, messages
    # published to it reach the group without a new subscription.
    async def topic_back() -> bool:
        try:
            await bus.create_topic(topic, 2)
        except PolybusError:
            return False
        return True

    await wait_until(topic_back, timeout=30, describe=lambda: "topic recreated")

    # The group may reset to the end of the new topic after a marker was
    # published, so a fresh marker goes out every 300 ms until one arrives.
    last_marker = 0.0

    async def resumed() -> bool:
        nonlocal last_marker
        if any(value.startswith(b"after-") for value in seen):
            return True
        if time.monotonic() - last_marker < 0.3:
            return False

        last_marker = time.monotonic()
        marker = b"after-%f" % last_marker
        with contextlib.suppress(PolybusError):
            await bus.publish_event(topic, EventMessage(topic, marker))
        return False

    await wait_until(resumed, timeout=60, describe=lambda: f"outcomes {outcomes}")

    async with asyncio.timeout(20):
        await bus.close()
    assert len(outcomes) == 30
    # Tansu answers a produce to a topic it lost with UnknownError (-1), which
    # comes back as a KafkaBackendError until the metadata shows the topic gone.
    expected = {"ok", "BackendUnavailableError", "TopicNotFoundError"}
    assert set(outcomes) <= expected | {"KafkaBackendError"}


@pytest.mark.slow
@async_test(90)
async def test_nothing_hangs_while_the_broker_is_down(
    private_server: KafkaTestServer[KafkaBackend],
) -> None:
    broker = private_server.tansu
    assert broker is not None
    topic = f"down-{uuid.uuid4().hex[:8]}"

    async def handle(message: EventMessage, context: dict[str, ContextValue]) -> None:
        return None

    backend = private_server.backend(request_timeout_ms=2_000, metadata_max_age_ms=0)
    bus = KafkaEventBus(backend, PolybusSettings(drain_timeout_ms=1_000))
    await bus.start()
    await bus.create_topic(topic, 1)
    await bus.subscribe_to_topic(topic, handle, group_id="down-group")
    broker.stop()

    started = time.monotonic()
    with pytest.raises(PolybusError):
        await bus.publish_event(topic, EventMessage(topic, b"lost"))
    assert time.monotonic() - started < 10

    health = await bus.get_service_health()
    assert health.status == "unhealthy"

    started = time.monotonic()
    await bus.close()
    assert time.monotonic() - started < 20
