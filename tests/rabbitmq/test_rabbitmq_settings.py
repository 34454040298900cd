"""Settings and capability declaration of the RabbitMQ backend (no broker)."""

from __future__ import annotations

import re

import pytest

from polybus.registry import Registry
from polybus_rabbitmq import (
    CAPABILITIES,
    CAPABILITIES_WITHOUT_TOPIC_LOG,
    RabbitMQBackend,
    RabbitMQSettings,
)
from polybus_rabbitmq.topic_log import log_arguments
from polybus_rabbitmq.topology import MAX_EXCHANGE_NAME, MAX_QUEUE_NAME, Topology


def test_settings_read_environment_and_hide_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLYBUS_RABBITMQ__URL", "amqps://broker.example:5671/")
    monkeypatch.setenv("POLYBUS_RABBITMQ__PASSWORD", "s3cret")
    monkeypatch.setenv("POLYBUS_RABBITMQ__USERNAME", "svc")
    monkeypatch.setenv("POLYBUS_RABBITMQ__VIRTUAL_HOST", "orders")
    monkeypatch.setenv("POLYBUS_RABBITMQ__QUEUE_TYPE", "quorum")
    monkeypatch.setenv("POLYBUS_RABBITMQ__PREFETCH", "10")

    settings = RabbitMQSettings()
    parameters = settings.connection_parameters()

    assert parameters["ssl"] is True
    assert parameters["login"] == "svc"
    assert parameters["virtualhost"] == "orders"
    assert settings.queue_type == "quorum"
    assert settings.prefetch == 10
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.public_dict())
    assert "s3cret" not in settings.describe()


def test_capabilities_name_every_gap() -> None:
    assert CAPABILITIES.earliest_start is False
    assert CAPABILITIES.topic_message_count is False
    assert CAPABILITIES.persistent
    assert CAPABILITIES.shared_across_processes
    assert CAPABILITIES.browse
    for gap in ("earliest_start", "topic_message_count", "max_message_bytes"):
        assert gap in CAPABILITIES.limitations


def test_capabilities_follow_the_topic_log_setting() -> None:
    with_log = RabbitMQBackend(RabbitMQSettings())
    without = RabbitMQBackend(RabbitMQSettings(topic_log=False))

    assert with_log.capabilities is CAPABILITIES
    assert without.capabilities is CAPABILITIES_WITHOUT_TOPIC_LOG
    assert not without.capabilities.browse
    assert "browse" in without.capabilities.limitations


def test_topic_log_retention_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLYBUS_RABBITMQ__TOPIC_LOG_MAX_BYTES", "1000000")
    monkeypatch.setenv("POLYBUS_RABBITMQ__TOPIC_LOG_MAX_AGE", "12h")
    monkeypatch.setenv("POLYBUS_RABBITMQ__TOPIC_LOG_SEGMENT_BYTES", "100000")

    assert log_arguments(RabbitMQSettings()) == {
        "x-queue-type": "stream",
        "x-max-length-bytes": 1_000_000,
        "x-max-age": "12h",
        "x-stream-max-segment-size-bytes": 100_000,
    }
    monkeypatch.setenv("POLYBUS_RABBITMQ__TOPIC_LOG_MAX_AGE", "")
    assert log_arguments(RabbitMQSettings()) == {
        "x-queue-type": "stream",
        "x-max-length-bytes": 1_000_000,
        "x-stream-max-segment-size-bytes": 100_000,
    }


@pytest.mark.parametrize("age", ["7", "7d", "0D", "1 h", "h"])
def test_topic_log_max_age_needs_a_number_and_a_unit(age: str) -> None:
    with pytest.raises(ValueError, match="topic_log_max_age"):
        RabbitMQSettings(topic_log_max_age=age)


def test_names_fit_amqp_limits_and_stay_unique() -> None:
    topology = Topology("polybus.", "classic")
    allowed = re.compile(r"^[A-Za-z0-9\-_.:@#,/+ ]*$")
    topic = "t" * 249
    names = [
        topology.exchange(topic),
        topology.group_queue(topic, "g" * 300, 7),
        topology.group_queue(topic, "g" * 299 + "h", 7),
        topology.group_queue("orders", "ünï:code", 0),
        topology.group_queue("orders", "ünï;code", 0),
        topology.members_queue(topic, "g"),
        topology.broadcast_queue(topic),
        topology.log_queue(topic),
    ]

    assert len(names[0]) <= MAX_EXCHANGE_NAME
    assert all(len(name) <= MAX_QUEUE_NAME for name in names)
    assert all(allowed.fullmatch(name) for name in names)
    assert names[1] != names[2]
    assert names[3] != names[4]
    assert names[1].endswith(":7")
    assert topology.group_queue("orders", "billing", 2) == "polybus.orders:billing:2"
    assert topology.log_queue("orders") == "polybus.orders:log"
    assert topology.log_queue(topic).endswith(":log")


def test_entry_point_registers_the_backend() -> None:
    installed = Registry().get("rabbitmq")

    assert installed.distribution == "polybus-rabbitmq"
    assert installed.spec.settings_class is RabbitMQSettings
    assert installed.spec.capabilities is CAPABILITIES
    backend = installed.spec.factory(RabbitMQSettings())
    assert isinstance(backend, RabbitMQBackend)
