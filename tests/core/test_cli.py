"""The polybus command line, on the in-memory backend."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from polybus.bus import EventBus
from polybus.cli import app as cli_app
from polybus.cli.app import app
from polybus.cli.bench import run_bench
from polybus.cli.corpus import read_corpus, sample_corpus_path
from polybus.cli.jsonlines import decode_header, encode_header
from polybus.cli.replay import run_replay
from polybus.dlq import DeadLetterQueue
from polybus.errors import ConfigurationError, SerializationError
from polybus.message import EventMessage
from polybus.settings import PolybusSettings
from polybus.types import ContextValue
from polybus_in_memory import InMemoryBackend, InMemoryEventBus, InMemoryStore

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


def test_plugins_names_the_codecs_a_broker_compresses() -> None:
    result = runner.invoke(app, ["plugins"])

    assert result.exit_code == 0, result.output
    rows = result.stdout.split("polybus-kafka", 1)[1].split("polybus-", 1)[0]
    cells = " ".join(rows.replace("│", " ").split())
    assert "broker compresses gzip/lz4/snappy/zstd" in cells


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

    assert result.exit_code == 2
    assert "invalid topic name 'bad topic'" in _flat(result.stderr)


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


# -- helpers for the checks of bad input -------------------------------------------


@dataclass
class Broker:
    """One in-memory store shared by every bus the CLI makes in a test."""

    store: InMemoryStore = field(default_factory=InMemoryStore)
    buses_made: int = 0

    def bus(self, settings: PolybusSettings) -> EventBus:
        self.buses_made += 1
        return InMemoryEventBus(InMemoryBackend(store=self.store), settings)


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    """CLI commands of one test talk to one broker, like processes would."""
    shared = Broker()
    monkeypatch.setattr(cli_app, "create_event_bus", shared.bus)
    return shared


def _flat(text: str) -> str:
    """``text`` without the box of a usage error and its line breaks."""
    for border in "│╭╮╰╯─":
        text = text.replace(border, " ")
    return " ".join(text.split())


def _refused(result: Result, code: int = 2) -> str:
    """Check ``result`` failed cleanly with ``code``; its stderr, flattened."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return _flat(result.stderr)


def _strict_json(line: str) -> object:
    def refuse(constant: str) -> object:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


# -- 1. counts, limits and timeouts out of range -----------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["consume", "t", "--max", "0"],
            "'--max' / '-n': 0 is out of range; use an integer of at least 1",
        ),
        (
            ["consume", "t", "-n", "-3"],
            "-3 is out of range; use an integer of at least 1",
        ),
        (
            ["consume", "t", "--timeout", "-1"],
            "'--timeout': -1 is not a usable number of seconds; use a finite "
            "number greater than 0",
        ),
        (["consume", "t", "--timeout", "0"], "0 is not a usable number of seconds"),
        (["consume", "t", "--timeout", "nan"], "nan is not a usable number"),
        (["consume", "t", "--timeout", "inf"], "inf is not a usable number"),
        (["consume", "t", "--timeout", "-inf"], "-inf is not a usable number"),
        (
            ["dlq", "list", "t", "--limit", "0"],
            "'--limit': 0 is out of range; use an integer of at least 1",
        ),
        (
            ["dlq", "clear", "t", "--older-than-hours", "-1"],
            "-1 is out of range; use an integer from 0 to 876000",
        ),
        (["dlq", "analyze", "t", "--hours", "0"], "'--hours': 0 is out of range"),
        (
            ["dlq", "analyze", "t", "--hours", "99999999999999"],
            "99999999999999 is out of range; use an integer from 1 to 876000",
        ),
        (
            ["topics", "create", "t", "-p", "0"],
            "'--partitions' / '-p': 0 is out of range; use an integer from 1 to 10000",
        ),
        (["bench", "-n", "0"], "'--messages' / '-n': 0 is out of range"),
        (
            ["bench", "--size", "-1"],
            "'--size': -1 is out of range; use an integer of at least 0",
        ),
        (
            ["bench", "--partitions", "10001"],
            "10001 is out of range; use an integer from 1 to 10000",
        ),
        (["bench", "--publishers", "0"], "'--publishers': 0 is out of range"),
        (["bench", "--batch-size", "-2"], "'--batch-size': -2 is out of range"),
        (
            ["bench", "--size", "99999999999999999999"],
            "use an integer from 0 to 1048576 (the max_message_bytes setting",
        ),
        (["replay", "--partitions", "0"], "'--partitions': 0 is out of range"),
        (["replay", "--timeout", "-5"], "-5 is not a usable number of seconds"),
        (["replay", "--timeout", "nan"], "nan is not a usable number of seconds"),
        (["replay", "--timeout", "inf"], "inf is not a usable number of seconds"),
    ],
)
def test_out_of_range_values_are_usage_errors(
    broker: Broker, args: list[str], says: str
) -> None:
    stderr = _refused(runner.invoke(app, args))

    assert "Invalid value for" in stderr
    assert says in stderr
    assert broker.buses_made == 0
    assert broker.store.topics == {}


def test_consume_with_a_valid_max_stops_there(broker: Broker) -> None:
    published = runner.invoke(app, ["publish", "t", "a", "b", "c"])

    consumed = runner.invoke(
        app, ["consume", "t", "--from-beginning", "-n", "2", "--timeout", "30"]
    )

    assert published.exit_code == 0, published.output
    assert consumed.exit_code == 0, consumed.output
    values = [_strict_json(line) for line in consumed.stdout.splitlines()]
    assert [v["value"] for v in values if isinstance(v, dict)] == ["a", "b"]


def test_consume_in_a_group_leaves_what_it_did_not_print(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYBUS_RETRY__MAX_ATTEMPTS", "1")
    created = runner.invoke(app, ["topics", "create", "cm", "-p", "3"])
    published = runner.invoke(app, ["publish", "cm", *map(str, range(30))])
    assert (created.exit_code, published.exit_code) == (0, 0), published.output
    group = ["--group", "g", "--from-beginning", "--timeout", "30"]

    first = runner.invoke(app, ["consume", "cm", *group, "-n", "1"])
    rest = runner.invoke(app, ["consume", "cm", *group, "-n", "29"])

    assert (first.exit_code, rest.exit_code) == (0, 0), rest.output
    seen = [
        v["value"]
        for result in (first, rest)
        for v in map(_strict_json, result.stdout.splitlines())
        if isinstance(v, dict)
    ]
    assert sorted(seen, key=int) == [str(n) for n in range(30)]
    assert asyncio.run(_dead_letters(broker, "cm")) == []


async def _dead_letters(broker: Broker, topic: str) -> list[str]:
    async with broker.bus(PolybusSettings()) as bus:
        letters = await DeadLetterQueue(bus).get_dlq_messages(topic)
    return [letter.dlq_message_id for letter in letters]


# -- 2. headers that JSON cannot write ---------------------------------------------


def test_consume_writes_nan_and_infinite_headers_as_strict_json(
    broker: Broker,
) -> None:
    published = runner.invoke(
        app,
        [
            "publish",
            "t",
            "x",
            "-H",
            "nan=NaN",
            "-H",
            "up=Infinity",
            "-H",
            "down=-Infinity",
            "-H",
            'nested=[1.5, {"deep": NaN}]',
            "-H",
            'text="NaN"',
            "-H",
            "none=null",
        ],
    )

    consumed = runner.invoke(
        app, ["consume", "t", "--from-beginning", "--max", "1", "--timeout", "30"]
    )

    assert published.exit_code == 0, published.output
    assert consumed.exit_code == 0, consumed.output
    record = _strict_json(consumed.stdout.splitlines()[0])
    assert isinstance(record, dict)
    assert record["headers"] == {
        "nan": {"$numberDouble": "NaN"},
        "up": {"$numberDouble": "Infinity"},
        "down": {"$numberDouble": "-Infinity"},
        "nested": [1.5, {"deep": {"$numberDouble": "NaN"}}],
        "text": "NaN",
        "none": None,
    }


def test_consumed_lines_publish_again_with_the_same_headers(broker: Broker) -> None:
    runner.invoke(app, ["publish", "a", "x", "-H", "n=NaN", "-H", "i=-Infinity"])
    first = runner.invoke(
        app, ["consume", "a", "--from-beginning", "--max", "1", "--timeout", "30"]
    )

    again = runner.invoke(app, ["publish", "b", "--ndjson"], input=first.stdout)
    second = runner.invoke(
        app, ["consume", "b", "--from-beginning", "--max", "1", "--timeout", "30"]
    )

    assert again.exit_code == 0, again.output
    records = [_strict_json(r.stdout.splitlines()[0]) for r in (first, second)]
    assert all(isinstance(record, dict) for record in records)
    assert [r["headers"] for r in records if isinstance(r, dict)] == 2 * [
        {"n": {"$numberDouble": "NaN"}, "i": {"$numberDouble": "-Infinity"}}
    ]


def test_header_floats_decode_from_their_tagged_form() -> None:
    value: dict[str, ContextValue] = {
        "a": [math.inf, {"b": -math.inf}],
        "c": math.nan,
        "d": 2.5,
    }

    decoded = decode_header(json.loads(json.dumps(encode_header(value))))

    assert decoded["a"] == [math.inf, {"b": -math.inf}]
    assert math.isnan(decoded["c"])
    assert decoded["d"] == 2.5


def test_consume_writes_bytes_that_are_not_text_as_base64(broker: Broker) -> None:
    async def publish() -> None:
        async with broker.bus(PolybusSettings()) as bus:
            await bus.publish_event(
                "raw", EventMessage("raw", b"\x00\xff", key=b"\xfe")
            )

    asyncio.run(publish())
    consumed = runner.invoke(
        app, ["consume", "raw", "--from-beginning", "--max", "1", "--timeout", "30"]
    )

    record = _strict_json(consumed.stdout.splitlines()[0])
    assert isinstance(record, dict)
    assert "key" not in record
    assert "value" not in record
    assert base64.b64decode(record["key_base64"]) == b"\xfe"
    assert base64.b64decode(record["value_base64"]) == b"\x00\xff"


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("big=99999999999999999999999", "must be an integer within 64 bits"),
        ('tag={"$numberDouble": "soon"}', "does not hold a number as text"),
        ("=1", "is not NAME=VALUE"),
    ],
)
def test_publish_refuses_a_header_it_cannot_send(
    broker: Broker, header: str, says: str
) -> None:
    stderr = _refused(runner.invoke(app, ["publish", "t", "x", "-H", header]))

    assert "Invalid value for '--header'" in stderr
    assert says in stderr
    assert broker.buses_made == 0


def test_publish_refuses_an_ndjson_value_json_cannot_carry(broker: Broker) -> None:
    lines = '{"value": "fine"}\n{"value": {"x": NaN}}\n'

    stderr = _refused(runner.invoke(app, ["publish", "t", "--ndjson"], input=lines), 1)

    assert "line 2: 'value' holds NaN or Infinity" in stderr
    assert broker.buses_made == 0


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"value": 1, "key": 3}', "line 1: key must be a string or null, got 3"),
        ('{"value": 1, "headers": [1]}', "line 1: headers must be a dict"),
        ('{"value": 1, "correlation_id": "zz"}', "line 1: correlation_id must be"),
    ],
)
def test_publish_names_the_ndjson_line_of_a_bad_field(
    broker: Broker, line: str, says: str
) -> None:
    stderr = _refused(runner.invoke(app, ["publish", "t", "--ndjson"], input=line), 1)

    assert says in stderr
    assert broker.buses_made == 0


# -- 3. replay of a corpus without events ------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("content", ["", "\n   \n\n"])
def test_replay_of_a_corpus_without_events_finishes_at_once(
    broker: Broker, tmp_path: Path, content: str
) -> None:
    corpus = tmp_path / "nothing.ndjson"
    corpus.write_text(content)

    result = runner.invoke(app, ["replay", str(corpus), "--timeout", "3600"])

    assert result.exit_code == 0, result.output
    assert "no events to replay in nothing.ndjson" in result.stderr
    assert "published 0 events" in result.stdout
    assert "did not complete" not in result.output
    assert broker.buses_made == 0


@pytest.mark.timeout(60)
def test_run_replay_of_no_events_does_not_wait_for_its_timeout() -> None:
    async def replay() -> None:
        async with InMemoryEventBus() as bus:
            report = await run_replay(bus, [], timeout=3600)

        assert report.completed
        assert report.events == 0
        assert report.topics == {}
        assert report.total_seconds < 30

    asyncio.run(replay())


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan, math.inf])
def test_run_replay_refuses_a_timeout_it_cannot_wait(timeout: float) -> None:
    async def replay() -> None:
        async with InMemoryEventBus() as bus:
            with pytest.raises(ConfigurationError, match="timeout must be"):
                await run_replay(bus, [], timeout=timeout)

    asyncio.run(replay())


def test_run_bench_refuses_counts_below_one() -> None:
    async def bench() -> None:
        async with InMemoryEventBus() as bus:
            with pytest.raises(ConfigurationError, match="messages must be at least"):
                await run_bench(bus, messages=0)
            assert await bus.list_topics() == []

    asyncio.run(bench())


# -- 4. other bad input ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["consume", "bad topic"], "invalid topic name 'bad topic'"),
        (["topics", "create", ""], "invalid topic name '': it is empty"),
        (["topics", "info", ".."], "'.' and '..' are reserved"),
        (["dlq", "list", "bad topic"], "invalid topic name 'bad topic': it"),
        (["dlq", "retry", "a/b", "id"], "invalid topic name 'a/b'"),
        (["consume", "t", "--group", ""], "a consumer group name is empty"),
        (["consume", "t", "--backend", ""], "the backend name is empty"),
        (["replay", "--topic-prefix", "my prefix"], "invalid topic prefix"),
        (
            ["replay", "/no/such/corpus.ndjson"],
            "'/no/such/corpus.ndjson' does not exist",
        ),
        (
            ["publish", "t", "--file", "/no/such/file"],
            "Invalid value for '--file': cannot read /no/such/file",
        ),
        (["publish", "t", "v", "--file", "-"], "not both"),
        (["publish", "t", "--ndjson", "--key", "k"], "leave out --key and --header"),
    ],
)
def test_bad_arguments_are_usage_errors(
    broker: Broker, args: list[str], says: str
) -> None:
    stderr = _refused(runner.invoke(app, args, input=""))

    assert says in stderr
    assert broker.buses_made == 0


def test_replay_of_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    stderr = _refused(runner.invoke(app, ["replay", str(tmp_path)]))

    assert "is a directory" in stderr


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("junk.ndjson.gz", b"not gzip", "cannot read corpus"),
        ("latin.ndjson", b'{"event": "caf\xe9"}', "cannot read corpus"),
        ("bad.ndjson", b"{nope", "bad.ndjson:1: not JSON"),
        (
            "spaced.ndjson.gz",
            gzip.compress(b'{"event": "two words", "payload": {}}'),
            "event 'two words' cannot be replayed: invalid topic name",
        ),
    ],
)
def test_replay_of_an_unreadable_corpus_fails_cleanly(
    broker: Broker, tmp_path: Path, name: str, content: bytes, says: str
) -> None:
    corpus = tmp_path / name
    corpus.write_bytes(content)

    stderr = _refused(runner.invoke(app, ["replay", str(corpus)]), 1)

    assert says in stderr
    assert broker.buses_made == 0


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--backend", "nope"],
        ["bench", "--backend", "nope"],
        ["consume", "t", "--backend", "nope"],
        ["publish", "t", "x", "--backend", "nope"],
        ["dlq", "list", "t", "--backend", "nope"],
    ],
)
def test_an_unknown_backend_fails_before_anything_runs(
    broker: Broker, args: list[str]
) -> None:
    stderr = _refused(runner.invoke(app, args), 1)

    assert stderr.startswith("error: unknown event bus backend 'nope'")
    assert broker.buses_made == 0


def test_an_unknown_backend_from_the_environment_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLYBUS_BACKEND", "nope")

    stderr = _refused(runner.invoke(app, ["topics", "list"]), 1)

    assert "unknown event bus backend 'nope'" in stderr


def test_invalid_settings_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYBUS_RETRY__BACKOFF_MS", "soon")

    stderr = _refused(runner.invoke(app, ["consume", "t", "--timeout", "1"]), 1)

    assert "invalid settings: POLYBUS_RETRY__BACKOFF_MS" in stderr
