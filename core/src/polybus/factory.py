"""Builds the event bus for the configured backend."""

from __future__ import annotations

import logging
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from polybus.bus import EventBus
from polybus.errors import ConfigurationError
from polybus.registry import Registry, default_registry
from polybus.settings import BackendSettings, PolybusSettings

__all__ = ["create_backend_settings", "create_event_bus", "read_settings"]

S = TypeVar("S", bound=BaseSettings)

logger = logging.getLogger(__name__)


def create_backend_settings(
    settings: PolybusSettings | None = None, *, registry: Registry | None = None
) -> BackendSettings:
    """The configured backend's own settings, read from its environment prefix."""
    settings = _checked(settings)
    registry = registry or default_registry(strict=settings.strict_plugins)

    installed = registry.get(settings.backend)
    return read_settings(installed.spec.settings_class)


def create_event_bus(
    settings: PolybusSettings | None = None,
    *,
    backend_settings: BackendSettings | None = None,
    registry: Registry | None = None,
) -> EventBus:
    """Make an event bus for the backend named by ``settings.backend``.

    The bus is not started yet: use it as ``async with create_event_bus() as bus``
    or call ``await bus.start()``.

    :param settings: core settings; read from ``POLYBUS_*`` and ``.env`` if omitted.
    :param backend_settings: the backend's settings; read from
        ``POLYBUS_<BACKEND>__*`` if omitted.
    :param registry: where to find backends; the installed plugins by default.
    :raises UnknownBackendError: if no installed plugin provides the backend.
    :raises PluginLoadError: if the plugin that provides it failed to load.
    """
    settings = _checked(settings)
    registry = registry or default_registry(strict=settings.strict_plugins)
    installed = registry.get(settings.backend)

    if backend_settings is None:
        backend_settings = read_settings(installed.spec.settings_class)
    elif not isinstance(backend_settings, installed.spec.settings_class):
        raise ConfigurationError(
            f"backend {settings.backend!r} takes "
            f"{installed.spec.settings_class.__name__}, got "
            f"{type(backend_settings).__name__}"
        )

    backend = installed.spec.factory(backend_settings)
    logger.debug(
        "Created %s backend from %s %s",
        installed.spec.name,
        installed.distribution,
        installed.version,
    )
    if installed.spec.bus_factory is not None:
        return installed.spec.bus_factory(backend, settings)
    return EventBus(backend, settings)


def read_settings(settings_class: type[S]) -> S:
    """Read a settings class from the environment and ``.env``.

    :raises ConfigurationError: naming every variable that is invalid.
    """
    try:
        return settings_class()
    except ValidationError as exc:
        prefix = str(settings_class.model_config.get("env_prefix", ""))
        problems = "; ".join(
            f"{prefix}{'__'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None


def _checked(settings: object) -> PolybusSettings:
    if settings is None:
        return read_settings(PolybusSettings)
    if not isinstance(settings, PolybusSettings):
        raise ConfigurationError(
            f"settings must be PolybusSettings, got {settings!r}; to choose a "
            "backend pass PolybusSettings(backend=...) or set POLYBUS_BACKEND"
        )
    return settings
