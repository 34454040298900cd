"""``polybus``: inspect plugins, move events and replay a corpus from a shell.

Every command works on the backend chosen by ``POLYBUS_BACKEND`` (or
``--backend``), with that backend's settings from its ``POLYBUS_<BACKEND>__*``
variables or a ``.env`` file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from polybus.bus import MAX_PARTITIONS, EventBus
from polybus.cli.bench import run_bench
from polybus.cli.corpus import CorpusEvent, read_corpus, sample_corpus_path
from polybus.cli.jsonlines import decode_header, dumps, encode_header
from polybus.cli.options import (
    MAX_HOURS,
    backend_name,
    group_name,
    int_range,
    optional_seconds,
    seconds,
    topic_name,
    topic_prefix,
)
from polybus.cli.replay import GROUPS, ReplayReport, run_replay
from polybus.dlq import DeadLetterQueue
from polybus.errors import (
    ConfigurationError,
    InvalidMessageError,
    InvalidTopicNameError,
    PolybusError,
    SerializationError,
)
from polybus.factory import create_event_bus, read_settings
from polybus.message import EventMessage
from polybus.registry import default_registry
from polybus.settings import PolybusSettings
from polybus.types import ContextValue, DLQMessage
from polybus.validation import validate_topic_name

__all__ = ["app", "main"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

app = typer.Typer(
    name="polybus",
    help="One async event bus over Kafka, Redpanda, Redis, RabbitMQ and memory.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="List, create, delete and describe topics.")
app.add_typer(topics_app, name="topics")
dlq_app = typer.Typer(help="Inspect, replay and clear dead letters of a topic.")
app.add_typer(dlq_app, name="dlq")

# Output that goes to a file or a pipe is not wrapped at 80 columns.
_PIPED_WIDTH = 200
out = Console(width=None if sys.stdout.isatty() else _PIPED_WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH)

BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        "-b",
        help="Backend name; overrides POLYBUS_BACKEND.",
        show_default=False,
        callback=backend_name,
    ),
]

TopicArgument = Annotated[
    str,
    typer.Argument(
        help="Topic: 1 to 249 characters of [A-Za-z0-9._-].",
        show_default=False,
        callback=topic_name,
    ),
]


def _settings(backend: str | None, **overrides: Any) -> PolybusSettings:
    """The core settings with the command's overrides, for an installed backend.

    The backend is looked up here, so an unknown name fails before a command
    prints or reads anything.
    """
    with _reported_errors():
        settings = read_settings(PolybusSettings)
        update = {k: v for k, v in overrides.items() if v is not None}
        if backend is not None:
            update["backend"] = backend
        if update:
            settings = _updated(settings, update)
        default_registry(strict=settings.strict_plugins).get(settings.backend)
    return settings


def _updated(settings: PolybusSettings, update: dict[str, Any]) -> PolybusSettings:
    try:
        return PolybusSettings.model_validate({**settings.model_dump(), **update})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None


@contextlib.contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn a polybus error into one red line and exit status 1."""
    try:
        yield
    except PolybusError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=1) from exc


def _run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with _reported_errors():
        return asyncio.run(factory())


def _on_bus(settings: PolybusSettings, work: Callable[[EventBus], Awaitable[T]]) -> T:
    """Run ``work`` on a started bus of the chosen backend, reporting errors."""

    async def run() -> T:
        async with create_event_bus(settings) as bus:
            return await work(bus)

    return _run(run)


# -- plugins ---------------------------------------------------------------------


@app.command()
def plugins() -> None:
    """Installed backends, with their capabilities, and plugins that failed."""
    registry = default_registry()

    table = Table(title="polybus backends")
    for column in ("backend", "distribution", "version", "capabilities", "about"):
        table.add_column(column)

    for installed in registry.backends():
        caps = installed.spec.capabilities
        flags = [
            name
            for name in (
                "persistent",
                "shared_across_processes",
                "partition_order",
                "redelivers_unacked",
                "earliest_start",
                "browse",
            )
            if getattr(caps, name)
        ]
        if caps.native_compression:
            codecs = "/".join(sorted(caps.native_compression))
            flags.append(f"broker compresses {codecs}")
        # Limitations explain either a capability declared false or a caveat
        # of something the backend does; only the former is a "no".
        missing = {
            clause
            for clause in caps.limitations
            if getattr(caps, clause.replace(" ", "_"), None) is False
        }
        gaps = [f"no {clause}" for clause in sorted(missing)]
        caveats = sorted(set(caps.limitations) - missing)
        if caveats:
            gaps.append(f"limits: {'; '.join(caveats)}")
        table.add_row(
            installed.spec.name,
            installed.distribution,
            installed.version,
            ", ".join(flags + gaps),
            installed.spec.description,
        )
    out.print(table)

    for error in registry.errors:
        err.print(f"[yellow]failed to load:[/] {error}", highlight=False)
    for conflict in registry.conflicts:
        err.print(f"[yellow]conflict:[/] {conflict}", highlight=False)


# -- publish ---------------------------------------------------------------------


def _header_value(raw: str) -> ContextValue:
    try:
        value: ContextValue = decode_header(json.loads(raw))
    except json.JSONDecodeError:
        return raw
    return value


def _parse_headers(pairs: list[str]) -> dict[str, ContextValue]:
    headers: dict[str, ContextValue] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(
                f"header {pair!r} is not NAME=VALUE", param_hint="'--header'"
            )
        try:
            headers[name] = _header_value(raw)
            # The message checks every header value the envelope can carry.
            EventMessage(topic="-", value=b"", headers={name: headers[name]})
        except SerializationError as exc:
            raise typer.BadParameter(
                f"header {pair!r}: {exc}", param_hint="'--header'"
            ) from exc
    return headers


def _ndjson_messages(topic: str, lines: Iterable[str]) -> Iterator[EventMessage]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield _ndjson_message(topic, line)
        except SerializationError as exc:
            raise SerializationError(f"line {number}: {exc}") from exc


def _ndjson_message(topic: str, line: str) -> EventMessage:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SerializationError(f"not JSON: {exc}") from exc
    if not isinstance(record, dict) or "value" not in record:
        raise SerializationError("expected an object with 'value'")

    value = record["value"]
    try:
        body = value if isinstance(value, str) else dumps(value)
    except ValueError:
        raise SerializationError(
            "'value' holds NaN or Infinity, which JSON cannot carry; send the "
            "value as a string"
        ) from None
    return EventMessage(
        topic=topic,
        value=body.encode(),
        key=_optional_bytes(record.get("key")),
        headers=decode_header(record.get("headers") or {}),
        correlation_id=record.get("correlation_id"),
    )


def _optional_bytes(value: object) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidMessageError("key", value, "a string or null")
    return value.encode()


@app.command()
def publish(
    topic: TopicArgument,
    values: Annotated[
        list[str] | None, typer.Argument(help="Values to publish, one message each.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Read values from a file ('-' is stdin)."),
    ] = None,
    ndjson: Annotated[
        bool,
        typer.Option(help="Each line is {value, key?, headers?, correlation_id?}."),
    ] = False,
    key: Annotated[str | None, typer.Option("--key", "-k")] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="NAME=VALUE; VALUE is JSON if it parses."),
    ] = None,
    backend: BackendOption = None,
) -> None:
    """Publish messages: from arguments, a file, or stdin, one per line."""
    if values and file is not None:
        raise typer.BadParameter(
            "give values as arguments or --file, not both", param_hint="'--file'"
        )
    if ndjson and (key is not None or header):
        raise typer.BadParameter(
            "--ndjson lines carry their own key and headers; leave out --key and "
            "--header",
            param_hint="'--ndjson'",
        )
    if not values and file is None and sys.stdin.isatty():
        raise typer.BadParameter(
            "nothing to publish: give values as arguments, --file FILE, or pipe "
            "them on standard input",
            param_hint="'[VALUES]...'",
        )
    headers = _parse_headers(header or [])

    settings = _settings(backend)
    lines = _input_lines(values, file)

    with _reported_errors():
        if ndjson:
            messages = list(_ndjson_messages(topic, lines))
        else:
            messages = [
                EventMessage(
                    topic=topic,
                    value=line.encode(),
                    key=key.encode() if key is not None else None,
                    headers=headers,
                )
                for line in lines
            ]

    async def send(bus: EventBus) -> int:
        for message in messages:
            await bus.publish_event(topic, message)
        return len(messages)

    count = _on_bus(settings, send)
    err.print(f"published {count} message(s) to {topic}", highlight=False)


def _input_lines(values: list[str] | None, file: Path | None) -> list[str]:
    if values:
        return values
    if file is not None and str(file) != "-":
        try:
            return file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise typer.BadParameter(
                f"cannot read {file}: {exc.strerror}", param_hint="'--file'"
            ) from exc
        except UnicodeDecodeError as exc:
            raise typer.BadParameter(
                f"{file} is not UTF-8 text: {exc}", param_hint="'--file'"
            ) from exc
    try:
        return sys.stdin.read().splitlines()
    except UnicodeError as exc:
        raise typer.BadParameter(
            f"standard input is not UTF-8 text: {exc}", param_hint="'--file'"
        ) from exc


# -- consume ---------------------------------------------------------------------


def _as_json(message: EventMessage) -> dict[str, Any]:
    """A message as a JSON object; see the module :mod:`polybus.cli.jsonlines`.

    A key or value that is not UTF-8 text is written as ``key_base64`` or
    ``value_base64`` instead, and a NaN or infinite header float as
    ``{"$numberDouble": ...}``.
    """
    record: dict[str, Any] = {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": None,
        "headers": encode_header(message.headers),
        "message_id": str(message.message_id),
        "correlation_id": str(message.correlation_id or "") or None,
        "causation_id": str(message.causation_id or "") or None,
        "timestamp": message.timestamp.isoformat(),
    }
    if message.key is not None:
        _put_text(record, "key", message.key)
    _put_text(record, "value", message.value)
    return record


def _put_text(record: dict[str, Any], name: str, data: bytes) -> None:
    try:
        record[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        record.pop(name, None)
        record[f"{name}_base64"] = base64.b64encode(data).decode()


_CONSUME_DRAIN_MS: Final = 1_000
"""How long ``consume`` lets handlers finish when it stops; those holding a
message past ``--max`` are then cancelled and their messages stay unsettled."""


@app.command()
def consume(
    topic: TopicArgument,
    group: Annotated[
        str | None,
        typer.Option("--group", "-g", help="Consumer group.", callback=group_name),
    ] = None,
    from_beginning: Annotated[
        bool, typer.Option(help="A new group starts at the oldest message.")
    ] = False,
    max_messages: Annotated[
        int | None,
        typer.Option(
            "--max",
            "-n",
            help="Stop after N messages (1 or more).",
            callback=int_range(1),
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Stop after this many seconds (finite, above 0).",
            callback=optional_seconds,
        ),
    ] = None,
    backend: BackendOption = None,
) -> None:
    """Print messages of a topic as JSON lines."""
    start = "earliest" if from_beginning else None
    settings = _settings(
        backend, start_position=start, drain_timeout_ms=_CONSUME_DRAIN_MS
    )

    async def receive() -> int:
        done = asyncio.Event()
        count = 0

        async def handler(
            message: EventMessage, context: dict[str, ContextValue]
        ) -> None:
            nonlocal count
            if done.is_set():
                # Past --max: hold the message, unsettled, until the closing
                # bus cancels this call, so it goes back to the group as it
                # came. A nack would count as a failed attempt and could
                # dead-letter a message nobody looked at.
                await asyncio.Event().wait()
            print(dumps(_as_json(message)), flush=True)
            count += 1
            if max_messages is not None and count >= max_messages:
                done.set()

        async with create_event_bus(settings) as bus:
            await bus.subscribe_to_topic(topic, handler, group_id=group)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=timeout)
        return count

    count = _run(receive)
    err.print(f"consumed {count} message(s) from {topic}", highlight=False)


# -- topics ----------------------------------------------------------------------


@topics_app.command("list")
def topics_list(backend: BackendOption = None) -> None:
    """Names of every topic."""

    for name in _on_bus(_settings(backend), lambda bus: bus.list_topics()):
        out.print(name, highlight=False)


@topics_app.command("create")
def topics_create(
    topic: TopicArgument,
    partitions: Annotated[
        int,
        typer.Option(
            "--partitions",
            "-p",
            help=f"Partitions (1 to {MAX_PARTITIONS}).",
            callback=int_range(1, MAX_PARTITIONS),
        ),
    ] = 1,
    backend: BackendOption = None,
) -> None:
    """Create a topic."""

    created = _on_bus(
        _settings(backend), lambda bus: bus.create_topic(topic, partitions)
    )
    out.print(f"{topic}: {'created' if created else 'already exists'}")


@topics_app.command("delete")
def topics_delete(topic: TopicArgument, backend: BackendOption = None) -> None:
    """Delete a topic with its messages and groups."""

    deleted = _on_bus(_settings(backend), lambda bus: bus.delete_topic(topic))
    out.print(f"{topic}: {'deleted' if deleted else 'did not exist'}")


@topics_app.command("info")
def topics_info(topic: TopicArgument, backend: BackendOption = None) -> None:
    """Partitions, groups and size of a topic."""

    info = _on_bus(_settings(backend), lambda bus: bus.get_topic_info(topic))
    if info is None:
        err.print(f"topic {topic!r} does not exist", highlight=False)
        raise typer.Exit(code=1)

    described = {
        "name": info.name,
        "partition_count": info.partition_count,
        "created_at": info.created_at.isoformat() if info.created_at else None,
        "message_count": info.message_count,
        "consumer_groups": list(info.consumer_groups),
        "config": encode_header(info.config),
    }
    print(dumps(described, indent=2))


# -- dead letters ----------------------------------------------------------------


def _letter_json(letter: DLQMessage) -> dict[str, Any]:
    original: EventMessage = letter.original_message
    return {
        "dlq_message_id": letter.dlq_message_id,
        "original_topic": letter.original_topic,
        "original_partition": letter.original_partition,
        "original_offset": letter.original_offset,
        "consumer_group": letter.consumer_group,
        "exception_type": letter.exception_type,
        "failure_reason": letter.failure_reason,
        "attempt_count": letter.attempt_count,
        "first_failure_at": letter.first_failure_at.isoformat(),
        "last_failure_at": letter.last_failure_at.isoformat(),
        "replay_count": letter.replay_count,
        "payload_omitted": letter.payload_omitted,
        "original_size": letter.original_size,
        "message": _as_json(original),
    }


@dlq_app.command("list")
def dlq_list(
    topic: TopicArgument,
    limit: Annotated[
        int,
        typer.Option(help="Show at most N (1 or more).", callback=int_range(1)),
    ] = 100,
    backend: BackendOption = None,
) -> None:
    """Dead letters of TOPIC not yet retried or cleared."""

    found = _on_bus(
        _settings(backend),
        lambda bus: DeadLetterQueue(bus).get_dlq_messages(topic, limit),
    )
    table = Table(title=f"dead letters of {topic}")
    for column in ("id", "last failure", "group", "exception", "reason", "tries"):
        table.add_column(column)
    for letter in found:
        table.add_row(
            letter.dlq_message_id,
            letter.last_failure_at.strftime("%Y-%m-%d %H:%M:%S"),
            letter.consumer_group or "-",
            letter.exception_type,
            letter.failure_reason,
            str(letter.attempt_count),
        )
    out.print(table)


@dlq_app.command("show")
def dlq_show(
    topic: TopicArgument, dlq_message_id: str, backend: BackendOption = None
) -> None:
    """One dead letter of TOPIC as JSON, with its stack trace."""

    letters = _on_bus(
        _settings(backend),
        lambda bus: DeadLetterQueue(bus).get_dlq_messages(topic, limit=1_000_000),
    )
    for letter in letters:
        if letter.dlq_message_id == dlq_message_id:
            print(dumps(_letter_json(letter), indent=2))
            print(letter.stack_trace)
            return

    err.print(f"no open dead letter {dlq_message_id!r} for {topic}", highlight=False)
    raise typer.Exit(code=1)


@dlq_app.command("retry")
def dlq_retry(
    topic: TopicArgument, dlq_message_id: str, backend: BackendOption = None
) -> None:
    """Publish a dead letter's original to TOPIC again."""

    retried = _on_bus(
        _settings(backend),
        lambda bus: DeadLetterQueue(bus).retry_failed_message(
            dlq_message_id, topic=topic
        ),
    )
    if not retried:
        err.print(f"{dlq_message_id} was already retried or cleared", highlight=False)
        raise typer.Exit(code=1)
    out.print(f"{dlq_message_id}: republished to {topic}", highlight=False)


@dlq_app.command("clear")
def dlq_clear(
    topic: TopicArgument,
    older_than_hours: Annotated[
        int,
        typer.Option(
            help=f"Only those older than this many hours (0 to {MAX_HOURS}).",
            callback=int_range(0, MAX_HOURS),
        ),
    ] = 0,
    backend: BackendOption = None,
) -> None:
    """Clear dead letters of TOPIC older than the given age."""

    cleared = _on_bus(
        _settings(backend),
        lambda bus: DeadLetterQueue(bus).clear_dlq_messages(topic, older_than_hours),
    )
    out.print(f"cleared {cleared} dead letter(s) of {topic}", highlight=False)


@dlq_app.command("analyze")
def dlq_analyze(
    topic: TopicArgument,
    hours: Annotated[
        int,
        typer.Option(
            help=f"The last this many hours (1 to {MAX_HOURS}).",
            callback=int_range(1, MAX_HOURS),
        ),
    ] = 24,
    backend: BackendOption = None,
) -> None:
    """Failure patterns of TOPIC's dead letters, as tables."""

    analysis = _on_bus(
        _settings(backend),
        lambda bus: DeadLetterQueue(bus).analyze_failure_patterns(topic, hours),
    )
    out.print(
        f"{analysis.total_failures} failure(s) of {topic} in the last {hours}h; "
        f"groups: {', '.join(analysis.affected_groups) or '-'}; "
        f"replayed: {analysis.retried}",
        highlight=False,
    )
    for title, rows in (
        ("by exception", sorted(analysis.by_exception_type.items())),
        ("by hour", sorted(analysis.by_hour.items())),
        ("most common reasons", list(analysis.top_error_messages)),
        ("retry outcomes", sorted(analysis.retry_outcomes.items())),
    ):
        table = Table(title=title)
        table.add_column("what")
        table.add_column("count", justify="right")
        for what, count in rows:
            table.add_row(what, str(count))
        out.print(table)


# -- replay ----------------------------------------------------------------------


@app.command()
def replay(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="NDJSON corpus (.gz ok); the GitHub sample if omitted.",
            exists=True,
            file_okay=True,
            dir_okay=False,
            readable=True,
            show_default=False,
        ),
    ] = None,
    partitions: Annotated[
        int,
        typer.Option(
            help=f"Partitions per topic (1 to {MAX_PARTITIONS}).",
            callback=int_range(1, MAX_PARTITIONS),
        ),
    ] = 3,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for groups (finite, above 0).", callback=seconds
        ),
    ] = 120,
    topic_prefix: Annotated[
        str,
        typer.Option(
            help="Topics are PREFIX.EVENT; the prefix follows the topic name rule.",
            callback=topic_prefix,
        ),
    ] = "replay.github",
    keep_topics: Annotated[
        bool, typer.Option(help="Keep the topics and dead letters afterwards.")
    ] = False,
    backend: BackendOption = None,
) -> None:
    """Replay a corpus of real events through consumer groups and summarise."""
    path = file or sample_corpus_path()
    with _reported_errors():
        events = list(read_corpus(path))
        _check_topics(path, events, topic_prefix)
    settings = _settings(backend)
    if not events:
        # Nothing to publish or wait for: report at once, without a broker.
        err.print(f"no events to replay in {path.name}", highlight=False)
        _print_report(_empty_report(settings.backend))
        return

    err.print(
        f"replaying {len(events)} events from {path.name} on backend "
        f"[bold]{settings.backend}[/] through groups {', '.join(GROUPS)}"
    )

    async def job() -> ReplayReport:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("settled", total=len(events) * len(GROUPS))
            async with create_event_bus(settings) as bus:
                return await run_replay(
                    bus,
                    events,
                    topic_prefix=topic_prefix,
                    partitions=partitions,
                    timeout=timeout,
                    keep_topics=keep_topics,
                    on_progress=lambda n: progress.advance(task, n),
                )

    report = _run(job)
    _print_report(report)
    if not report.completed:
        raise typer.Exit(code=1)


def _check_topics(path: Path, events: list[CorpusEvent], prefix: str) -> None:
    """Refuse a corpus event whose topic ``<prefix>.<event>`` is not legal."""
    for event in sorted({e.event for e in events}):
        try:
            validate_topic_name(f"{prefix}.{event}")
        except InvalidTopicNameError as exc:
            raise SerializationError(
                f"{path.name}: event {event!r} cannot be replayed: {exc}"
            ) from exc


def _empty_report(backend: str) -> ReplayReport:
    return ReplayReport(
        backend=backend,
        events=0,
        topics={},
        publish_seconds=0.0,
        total_seconds=0.0,
        completed=True,
        repositories=Counter(),
    )


def _print_report(report: ReplayReport) -> None:
    prefix = _common_prefix(list(report.topics))
    table = Table(title=f"replay on {report.backend}")
    table.add_column(f"topic ({prefix}*)" if prefix else "topic")
    table.add_column("published", justify="right")
    for group in GROUPS:
        table.add_column(f"{group} ok", justify="right")
    table.add_column("failed attempts", justify="right")
    table.add_column("dead letters", justify="right")

    for topic, counts in report.topics.items():
        table.add_row(
            topic.removeprefix(prefix),
            str(counts.published),
            *(str(counts.handled[group]) for group in GROUPS),
            str(counts.failed_attempts),
            str(counts.dead_lettered),
        )

    published = sum(t.published for t in report.topics.values())
    dead = sum(t.dead_lettered for t in report.topics.values())
    failed = sum(t.failed_attempts for t in report.topics.values())
    duplicates = sum(t.duplicates for t in report.topics.values())
    table.add_section()
    table.add_row(
        f"{len(report.topics)} topics",
        str(published),
        *(str(sum(t.handled[g] for t in report.topics.values())) for g in GROUPS),
        str(failed),
        str(dead),
    )
    out.print(table)
    out.print(
        f"published {report.events} events in {report.publish_seconds:.2f}s "
        f"({report.publish_rate:,.0f}/s); {report.settled} deliveries settled in "
        f"{report.total_seconds:.2f}s ({report.end_to_end_rate:,.0f}/s); "
        f"{failed} failed attempts; {dead} dead letters; {duplicates} duplicates; "
        f"{len(report.repositories)} repositories counted",
        highlight=False,
    )
    if not report.completed:
        err.print("[bold red]replay did not complete before the timeout[/]")


def _common_prefix(topics: list[str]) -> str:
    if len(topics) < 2:
        return ""
    first, last = min(topics), max(topics)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    return first[: first.rfind(".", 0, size) + 1]


# -- bench -----------------------------------------------------------------------


@app.command()
def bench(
    messages: Annotated[
        int,
        typer.Option(
            "--messages",
            "-n",
            help="Messages per round (1 or more).",
            callback=int_range(1),
        ),
    ] = 10_000,
    size: Annotated[
        int,
        typer.Option(
            help="Payload bytes (0 up to the max_message_bytes setting).",
            callback=int_range(0),
        ),
    ] = 256,
    partitions: Annotated[
        int,
        typer.Option(
            help=f"Partitions (1 to {MAX_PARTITIONS}).",
            callback=int_range(1, MAX_PARTITIONS),
        ),
    ] = 4,
    publishers: Annotated[
        int,
        typer.Option(help="Concurrent publishers (1 or more).", callback=int_range(1)),
    ] = 8,
    batch_size: Annotated[
        int,
        typer.Option(help="Messages per batch (1 or more).", callback=int_range(1)),
    ] = 500,
    backend: BackendOption = None,
) -> None:
    """Publish and consume throughput on the configured backend, in msgs/s."""
    settings = _settings(backend)
    if size > settings.max_message_bytes:
        raise typer.BadParameter(
            f"{size} is out of range; use an integer from 0 to "
            f"{settings.max_message_bytes} (the max_message_bytes setting, "
            "POLYBUS_MAX_MESSAGE_BYTES)",
            param_hint="'--size'",
        )

    async def measure() -> Any:
        async with create_event_bus(settings) as bus:
            return await run_bench(
                bus,
                messages=messages,
                payload_bytes=size,
                partitions=partitions,
                publishers=publishers,
                batch_size=batch_size,
            )

    result = _run(measure)
    out.print(
        f"{result.backend}: {result.messages} messages of {result.payload_bytes} "
        f"bytes, {result.partitions} partitions, {result.publishers} publishers\n"
        f"  publish_event {result.publish_rate:>12,.0f} msgs/s "
        f"({result.publish_seconds:.2f}s)\n"
        f"  publish_batch {result.batch_publish_rate:>12,.0f} msgs/s "
        f"({result.batch_publish_seconds:.2f}s, batches of {result.batch_size}, "
        f"{result.batch_publish_rate / result.publish_rate:.1f}x)\n"
        f"  consume       {result.consume_rate:>12,.0f} msgs/s "
        f"({result.consume_seconds:.2f}s)",
        highlight=False,
    )


def main() -> None:
    """Entry point of the ``polybus`` command."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    app()
