"""Convert the @octokit/webhooks-examples npm package into a polybus NDJSON corpus.

The package ships every GitHub webhook example payload in one file,
``api.github.com/index.json``: a list of event definitions, each with a
``name`` (the event type, e.g. ``issues``) and a list of ``examples``
(the payloads). This script turns every api.github.com payload into one
NDJSON line of the form::

    {"event": "issues", "action": "opened", "key": "octo/repo", "payload": {...}}

where ``action`` is the payload's ``action`` (or null) and ``key`` is the
first present of ``repository.full_name``, ``organization.login``,
``sender.login`` and ``str(installation.id)`` (or null). Lines are sorted
by event type, then kept in the order the package lists them. The payload
object is copied unchanged.

The output is gzip with mtime 0 and no file name in its header, so running
the script twice on the same package gives byte-identical files.

Usage (from the repository root)::

    cd "$(mktemp -d)" && npm pack @octokit/webhooks-examples && tar xzf *.tgz
    python tools/convert_webhooks_examples.py "$PWD/package" \\
        core/src/polybus/samples/github-webhooks.ndjson.gz

The first argument is the unpacked package folder (the one holding
``package.json``), the second the ``.ndjson.gz`` file to write.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PACKAGE_NAME = "@octokit/webhooks-examples"
INDEX_PATH = Path("api.github.com") / "index.json"

JsonObject = dict[str, Any]


def read_package_version(package_dir: Path) -> str:
    """Return the version from ``package.json``, checking the package name."""
    manifest = json.loads((package_dir / "package.json").read_text("utf-8"))
    if manifest.get("name") != PACKAGE_NAME:
        raise ValueError(
            f"{package_dir} holds {manifest.get('name')!r}, not {PACKAGE_NAME!r}"
        )
    version = manifest.get("version")
    if not isinstance(version, str):
        raise ValueError(f"{package_dir}/package.json has no version")
    return version


def load_definitions(package_dir: Path) -> list[JsonObject]:
    """Load the list of event definitions from the api.github.com index."""
    definitions = json.loads((package_dir / INDEX_PATH).read_text("utf-8"))
    if not isinstance(definitions, list):
        raise ValueError(f"{INDEX_PATH} is not a JSON list")
    for definition in definitions:
        if not isinstance(definition, dict):
            raise ValueError(f"{INDEX_PATH} holds a definition that is not an object")
        if not isinstance(definition.get("name"), str):
            raise ValueError(f"{INDEX_PATH} holds a definition without a name")
        examples = definition.get("examples")
        if not isinstance(examples, list) or not all(
            isinstance(example, dict) for example in examples
        ):
            raise ValueError(
                f"{INDEX_PATH}: examples of {definition['name']!r} are not objects"
            )
    return definitions


def _nested(payload: JsonObject, outer: str, inner: str) -> object:
    """Return ``payload[outer][inner]``, or None when either level is missing."""
    container = payload.get(outer)
    if isinstance(container, dict):
        return container.get(inner)
    return None


def partition_key(payload: JsonObject) -> str | None:
    """Pick the partition key of a payload, or None when it has none."""
    for outer, inner in (
        ("repository", "full_name"),
        ("organization", "login"),
        ("sender", "login"),
    ):
        value = _nested(payload, outer, inner)
        if isinstance(value, str):
            return value
    installation_id = _nested(payload, "installation", "id")
    if installation_id is not None:
        return str(installation_id)
    return None


def payload_action(payload: JsonObject) -> str | None:
    """Return the payload's ``action``, or None when it has none."""
    action = payload.get("action")
    return action if isinstance(action, str) else None


def iter_records(definitions: Sequence[JsonObject]) -> Iterator[JsonObject]:
    """Yield one record per payload, sorted by event type (stable sort)."""
    for definition in sorted(definitions, key=lambda item: str(item["name"])):
        event = str(definition["name"])
        for payload in definition["examples"]:
            yield {
                "event": event,
                "action": payload_action(payload),
                "key": partition_key(payload),
                "payload": payload,
            }


def encode_record(record: JsonObject) -> bytes:
    """Encode one record as a compact UTF-8 NDJSON line."""
    line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    return (line + "\n").encode("utf-8")


def write_ndjson_gz(records: Iterator[JsonObject], output: Path) -> int:
    """Write records as deterministic gzip NDJSON; return the line count."""
    output.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{output.name}.", suffix=".tmp", dir=output.parent
    )
    try:
        with (
            os.fdopen(handle, "wb") as raw,
            gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0
            ) as compressed,
        ):
            for record in records:
                compressed.write(encode_record(record))
                count += 1
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, output)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, convert the package and print a one-line summary."""
    parser = argparse.ArgumentParser(
        description=f"Convert {PACKAGE_NAME} payloads into a polybus NDJSON corpus."
    )
    parser.add_argument(
        "package_dir",
        type=Path,
        help="the unpacked npm package folder (the one holding package.json)",
    )
    parser.add_argument("output", type=Path, help="the .ndjson.gz file to write")
    args = parser.parse_args(argv)
    package_dir: Path = args.package_dir
    output: Path = args.output

    version = read_package_version(package_dir)
    definitions = load_definitions(package_dir)
    count = write_ndjson_gz(iter_records(definitions), output)
    print(
        f"{PACKAGE_NAME}@{version}: wrote {count} payloads of "
        f"{len(definitions)} event types to {output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
