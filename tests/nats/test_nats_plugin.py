"""The NATS plugin without a server: names, registration, settings."""

from __future__ import annotations

import pytest

from polybus import Registry
from polybus_nats import CAPABILITIES, NatsSettings
from polybus_nats.naming import TopicNames, decode_token, encode_token


def test_topic_names_never_collide() -> None:
    topics = ["a", "a.b", "a_b", "a__b", "a_db", ".a", "a..b", "a-b"]
    tokens = [encode_token(t) for t in topics]

    assert len(set(tokens)) == len(topics)
    assert [decode_token(t) for t in tokens] == topics
    for token in tokens:
        assert "." not in token

    long = TopicNames.of("x" * 249, stream_prefix="P", subject_prefix="s")
    assert len(long.stream) <= 200


def test_entry_point_registers_the_backend() -> None:
    installed = Registry().get("nats")

    assert installed.distribution == "polybus-nats"
    assert installed.entry_point == "nats"
    assert installed.spec.settings_class is NatsSettings
    assert installed.spec.capabilities is CAPABILITIES
    assert CAPABILITIES.browse


def test_settings_from_environment_hide_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "POLYBUS_NATS__SERVERS", "nats://alice:s3cret@h1:4222, nats://h2"
    )
    monkeypatch.setenv("POLYBUS_NATS__USER", "alice")
    monkeypatch.setenv("POLYBUS_NATS__PASSWORD", "hunter2")
    monkeypatch.setenv("POLYBUS_NATS__TOKEN", "t0ken")
    monkeypatch.setenv("POLYBUS_NATS__ACK_WAIT_MS", "1500")

    settings = NatsSettings()

    assert settings.server_list == ["nats://alice:s3cret@h1:4222", "nats://h2"]
    assert settings.redacted_servers == "nats://h1:4222,nats://h2"
    assert settings.ack_wait_ms == 1500
    printed = str(settings.public_dict()) + repr(settings)
    for secret in ("hunter2", "t0ken"):
        assert secret not in printed
