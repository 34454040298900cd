"""The Redpanda backend and its adapter, on the session's broker."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.errors import IncompatibleBrokerVersion

from polybus.errors import ConfigurationError, UnsupportedOperationError
from polybus.factory import create_event_bus
from polybus.message import EventMessage
from polybus.protocols import ProtocolRedpandaAdapter
from polybus.settings import PolybusSettings
from polybus.testing.harness import async_test, wait_until
from polybus.types import ContextValue
from polybus_kafka import backend as kafka_backend
from polybus_kafka.testing import KafkaTestServer
from polybus_redpanda import RedpandaBackend, RedpandaEventBus, RedpandaSettings

Server = KafkaTestServer[RedpandaBackend]


def unique(stem: str) -> str:
    """A topic or group name no other test uses."""
    return f"rp-{stem}-{uuid.uuid4().hex[:10]}"


def test_settings_use_their_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYBUS_REDPANDA__BOOTSTRAP_SERVERS", "rp1:9092,rp2:9092")
    monkeypatch.setenv("POLYBUS_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("POLYBUS_REDPANDA__SASL_PASSWORD", "s3cret")

    settings = RedpandaSettings()

    assert settings.bootstrap_servers == ["rp1:9092", "rp2:9092"]
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.public_dict())


@async_test(90)
async def test_plugin_bus_round_trip(redpanda_server: Server) -> None:
    topic = unique("round")
    seen: list[bytes] = []

    async def handle(message: EventMessage, context: dict[str, ContextValue]) -> None:
        assert context["backend"] == "redpanda"
        seen.append(message.value)

    bus = create_event_bus(
        PolybusSettings(backend="redpanda"),
        backend_settings=redpanda_server.settings(),
    )
    assert isinstance(bus, RedpandaEventBus)
    assert isinstance(bus, ProtocolRedpandaAdapter)

    async with bus:
        assert await bus.create_redpanda_topic(topic, 2)
        assert not await bus.create_redpanda_topic(topic, 2)
        sid = await bus.subscribe_to_topic(topic, handle, group_id=unique("g"))
        await bus.publish_event(topic, EventMessage(topic, b"hello", key=b"k"))
        await wait_until(lambda: seen == [b"hello"], timeout=20, describe=lambda: "")
        await bus.unsubscribe_from_topic(sid)
        assert await bus.delete_redpanda_topic(topic)
        assert not await bus.delete_redpanda_topic(topic)


@async_test(60)
async def test_metrics_and_topic_configs(redpanda_server: Server) -> None:
    topic = unique("metrics")
    bus = RedpandaEventBus(redpanda_server.backend())

    async with bus:
        await bus.create_redpanda_topic(topic, 3)
        for index in range(5):
            await bus.publish_event(topic, EventMessage(topic, b"%d" % index))

        assert await bus.optimize_redpanda_performance(
            topic, {"retention.ms": 60_000, "compression.type": "zstd"}
        )
        metrics = await bus.get_redpanda_metrics()

    assert metrics.broker_count >= 1
    assert metrics.topic_count >= 1
    assert metrics.partition_count >= 3
    assert metrics.messages_produced == 5
    assert metrics.bytes_produced > 0
    assert metrics.produce_latency_ms_avg > 0
    configs = metrics.topic_configs[topic]
    assert configs["retention.ms"] == "60000"
    assert configs["compression.type"] == "zstd"


@async_test(60)
async def test_optimize_rejects_bad_settings(redpanda_server: Server) -> None:
    bus = RedpandaEventBus(redpanda_server.backend())

    async with bus:
        topic = unique("bad")
        await bus.create_redpanda_topic(topic, 1)
        with pytest.raises(ConfigurationError):
            await bus.optimize_redpanda_performance(topic, {})
        with pytest.raises(ConfigurationError):
            await bus.optimize_redpanda_performance(topic, {"retention.ms": [1]})


@async_test(60)
async def test_optimize_without_a_config_call_is_unsupported(
    redpanda_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker offering no way to alter configs gets a clear refusal."""
    monkeypatch.setattr(
        kafka_backend, "incremental_alter_request", lambda topic, configs: None
    )
    bus = RedpandaEventBus(redpanda_server.backend())

    async with bus:
        topic = unique("unsupported")
        await bus.create_redpanda_topic(topic, 1)
        admin = bus.backend._require_admin()

        async def refuse(resources: object) -> object:
            raise IncompatibleBrokerVersion("AlterConfigs is not offered")

        monkeypatch.setattr(admin, "alter_configs", refuse)
        with pytest.raises(UnsupportedOperationError, match="altering topic configs"):
            await bus.optimize_redpanda_performance(topic, {"retention.ms": 1000})
