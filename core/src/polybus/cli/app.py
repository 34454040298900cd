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
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from polybus.bus import EventBus
from polybus.cli.bench import run_bench
from polybus.cli.corpus import read_corpus, sample_corpus_path
from polybus.cli.replay import GROUPS, ReplayReport, run_replay
from polybus.dlq import DeadLetterQueue
from polybus.errors import PolybusError, SerializationError
from polybus.factory import create_event_bus, read_settings
from polybus.message import EventMessage
from polybus.registry import default_registry
from polybus.settings import PolybusSettings
from polybus.types import ContextValue, DLQMessage

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
    ),
]


def _settings(backend: str | None, **overrides: Any) -> PolybusSettings:
    with _reported_errors():
        settings = read_settings(PolybusSettings)
    update = {k: v for k, v in overrides.items() if v is not None}
    if backend:
        update["backend"] = backend
    if not update:
        return settings
    return PolybusSettings.model_validate({**settings.model_dump(), **update})


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


def _on_bus(backend: str | None, work: Callable[[EventBus], Awaitable[T]]) -> T:
    """Run ``work`` on a started bus of the chosen backend, reporting errors."""
    settings = _settings(backend)

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
        gaps = [f"no {clause}" for clause in caps.limitations]
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
        value: ContextValue = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    return value


def _parse_headers(pairs: list[str]) -> dict[str, ContextValue]:
    headers: dict[str, ContextValue] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"header {pair!r} is not NAME=VALUE")
        headers[name] = _header_value(raw)
    return headers


def _ndjson_messages(topic: str, lines: Iterator[str]) -> Iterator[EventMessage]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SerializationError(f"line {number}: not JSON: {exc}") from exc
        if not isinstance(record, dict) or "value" not in record:
            raise SerializationError(f"line {number}: expected an object with 'value'")

        value = record["value"]
        body = value if isinstance(value, str) else json.dumps(value)
        yield EventMessage(
            topic=topic,
            value=body.encode(),
            key=_optional_bytes(record.get("key")),
            headers=record.get("headers") or {},
            correlation_id=record.get("correlation_id"),
        )


def _optional_bytes(value: object) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SerializationError(f"a key is a string, got {value!r}")
    return value.encode()


@app.command()
def publish(
    topic: str,
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
    headers = _parse_headers(header or [])

    if values:
        lines: Iterator[str] = iter(values)
    elif file is not None and str(file) != "-":
        try:
            lines = iter(file.read_text(encoding="utf-8").splitlines())
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {file}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise typer.BadParameter(f"{file} is not UTF-8 text: {exc}") from exc
    else:
        try:
            lines = iter(sys.stdin.read().splitlines())
        except UnicodeError as exc:
            raise typer.BadParameter(
                f"standard input is not UTF-8 text: {exc}"
            ) from exc

    if ndjson:
        with _reported_errors():
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

    count = _on_bus(backend, send)
    err.print(f"published {count} message(s) to {topic}", highlight=False)


# -- consume ---------------------------------------------------------------------


def _as_json(message: EventMessage) -> dict[str, Any]:
    record: dict[str, Any] = {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": message.key.decode("utf-8", "replace") if message.key else None,
        "headers": message.headers,
        "message_id": str(message.message_id),
        "correlation_id": str(message.correlation_id or "") or None,
        "causation_id": str(message.causation_id or "") or None,
        "timestamp": message.timestamp.isoformat(),
    }
    try:
        record["value"] = message.value.decode("utf-8")
    except UnicodeDecodeError:
        record["value_base64"] = base64.b64encode(message.value).decode()
    return record


@app.command()
def consume(
    topic: str,
    group: Annotated[
        str | None, typer.Option("--group", "-g", help="Consumer group.")
    ] = None,
    from_beginning: Annotated[
        bool, typer.Option(help="A new group starts at the oldest message.")
    ] = False,
    max_messages: Annotated[
        int | None, typer.Option("--max", "-n", help="Stop after N messages.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop after this many seconds.")
    ] = None,
    backend: BackendOption = None,
) -> None:
    """Print messages of a topic as JSON lines."""
    start = "earliest" if from_beginning else None

    async def receive() -> int:
        done = asyncio.Event()
        count = 0

        async def handler(
            message: EventMessage, context: dict[str, ContextValue]
        ) -> None:
            nonlocal count
            if done.is_set():
                await message.nack(requeue=True)
                return
            print(json.dumps(_as_json(message)), flush=True)
            count += 1
            if max_messages is not None and count >= max_messages:
                done.set()

        settings = _settings(backend, start_position=start)
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

    for name in _on_bus(backend, lambda bus: bus.list_topics()):
        out.print(name, highlight=False)


@topics_app.command("create")
def topics_create(
    topic: str,
    partitions: Annotated[int, typer.Option("--partitions", "-p", min=1)] = 1,
    backend: BackendOption = None,
) -> None:
    """Create a topic."""

    created = _on_bus(backend, lambda bus: bus.create_topic(topic, partitions))
    out.print(f"{topic}: {'created' if created else 'already exists'}")


@topics_app.command("delete")
def topics_delete(topic: str, backend: BackendOption = None) -> None:
    """Delete a topic with its messages and groups."""

    deleted = _on_bus(backend, lambda bus: bus.delete_topic(topic))
    out.print(f"{topic}: {'deleted' if deleted else 'did not exist'}")


@topics_app.command("info")
def topics_info(topic: str, backend: BackendOption = None) -> None:
    """Partitions, groups and size of a topic."""

    info = _on_bus(backend, lambda bus: bus.get_topic_info(topic))
    if info is None:
        err.print(f"topic {topic!r} does not exist", highlight=False)
        raise typer.Exit(code=1)

    described = {
        "name": info.name,
        "partition_count": info.partition_count,
        "created_at": info.created_at.isoformat() if info.created_at else None,
        "message_count": info.message_count,
        "consumer_groups": list(info.consumer_groups),
        "config": info.config,
    }
    print(json.dumps(described, indent=2))


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
        "message": _as_json(original),
    }


@dlq_app.command("list")
def dlq_list(
    topic: str,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    backend: BackendOption = None,
) -> None:
    """Dead letters of TOPIC not yet retried or cleared."""

    found = _on_bus(
        backend, lambda bus: DeadLetterQueue(bus).get_dlq_messages(topic, limit)
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
def dlq_show(topic: str, dlq_message_id: str, backend: BackendOption = None) -> None:
    """One dead letter of TOPIC as JSON, with its stack trace."""

    letters = _on_bus(
        backend,
        lambda bus: DeadLetterQueue(bus).get_dlq_messages(topic, limit=1_000_000),
    )
    for letter in letters:
        if letter.dlq_message_id == dlq_message_id:
            print(json.dumps(_letter_json(letter), indent=2))
            print(letter.stack_trace)
            return

    err.print(f"no open dead letter {dlq_message_id!r} for {topic}", highlight=False)
    raise typer.Exit(code=1)


@dlq_app.command("retry")
def dlq_retry(topic: str, dlq_message_id: str, backend: BackendOption = None) -> None:
    """Publish a dead letter's original to TOPIC again."""

    retried = _on_bus(
        backend, lambda bus: DeadLetterQueue(bus).retry_failed_message(dlq_message_id)
    )
    if not retried:
        err.print(f"{dlq_message_id} was already retried or cleared", highlight=False)
        raise typer.Exit(code=1)
    out.print(f"{dlq_message_id}: republished to {topic}", highlight=False)


@dlq_app.command("clear")
def dlq_clear(
    topic: str,
    older_than_hours: Annotated[int, typer.Option(min=0)] = 0,
    backend: BackendOption = None,
) -> None:
    """Clear dead letters of TOPIC older than the given age."""

    cleared = _on_bus(
        backend,
        lambda bus: DeadLetterQueue(bus).clear_dlq_messages(topic, older_than_hours),
    )
    out.print(f"cleared {cleared} dead letter(s) of {topic}", highlight=False)


@dlq_app.command("analyze")
def dlq_analyze(
    topic: str,
    hours: Annotated[int, typer.Option(min=1)] = 24,
    backend: BackendOption = None,
) -> None:
    """Failure patterns of TOPIC's dead letters, as tables."""

    analysis = _on_bus(
        backend, lambda bus: DeadLetterQueue(bus).analyze_failure_patterns(topic, hours)
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
        typer.Argument(help="NDJSON corpus (.gz ok); the GitHub sample if omitted."),
    ] = None,
    partitions: Annotated[int, typer.Option(min=1)] = 3,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for groups.")] = 120,
    topic_prefix: Annotated[str, typer.Option()] = "replay.github",
    keep_topics: Annotated[
        bool, typer.Option(help="Keep the topics and dead letters afterwards.")
    ] = False,
    backend: BackendOption = None,
) -> None:
    """Replay a corpus of real events through consumer groups and summarise."""
    path = file or sample_corpus_path()
    with _reported_errors():
        events = list(read_corpus(path))
    settings = _settings(backend)
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
    messages: Annotated[int, typer.Option("--messages", "-n", min=1)] = 10_000,
    size: Annotated[int, typer.Option(help="Payload bytes.", min=0)] = 256,
    partitions: Annotated[int, typer.Option(min=1)] = 4,
    publishers: Annotated[int, typer.Option(min=1)] = 8,
    batch_size: Annotated[int, typer.Option(min=1)] = 500,
    backend: BackendOption = None,
) -> None:
    """Publish and consume throughput on the configured backend, in msgs/s."""
    settings = _settings(backend)

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
