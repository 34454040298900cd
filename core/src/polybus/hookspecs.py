"""The hooks a backend plugin implements.

A plugin is a module named by an entry point in the ``polybus.backends`` group::

    [project.entry-points."polybus.backends"]
    mybroker = "polybus_mybroker.plugin"

and that module implements :func:`polybus_backends` with :data:`hookimpl`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import pluggy

from polybus.backend import BackendSpec

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec", "polybus_backends"]

PROJECT_NAME: Final = "polybus"

hookspec: Final = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl: Final = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def polybus_backends() -> Sequence[BackendSpec]:  # type: ignore[empty-body]
    """Return the backends this plugin provides."""
