"""Compression of message values, the same on every backend.

A compressed message carries its codec's name in the ``polybus.codec`` header;
the dispatch layer decompresses it before the handler sees it and removes the
header, so compression is invisible to handlers. gzip comes with Python; snappy
(framed), lz4 (frame format) and zstd come from the ``cramjam`` package, an
optional extra (``pip install 'polybus[zstd]'``).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, get_args

from polybus.errors import CodecUnavailableError, ConfigurationError, SerializationError
from polybus.message import EventMessage
from polybus.types import LiteralCompressionType

__all__ = [
    "CODEC_HEADER",
    "Codec",
    "compress_message",
    "decompress_message",
    "get_codec",
]

logger = logging.getLogger(__name__)

CODEC_HEADER: Final = "polybus.codec"
_CRAMJAM_CODECS: Final = frozenset({"snappy", "lz4", "zstd"})


@dataclass(frozen=True, slots=True)
class Codec:
    """A named pair of compress and decompress functions."""

    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]


def _gzip() -> Codec:
    return Codec(
        "gzip",
        lambda data: gzip.compress(data, compresslevel=6, mtime=0),
        gzip.decompress,
    )


def _cramjam(name: str) -> Codec:
    try:
        cramjam = importlib.import_module("cramjam")
    except ImportError:
        raise CodecUnavailableError(name, "cramjam") from None

    module = getattr(cramjam, name)
    return Codec(
        name,
        lambda data: bytes(module.compress(data)),
        lambda data: bytes(module.decompress(data)),
    )


def get_codec(name: str | None) -> Codec | None:
    """The codec called ``name``; ``None`` for no compression.

    :raises ConfigurationError: if the name is not a compression type.
    :raises CodecUnavailableError: if the codec's package is not installed.
    """
    if name is None or name == "none":
        return None

    if name == "gzip":
        return _gzip()

    if name in _CRAMJAM_CODECS:
        return _cramjam(name)

    raise ConfigurationError(
        f"unknown compression {name!r}; use one of "
        f"{', '.join(get_args(LiteralCompressionType))}"
    )


def compress_message(message: EventMessage, codec: Codec) -> EventMessage:
    """A copy of ``message`` with its value compressed and the codec named."""
    if CODEC_HEADER in message.headers:
        raise SerializationError(
            f"message {message.message_id} is already compressed with "
            f"{message.headers[CODEC_HEADER]!r}"
        )

    return dataclasses.replace(
        message,
        value=codec.compress(message.value),
        headers={**message.headers, CODEC_HEADER: codec.name},
    )


def decompress_message(message: EventMessage) -> EventMessage:
    """``message`` with its value decompressed, if a codec header says so.

    :raises SerializationError: if the codec is unknown or the value corrupt.
    :raises CodecUnavailableError: if the codec's package is not installed.
    """
    name = message.headers.get(CODEC_HEADER)
    if name is None:
        return message

    if not isinstance(name, str):
        raise SerializationError(f"header {CODEC_HEADER} must be a str, got {name!r}")

    try:
        codec = get_codec(name)
    except ConfigurationError as exc:
        if isinstance(exc, CodecUnavailableError):
            raise
        raise SerializationError(str(exc)) from exc
    assert codec is not None

    try:
        value = codec.decompress(message.value)
    except Exception as exc:
        raise SerializationError(
            f"value of message {message.message_id} is not valid {name}: {exc}"
        ) from exc

    # The message was checked when it was made or decoded; the codec gives
    # bytes and the headers lose one entry, so nothing needs checking again.
    headers = {k: v for k, v in message.headers.items() if k != CODEC_HEADER}
    return message._replace(value=value, headers=headers)
