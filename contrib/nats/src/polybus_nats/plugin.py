"""Registers the NATS backend with polybus.

The distribution names this module in its entry points::

    [project.entry-points."polybus.backends"]
    nats = "polybus_nats.plugin"

and polybus calls :func:`polybus_backends` when it loads the plugins, so
``POLYBUS_BACKEND=nats`` selects the backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from polybus.backend import Backend, BackendSpec
from polybus.errors import ConfigurationError
from polybus.hookspecs import hookimpl
from polybus.settings import BackendSettings

from polybus_nats.backend import CAPABILITIES, NatsBackend
from polybus_nats.settings import NatsSettings

__all__ = ["polybus_backends"]


def _backend(settings: BackendSettings) -> Backend:
    if not isinstance(settings, NatsSettings):
        raise ConfigurationError(
            f"the nats backend takes NatsSettings, got {type(settings).__name__}"
        )
    return NatsBackend(settings)


@hookimpl
def polybus_backends() -> Sequence[BackendSpec]:
    """The NATS JetStream backend."""
    return [
        BackendSpec(
            name="nats",
            factory=_backend,
            settings_class=NatsSettings,
            capabilities=CAPABILITIES,
            description="NATS JetStream: streams, durable pull consumers, KV metadata",
        )
    ]
