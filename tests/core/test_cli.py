"""The polybus command line, on the in-memory backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polybus.cli.app import app
from polybus.cli.corpus import read_corpus, sample_corpus_path
from polybus.errors import SerializationError

runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POLYBUS_BACKEND", "in_memory")
    monkeypatch.setenv("POLYBUS_RETRY__BACKOFF_MS", "1")
    monkeypatch.chdir(tmp_path)


def test_sample_corpus_is_the_whole_github_set() -> None:
    events = list(read_corpus(sample_corpus_path()))

    assert len(events) == 329
    assert len({e.event for e in events}) == 58


def test_replay_settles_every_event_in_both_groups() -> None:
    events = list(read_corpus(sample_corpus_path()))
    without_repository = sum(
        1
        for e in events
        if not isinstance(e.payload.get("repository"), dict)
        or "full_name" not in e.payload["repository"]
    )

    result = runner.invoke(app, ["replay", "--timeout", "60"])

    assert result.exit_code == 0, result.output
    summary = result.stdout.splitlines()
    totals = next(line for line in summary if "58 topics" in line)
    numbers = [int(cell) for cell in totals.replace("│", " ").split() if cell.isdigit()]
    assert numbers == [
        58,
        329,
        329,
        329 - without_repository,
        without_repository,
        without_repository,
    ]
    assert "0 duplicates" in result.stdout


def test_replay_of_a_custom_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "events.ndjson"
    corpus.write_text(
        "\n".join(
            json.dumps(
                {
                    "event": "push",
                    "key": f"repo-{i % 2}",
                    "payload": {"repository": {"full_name": f"o/repo-{i % 2}"}},
                }
            )
            for i in range(10)
        )
    )

    result = runner.invoke(app, ["replay", str(corpus), "--partitions", "2"])

    assert result.exit_code == 0, result.output
    assert "published 10 events" in result.stdout
    assert "2 repositories counted" in result.stdout


def test_corpus_errors_name_the_line(tmp_path: Path) -> None:
    corpus = tmp_path / "bad.ndjson"
    corpus.write_text('{"event": "push", "payload": {}}\n{"event": 3}\n')

    with pytest.raises(SerializationError, match=r"bad\.ndjson:2"):
        list(read_corpus(corpus))


def test_plugins_lists_the_in_memory_backend() -> None:
    result = runner.invoke(app, ["plugins"])

    assert result.exit_code == 0, result.output
    assert "in_memory" in result.stdout
    assert "polybus-in-memory" in result.stdout


def test_unknown_backend_is_a_clear_error() -> None:
    result = runner.invoke(app, ["topics", "list", "--backend", "nope"])

    assert result.exit_code == 1
    assert "unknown event bus backend 'nope'" in result.stderr
    assert "in_memory" in result.stderr


def test_publish_reads_ndjson_from_stdin() -> None:
    lines = [
        json.dumps({"value": {"id": 1}, "key": "a", "headers": {"n": 1}}),
        json.dumps({"value": "plain"}),
    ]

    result = runner.invoke(
        app, ["publish", "orders", "--ndjson"], input="\n".join(lines)
    )

    assert result.exit_code == 0, result.output
    assert "published 2 message(s) to orders" in result.stderr


def test_publish_refuses_a_bad_topic() -> None:
    result = runner.invoke(app, ["publish", "bad topic", "value"])

    assert result.exit_code == 1
    assert "invalid topic name 'bad topic'" in result.stderr


def test_publish_refuses_bad_ndjson() -> None:
    result = runner.invoke(app, ["publish", "t", "--ndjson"], input="{nope\n")

    assert result.exit_code == 1
    assert "line 1: not JSON" in result.stderr


def test_consume_stops_at_its_timeout() -> None:
    result = runner.invoke(app, ["consume", "t", "--timeout", "0.2"])

    assert result.exit_code == 0, result.output
    assert "consumed 0 message(s) from t" in result.stderr


def test_topics_info_of_a_missing_topic_fails() -> None:
    result = runner.invoke(app, ["topics", "info", "missing"])

    assert result.exit_code == 1
    assert "does not exist" in result.stderr


def test_topics_create_reports_creation() -> None:
    result = runner.invoke(app, ["topics", "create", "orders", "-p", "3"])

    assert result.exit_code == 0, result.output
    assert "orders: created" in result.stdout


def test_bench_reports_rates() -> None:
    result = runner.invoke(app, ["bench", "-n", "500", "--partitions", "2"])

    assert result.exit_code == 0, result.output
    assert "publish" in result.stdout
    assert "msgs/s" in result.stdout


def test_dlq_list_of_a_topic_without_dead_letters_is_empty() -> None:
    result = runner.invoke(app, ["dlq", "list", "orders"])

    assert result.exit_code == 0, result.output
    assert "dead letters of orders" in result.stdout


def test_dlq_retry_of_an_unknown_id_fails_clearly() -> None:
    result = runner.invoke(app, ["dlq", "retry", "orders", "nope"])

    assert result.exit_code == 1
    assert "no dead letter with id 'nope'" in result.stderr


def test_dlq_analyze_prints_tables() -> None:
    result = runner.invoke(app, ["dlq", "analyze", "orders", "--hours", "2"])

    assert result.exit_code == 0, result.output
    assert "0 failure(s) of orders in the last 2h" in result.stdout
    assert "by exception" in result.stdout
