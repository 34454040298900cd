"""Finds backend plugins through entry points and hands out backends by name.

Built-in and third-party backends arrive the same way: an entry point in the
``polybus.backends`` group names a module implementing the
:func:`~polybus.hookspecs.polybus_backends` hook. A plugin that fails to import is
recorded with its distribution and skipped, so the others still work; the
``strict`` flag turns any such failure into an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Final, get_args

import importlib_metadata
import pluggy

from polybus import hookspecs
from polybus.backend import BackendSpec
from polybus.errors import (
    DuplicateBackendError,
    PluginLoadError,
    UnknownBackendError,
)
from polybus.types import LiteralEventBusBackend

__all__ = ["ENTRY_POINT_GROUP", "InstalledBackend", "Registry", "default_registry"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "polybus.backends"

_BUILTIN_EXTRAS: Final = {name: name for name in get_args(LiteralEventBusBackend)}


@dataclass(frozen=True, slots=True)
class InstalledBackend:
    """A backend found by the registry, with where it came from."""

    spec: BackendSpec
    """What the plugin declared."""
    distribution: str
    """Distribution that installed it."""
    version: str
    """Version of that distribution."""
    entry_point: str
    """Entry point name."""


class Registry:
    """The installed backend plugins.

    :param strict: raise on the first plugin that fails to load instead of
        recording it and going on.
    """

    def __init__(self, *, strict: bool = False) -> None:
        self._strict = strict
        self._manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._manager.add_hookspecs(hookspecs)
        self._backends: dict[str, InstalledBackend] = {}
        self._errors: list[PluginLoadError] = []
        self._duplicates: dict[str, DuplicateBackendError] = {}
        self._loaded = False

    @property
    def errors(self) -> Sequence[PluginLoadError]:
        """Plugins that failed to load."""
        self.load()
        return tuple(self._errors)

    @property
    def conflicts(self) -> Sequence[DuplicateBackendError]:
        """Backend names claimed by two plugins."""
        self.load()
        return tuple(self._duplicates.values())

    def load(self) -> None:
        """Import every plugin of the entry-point group, once."""
        if self._loaded:
            return
        self._loaded = True

        entry_points = importlib_metadata.entry_points(group=ENTRY_POINT_GROUP)
        for entry_point in sorted(entry_points, key=lambda ep: str(ep.name)):
            name = str(entry_point.name)
            distribution = entry_point.dist
            dist_name = distribution.name if distribution else "<unknown>"
            version = distribution.version if distribution else "0"

            try:
                module = entry_point.load()
            except Exception as exc:
                self._record_failure(name, str(dist_name), exc)
                continue

            self.register(
                module,
                distribution=str(dist_name),
                version=str(version),
                entry_point=name,
            )

    def register(
        self,
        plugin: ModuleType | object,
        *,
        distribution: str,
        version: str = "0",
        entry_point: str | None = None,
    ) -> list[str]:
        """Register a plugin object directly and return the backend names it adds.

        This is what entry-point loading does for each plugin; call it to add a
        backend that is not installed as a distribution (tests, embedding).
        """
        label = entry_point or str(getattr(plugin, "__name__", repr(plugin)))

        try:
            self._manager.register(plugin, name=f"{distribution}:{label}")
            specs = self._specs_of(plugin)
        except Exception as exc:
            self._record_failure(label, distribution, exc)
            return []

        added = []
        for spec in specs:
            installed = InstalledBackend(spec, distribution, version, label)
            if self._add(installed):
                added.append(spec.name)
        return added

    def get(self, name: str) -> InstalledBackend:
        """The backend called ``name``.

        :raises DuplicateBackendError: if two plugins claim the name.
        :raises UnknownBackendError: if no plugin provides it (with the extra to
            install for a built-in name).
        :raises PluginLoadError: if the plugin that would provide it failed.
        """
        self.load()

        if name in self._duplicates:
            raise self._duplicates[name]

        if name in self._backends:
            return self._backends[name]

        for error in self._errors:
            if error.entry_point == name:
                raise error

        raise UnknownBackendError(name, list(self._backends), _BUILTIN_EXTRAS.get(name))

    def backends(self) -> list[InstalledBackend]:
        """Every loaded backend, by name."""
        self.load()
        return [self._backends[name] for name in sorted(self._backends)]

    def names(self) -> list[str]:
        """Names of every loaded backend."""
        return [installed.spec.name for installed in self.backends()]

    def _specs_of(self, plugin: object) -> Iterable[BackendSpec]:
        caller = self._manager.hook.polybus_backends
        specs: list[BackendSpec] = []

        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            result = impl.function()
            if not isinstance(result, Iterable):
                raise TypeError(f"polybus_backends returned {result!r}, not a list")
            for spec in result:
                if not isinstance(spec, BackendSpec):
                    raise TypeError(
                        f"polybus_backends returned {spec!r}, not a BackendSpec"
                    )
                specs.append(spec)

        return specs

    def _add(self, installed: InstalledBackend) -> bool:
        name = installed.spec.name

        if name in self._duplicates:
            previous = self._duplicates[name].distributions[0]
        elif name in self._backends:
            previous = self._backends.pop(name).distribution
        else:
            self._backends[name] = installed
            logger.debug(
                "Registered backend %s from %s %s",
                name,
                installed.distribution,
                installed.version,
            )
            return True

        error = DuplicateBackendError(name, previous, installed.distribution)
        self._duplicates[name] = error
        logger.error("%s", error)

        if self._strict:
            raise error
        return False

    def _record_failure(
        self, entry_point: str, distribution: str, cause: BaseException
    ) -> None:
        error = PluginLoadError(entry_point, distribution, cause)
        self._errors.append(error)
        logger.warning("%s", error)

        if self._strict:
            raise error from cause


def default_registry(*, strict: bool = False) -> Registry:
    """A registry loaded from the installed distributions."""
    registry = Registry(strict=strict)
    registry.load()
    return registry
