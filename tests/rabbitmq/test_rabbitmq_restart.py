"""A RabbitMQ restart in the middle of publishing and consuming.

The broker is shared, so the outage is one ``stop_app``/``start_app`` pair,
kept as short as the broker allows, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable

import pytest

from polybus.bus import EventBus
from polybus.message import EventMessage
from polybus.settings import PolybusSettings
from polybus.types import ContextValue
from polybus_rabbitmq import RabbitMQBackend, RabbitMQSettings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to restart"
    ),
]

logger = logging.getLogger(__name__)

Eventually = Callable[..., Awaitable[None]]
SettingsFactory = Callable[..., RabbitMQSettings]

IN_FLIGHT = 200
"""How far the publisher may run ahead of the consumer."""


async def rabbitmqctl(*arguments: str, timeout: float) -> None:
    """Run ``rabbitmqctl`` with a deadline; raise if it fails."""
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise

    if process.returncode != 0:
        raise RuntimeError(
            f"rabbitmqctl {' '.join(arguments)} failed ({process.returncode}): "
            f"{err.decode(errors='replace')}{out.decode(errors='replace')}"
        )


async def restart_broker() -> None:
    """Stop and start the RabbitMQ application, waiting until it is up."""
    logger.info("Stopping the RabbitMQ application")
    try:
        await rabbitmqctl("stop_app", timeout=60)
    finally:
        logger.info("Starting the RabbitMQ application")
        await rabbitmqctl("start_app", timeout=120)
        await rabbitmqctl("await_startup", "--timeout", "120", timeout=130)
    logger.info("RabbitMQ is up again")


async def test_restart_loses_nothing_confirmed(
    rabbitmq_settings: SettingsFactory, eventually: Eventually
) -> None:
    settings = rabbitmq_settings(
        reconnect_interval_ms=300, operation_timeout_ms=120_000
    )
    core = PolybusSettings(drain_timeout_ms=2_000)
    topic = "restart"
    confirmed: list[bytes] = []
    received: set[bytes] = set()
    deliveries = 0
    progress = asyncio.Event()

    async def handle(message: EventMessage, context: dict[str, ContextValue]) -> None:
        nonlocal deliveries
        deliveries += 1
        received.add(message.value)
        progress.set()

    async def produce(bus: EventBus, stop: asyncio.Event) -> None:
        index = 0
        while not stop.is_set():
            if len(confirmed) - len(received) > IN_FLIGHT:
                progress.clear()
                await asyncio.wait_for(progress.wait(), timeout=60)
                continue

            value = f"m{index}".encode()
            key = str(index % 7).encode()
            await bus.publish_event(topic, EventMessage(topic, value, key=key))
            confirmed.append(value)
            index += 1

    consumer = EventBus(RabbitMQBackend(settings), core)
    publisher = EventBus(RabbitMQBackend(settings), core)
    async with consumer, publisher:
        await consumer.create_topic(topic, partition_count=2)
        await consumer.subscribe_to_topic(topic, handle, group_id="survivors")
        stop = asyncio.Event()
        producer = asyncio.create_task(produce(publisher, stop))

        await eventually(lambda: len(received) >= 100, "traffic before the restart")
        outage = time.monotonic()
        await restart_broker()
        outage = time.monotonic() - outage
        before = len(confirmed)
        await eventually(
            lambda: len(confirmed) >= before + 100 or producer.done(),
            "publishes confirmed after the restart",
            60,
        )
        stop.set()
        await producer

        await eventually(
            lambda: received >= set(confirmed), "every confirmed message", 90
        )
        heard_after = {f"m{i}".encode() for i in range(before, len(confirmed))}
        assert heard_after <= received, "the consumer did not come back"

    logger.info(
        "Restart took %.1fs; %d messages confirmed (%d after the restart), all "
        "received; %d deliveries in all (%d duplicates)",
        outage,
        len(confirmed),
        len(confirmed) - before,
        deliveries,
        deliveries - len(received),
    )
