"""Builds the event bus for the configured backend."""

from __future__ import annotations

import logging

from polybus.bus import EventBus
from polybus.errors import ConfigurationError
from polybus.registry import Registry, default_registry
from polybus.settings import BackendSettings, PolybusSettings

__all__ = ["create_backend_settings", "create_event_bus"]

logger = logging.getLogger(__name__)


def create_backend_settings(
    settings: PolybusSettings | None = None, *, registry: Registry | None = None
) -> BackendSettings:
    """The configured backend's own settings, read from its environment prefix."""
    settings = settings or PolybusSettings()
    registry = registry or default_registry(strict=settings.strict_plugins)

    installed = registry.get(settings.backend)
    return installed.spec.settings_class()


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
    settings = settings or PolybusSettings()
    registry = registry or default_registry(strict=settings.strict_plugins)
    installed = registry.get(settings.backend)

    if backend_settings is None:
        backend_settings = installed.spec.settings_class()
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
