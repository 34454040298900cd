"""Kafka protocol requests aiokafka does not offer.

Only IncrementalAlterConfigs (API key 44), version 0: it changes the named
entries of a topic's configuration and leaves the others alone, where the older
AlterConfigs replaces the whole configuration. Brokers from Kafka 2.3 on, and
Redpanda and Tansu, answer it.

The request classes build on aiokafka's protocol layer of versions 0.12 and
later (``Request`` choosing among versioned ``RequestStruct`` classes); with an
older aiokafka, :data:`INCREMENTAL_ALTER_CONFIGS` is ``None`` and callers use
AlterConfigs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["INCREMENTAL_ALTER_CONFIGS", "SET", "incremental_alter_request"]

SET: Final = 0
"""Operation code that sets a configuration entry."""

_TOPIC_RESOURCE: Final = 2

try:
    from aiokafka.protocol.api import Request, RequestStruct, Response
    from aiokafka.protocol.types import (
        Array,
        Boolean,
        Int8,
        Int16,
        Int32,
        Schema,
        String,
    )
except ImportError:  # aiokafka before 0.12
    INCREMENTAL_ALTER_CONFIGS: type[Any] | None = None
else:

    class IncrementalAlterConfigsResponse_v0(Response):  # type: ignore[misc]
        """Per-resource outcome of IncrementalAlterConfigs."""

        API_KEY = 44
        API_VERSION = 0
        SCHEMA = Schema(
            ("throttle_time_ms", Int32),
            (
                "responses",
                Array(
                    ("error_code", Int16),
                    ("error_message", String("utf-8")),
                    ("resource_type", Int8),
                    ("resource_name", String("utf-8")),
                ),
            ),
        )

    class IncrementalAlterConfigsRequest_v0(RequestStruct):  # type: ignore[misc]
        """Configuration changes per resource, each entry with its operation."""

        API_KEY = 44
        API_VERSION = 0
        RESPONSE_TYPE = IncrementalAlterConfigsResponse_v0
        SCHEMA = Schema(
            (
                "resources",
                Array(
                    ("resource_type", Int8),
                    ("resource_name", String("utf-8")),
                    (
                        "configs",
                        Array(
                            ("name", String("utf-8")),
                            ("config_operation", Int8),
                            ("value", String("utf-8")),
                        ),
                    ),
                ),
            ),
            ("validate_only", Boolean),
        )

    _RequestBase = Request[IncrementalAlterConfigsRequest_v0]

    class IncrementalAlterConfigsRequest(_RequestBase):  # type: ignore[misc,valid-type]
        """IncrementalAlterConfigs, built for the version the broker speaks."""

        API_KEY = 44

        def __init__(self, resources: list[Any], validate_only: bool = False):
            self._resources = resources
            self._validate_only = validate_only

        def build(
            self, request_struct_class: type[IncrementalAlterConfigsRequest_v0]
        ) -> IncrementalAlterConfigsRequest_v0:
            return request_struct_class(self._resources, self._validate_only)

    INCREMENTAL_ALTER_CONFIGS = IncrementalAlterConfigsRequest


def incremental_alter_request(topic: str, configs: Mapping[str, str]) -> Any:
    """A request setting ``configs`` on ``topic``, or ``None`` if unavailable."""
    if INCREMENTAL_ALTER_CONFIGS is None:
        return None

    entries = [(name, SET, value) for name, value in configs.items()]
    return INCREMENTAL_ALTER_CONFIGS([(_TOPIC_RESOURCE, topic, entries)])
