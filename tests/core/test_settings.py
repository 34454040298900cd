"""Configuration from the environment and from .env files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from polybus import BackendSettings, PolybusSettings


class _AcmeSettings(BackendSettings):
    model_config = SettingsConfigDict(env_prefix="POLYBUS_ACME__")

    url: str = "acme://localhost"
    password: SecretStr = SecretStr("")
    pool_size: int = 4


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("POLYBUS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = PolybusSettings()

    assert settings.backend == "in_memory"
    assert settings.retry.max_attempts == 3
    assert settings.dead_letter.topic_suffix == ".dlq"
    assert settings.auto_create_topics is True


def test_environment_picks_backend_and_nested_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLYBUS_BACKEND", "Redis")
    monkeypatch.setenv("POLYBUS_RETRY__MAX_ATTEMPTS", "7")
    monkeypatch.setenv("POLYBUS_DEAD_LETTER__TOPIC_SUFFIX", ".dead")
    monkeypatch.setenv("POLYBUS_MAX_MESSAGE_BYTES", "2048")

    settings = PolybusSettings()

    assert settings.backend == "redis"
    assert settings.retry.max_attempts == 7
    assert settings.dead_letter.topic_suffix == ".dead"
    assert settings.max_message_bytes == 2048


def test_third_party_backend_names_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLYBUS_BACKEND", "nats")

    assert PolybusSettings().backend == "nats"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "POLYBUS_BACKEND=rabbitmq\n"
        "POLYBUS_PREFETCH=5\n"
        "POLYBUS_ACME__URL=acme://broker:1234\n"
        "POLYBUS_ACME__PASSWORD=hunter2\n"
    )

    settings = PolybusSettings()
    acme = _AcmeSettings()

    assert settings.backend == "rabbitmq"
    assert settings.prefetch == 5
    assert acme.url == "acme://broker:1234"
    assert acme.password.get_secret_value() == "hunter2"


def test_environment_wins_over_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("POLYBUS_ACME__POOL_SIZE=2\n")
    monkeypatch.setenv("POLYBUS_ACME__POOL_SIZE", "9")

    assert _AcmeSettings().pool_size == 9


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYBUS_ACME__PASSWORD", "hunter2")

    acme = _AcmeSettings()

    assert "hunter2" not in repr(acme)
    assert "hunter2" not in str(acme)
    assert "hunter2" not in str(acme.public_dict())


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("POLYBUS_RETRY__MAX_ATTEMPTS", "0"),
        ("POLYBUS_PREFETCH", "none"),
        ("POLYBUS_START_POSITION", "middle"),
        ("POLYBUS_DEFAULT_PARTITIONS", "0"),
    ],
)
def test_bad_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError):
        PolybusSettings()
