"""pytest plugin of the polybus backend conformance kit.

A backend, built-in or third-party, runs the whole contract of
``docs/semantics.md`` against its real server with one fixture and one class.

``conftest.py``::

    import pytest
    from my_backend import MyBackend, MySettings

    @pytest.fixture
    def polybus_backend_factory():
        # Each call: a new, unstarted Backend on the same server, so buses
        # made from two calls see the same topics and consumer groups.
        return lambda: MyBackend(MySettings(url="..."))

    @pytest.fixture
    def polybus_restart_server():  # optional
        return my_server.restart  # sync or async callable, or None

    @pytest.fixture
    def polybus_outage():  # optional: see polybus.testing.outage
        with TcpOutage(("127.0.0.1", 9999)) as relay:
            yield Outage.through(relay, lambda: MyBackend(MySettings(port=relay.port)))

``test_conformance.py``::

    from polybus.testing.suite import ConformanceSuite

    class TestMyBackend(ConformanceSuite):
        pass

The suite class carries its own harness fixture, so nothing else is needed.
This module adds ``--polybus-timeout-scale``, a report header and the default
fixtures for tests that use ``polybus_harness`` outside the class. It is loaded
by the ``polybus`` ``pytest11`` entry point once polybus is installed, or with
``-p polybus.testing.plugin``; do not also name it in ``pytest_plugins``, which
pytest refuses outside the top-level conftest and which clashes with the entry
point.

Subclassing (rather than a star import) keeps the tests in one class that a
backend can narrow (``test_x = None`` drops a test), mark
(``pytestmark = pytest.mark.kafka``) or run twice with two configurations.
What the backend cannot do it declares in its ``Capabilities``; the suite reads
the declaration, changes what it expects, and skips a test only when the
capability it needs is declared missing, saying which.

The tests are coroutines run by :func:`polybus.testing.harness.async_test`:
``asyncio.run`` per test, a fresh loop each time. That needs no pytest-asyncio
or anyio plugin, and cannot clash with either when a project has one.

``--polybus-timeout-scale`` (or ``POLYBUS_TIMEOUT_SCALE``) multiplies every
deadline, for slow brokers. ``POLYBUS_HYPOTHESIS_PROFILE`` picks the Hypothesis
profile of the state machine: ``polybus-ci`` (default), ``polybus-dev``, or any
profile the backend's conftest registers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import pytest

from polybus.testing.harness import BackendFactory, Harness
from polybus.testing.outage import Outage
from polybus.testing.profiles import PROFILE_ENV_VAR, selected_profile

__all__ = [
    "polybus_backend_factory",
    "polybus_harness",
    "polybus_outage",
    "polybus_restart_server",
    "make_harness",
    "pytest_addoption",
    "pytest_configure",
    "pytest_report_header",
    "timeout_scale",
]

logger = logging.getLogger(__name__)

_SCALE_ENV_VAR = "POLYBUS_TIMEOUT_SCALE"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--polybus-timeout-scale``."""
    group = parser.getgroup("polybus", "polybus backend conformance")
    group.addoption(
        "--polybus-timeout-scale",
        type=float,
        default=float(os.environ.get(_SCALE_ENV_VAR, "1.0")),
        help="multiply every deadline of the conformance suite (env: "
        f"{_SCALE_ENV_VAR}; default 1.0)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers the suite uses."""
    config.addinivalue_line(
        "markers", "slow: long-running tests (property-based machines, restarts)"
    )


def pytest_report_header(config: pytest.Config) -> str:
    """Say how the conformance suite is tuned for this run."""
    scale = timeout_scale(config)
    return (
        f"polybus conformance: timeout scale {scale}, hypothesis profile "
        f"{selected_profile()} (set {PROFILE_ENV_VAR} to change)"
    )


@pytest.fixture
def polybus_backend_factory() -> BackendFactory:
    """Makes backends of the server under test: a backend's conftest defines it."""
    pytest.fail(
        "the polybus conformance suite needs a `polybus_backend_factory` fixture "
        "returning a callable that makes a fresh, unstarted polybus.Backend; "
        "define it in your conftest.py (see polybus.testing.plugin)",
        pytrace=False,
    )


@pytest.fixture
def polybus_restart_server() -> Callable[[], object] | None:
    """Restarts the broker under test; ``None`` here, so restart tests skip."""
    return None


@pytest.fixture
def polybus_outage() -> Outage | None:
    """Cuts backends off from the running broker; ``None`` here, so tests skip."""
    return None


def timeout_scale(config: pytest.Config) -> float:
    """The deadline scale: the command-line option if registered, else the env."""
    option = config.getoption("polybus_timeout_scale", default=None)
    if option is not None:
        return float(option)
    return float(os.environ.get(_SCALE_ENV_VAR, "1.0"))


def make_harness(request: pytest.FixtureRequest, factory: BackendFactory) -> Harness:
    """A harness for one test, with the restart and outage fixtures if defined.

    The outage fixture is set up only when a test asks the harness for it.
    """
    restart = _optional_fixture(request, "polybus_restart_server")

    def outage() -> Outage | None:
        found: Outage | None = _optional_fixture(request, "polybus_outage")
        return found

    return Harness(
        factory,
        restart_server=restart,
        outage=outage,
        timeout_scale=timeout_scale(request.config),
    )


def _optional_fixture(request: pytest.FixtureRequest, name: str) -> Any:
    """The value of fixture ``name``, or ``None`` where nothing defines it.

    A fixture that is defined but needs one that is not is a mistake in the
    backend's conftest, and its lookup error is raised, not taken for absence.
    """
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError as exc:
        if exc.argname != name:
            raise
        return None


@pytest.fixture
def polybus_harness(
    request: pytest.FixtureRequest, polybus_backend_factory: BackendFactory
) -> Harness:
    """A harness on the backend under test, closed by the test that uses it."""
    return make_harness(request, polybus_backend_factory)
