"""Compression codecs of message values."""

from __future__ import annotations

import pytest

from polybus import CODEC_HEADER, EventMessage
from polybus.codecs import compress_message, decompress_message, get_codec
from polybus.errors import SerializationError

CODECS = ["gzip", "snappy", "lz4", "zstd"]


def test_no_compression_is_no_codec() -> None:
    assert get_codec("none") is None
    assert get_codec(None) is None


@pytest.mark.parametrize("codec", CODECS)
def test_codecs_round_trip_and_name_themselves(codec: str) -> None:
    found = get_codec(codec)
    assert found is not None
    message = EventMessage("t", b"payload" * 50, headers={"a": 1})

    packed = compress_message(message, found)

    assert packed.headers[CODEC_HEADER] == codec
    assert decompress_message(packed) == message


def test_corrupt_compressed_values_are_serialization_errors() -> None:
    message = EventMessage("t", b"garbage", headers={CODEC_HEADER: "gzip"})

    with pytest.raises(SerializationError, match="not valid gzip"):
        decompress_message(message)


def test_compressing_twice_is_refused() -> None:
    gzip = get_codec("gzip")
    assert gzip is not None
    packed = compress_message(EventMessage("t", b"v"), gzip)

    with pytest.raises(SerializationError, match="already compressed"):
        compress_message(packed, gzip)
