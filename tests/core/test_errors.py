"""Every error is a PolybusError whose message names what was wrong."""

from __future__ import annotations

import pytest

from polybus import (
    BackendUnavailableError,
    CodecUnavailableError,
    DuplicateBackendError,
    InvalidTopicNameError,
    MessageTooLargeError,
    PluginLoadError,
    PolybusError,
    SerializationError,
    SubscriptionNotFoundError,
    TopicNotFoundError,
    UnknownBackendError,
)


@pytest.mark.parametrize(
    ("error", "fragments"),
    [
        (
            UnknownBackendError("kafka", ["redis", "in_memory"], "kafka"),
            ["'kafka'", "in_memory, redis", "pip install 'polybus[kafka]'"],
        ),
        (
            UnknownBackendError("acme", [], None),
            ["'acme'", "installed backends: none", "distribution that provides"],
        ),
        (
            PluginLoadError("acme", "polybus-acme", ImportError("no module x")),
            ["'acme'", "'polybus-acme'", "ImportError: no module x"],
        ),
        (
            DuplicateBackendError("acme", "polybus-acme", "acme-fork"),
            ["'acme'", "'polybus-acme'", "'acme-fork'"],
        ),
        (InvalidTopicNameError("a b", "it contains ' '"), ["'a b'", "contains"]),
        (TopicNotFoundError("orders"), ["'orders'", "does not exist"]),
        (
            MessageTooLargeError("orders", 2_000_000, 1_048_576),
            ["'orders'", "2000000 bytes", "limit of 1048576 bytes"],
        ),
        (SerializationError("corrupt envelope"), ["corrupt envelope"]),
        (CodecUnavailableError("zstd", "cramjam"), ["'zstd'", "pip install cramjam"]),
        (SubscriptionNotFoundError("abc"), ["'abc'"]),
        (BackendUnavailableError("redis at 127.0.0.1:1 refused"), ["refused"]),
    ],
)
def test_errors_name_the_offending_value(
    error: PolybusError, fragments: list[str]
) -> None:
    text = str(error)

    assert isinstance(error, PolybusError)
    for fragment in fragments:
        assert fragment in text


def test_errors_keep_their_values_as_attributes() -> None:
    too_large = MessageTooLargeError("t", 10, 5)
    unknown = UnknownBackendError("x", ["b", "a"], None)

    assert (too_large.size, too_large.limit) == (10, 5)
    assert unknown.installed == ("a", "b")
