"""Reading event corpora: NDJSON files of ``{"event", "action", "key", "payload"}``.

The GitHub webhook sample shipped with polybus (``polybus/samples``) is one; any
file of the same shape, gzipped or not, can be replayed.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from polybus.errors import SerializationError

__all__ = ["CorpusEvent", "read_corpus", "sample_corpus_path"]

logger = logging.getLogger(__name__)

_SAMPLE = "github-webhooks.ndjson.gz"


@dataclass(frozen=True, slots=True)
class CorpusEvent:
    """One event of a corpus."""

    event: str
    """Event type, e.g. ``pull_request``."""
    action: str | None
    """Action within the type, e.g. ``opened``."""
    key: str | None
    """Partition key (repository, organisation or sender)."""
    payload: dict[str, Any]
    """The event body."""

    def body(self) -> bytes:
        """The payload as compact JSON bytes."""
        return json.dumps(self.payload, separators=(",", ":")).encode()


def sample_corpus_path() -> Path:
    """Path of the GitHub webhook sample shipped with polybus."""
    sample = resources.files("polybus.samples").joinpath(_SAMPLE)
    return Path(str(sample))


def read_corpus(path: Path) -> Iterator[CorpusEvent]:
    """Yield the events of an NDJSON corpus, gzipped when it ends in ``.gz``.

    :raises SerializationError: naming the line that is not a corpus event.
    """
    opener = gzip.open if path.suffix == ".gz" else open

    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                yield _parse(path, number, line)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise SerializationError(f"cannot read corpus {path}: {exc}") from exc


def _parse(path: Path, number: int, line: str) -> CorpusEvent:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SerializationError(f"{path}:{number}: not JSON: {exc}") from exc

    if not isinstance(record, dict):
        raise SerializationError(f"{path}:{number}: expected a JSON object")

    event = record.get("event")
    payload = record.get("payload")
    if not isinstance(event, str) or not isinstance(payload, dict):
        raise SerializationError(
            f"{path}:{number}: a corpus line needs a string 'event' and an object "
            "'payload'"
        )

    action = record.get("action")
    key = record.get("key")
    return CorpusEvent(
        event=event,
        action=action if isinstance(action, str) else None,
        key=key if isinstance(key, str) else None,
        payload=payload,
    )
