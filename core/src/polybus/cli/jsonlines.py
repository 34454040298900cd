"""JSON as the command line writes and reads it.

Header values are typed: str, int, float, bool, None, and lists and dicts of
those. JSON has no NaN or infinity, so a float header that is NaN, ``+inf`` or
``-inf`` is written as MongoDB Extended JSON writes such a double::

    {"$numberDouble": "NaN"}
    {"$numberDouble": "Infinity"}
    {"$numberDouble": "-Infinity"}

Every other value keeps its plain JSON form, so the output is strict JSON (RFC
8259) and a string header ``"NaN"`` or a ``null`` header stays apart from a float.
Headers read by ``polybus publish`` (``--ndjson`` lines and ``--header`` values)
turn such an object back into the float, so ``consume`` output published again
keeps its headers.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Final

from polybus.errors import SerializationError
from polybus.types import ContextValue

__all__ = ["FLOAT_TAG", "decode_header", "dumps", "encode_header"]

logger = logging.getLogger(__name__)

FLOAT_TAG: Final = "$numberDouble"
"""The key of the object that stands for a float JSON cannot write."""


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def encode_header(value: ContextValue) -> Any:
    """``value`` with every NaN or infinite float replaced by its tagged object."""
    if isinstance(value, float) and not math.isfinite(value):
        return {FLOAT_TAG: _float_text(value)}
    if isinstance(value, list):
        return [encode_header(item) for item in value]
    if isinstance(value, dict):
        return {name: encode_header(item) for name, item in value.items()}
    return value


def decode_header(value: Any) -> Any:
    """``value`` with every tagged object turned back into its float.

    :raises SerializationError: if a tagged object does not hold a number as text.
    """
    if isinstance(value, list):
        return [decode_header(item) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) != {FLOAT_TAG}:
        return {name: decode_header(item) for name, item in value.items()}

    text = value[FLOAT_TAG]
    try:
        if not isinstance(text, str):
            raise ValueError(text)
        return float(text)
    except ValueError:
        raise SerializationError(
            f'{{"{FLOAT_TAG}": {json.dumps(text)}}} does not hold a number as text '
            '(e.g. "NaN", "Infinity", "-Infinity")'
        ) from None


def dumps(record: Any, *, indent: int | None = None) -> str:
    """``record`` as strict JSON: NaN and infinities are refused, not written.

    Encode header values with :func:`encode_header` first.

    :raises ValueError: if a NaN or infinite float is left in ``record``.
    """
    return json.dumps(record, indent=indent, allow_nan=False)
