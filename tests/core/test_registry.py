"""Backend plugins are found through entry points, isolated from each other."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from polybus import (
    BackendSpec,
    Capabilities,
    DuplicateBackendError,
    PluginLoadError,
    PolybusSettings,
    Registry,
    UnknownBackendError,
    create_event_bus,
    hookimpl,
)
from polybus_in_memory import InMemoryBackend, InMemorySettings

ROOT = Path(__file__).resolve().parents[2]


def _spec(name: str) -> BackendSpec:
    return BackendSpec(
        name=name,
        factory=lambda settings: InMemoryBackend(),
        settings_class=InMemorySettings,
        capabilities=Capabilities(persistent=False, shared_across_processes=False),
    )


class _Plugin:
    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def polybus_backends(self) -> Sequence[BackendSpec]:
        return [_spec(name) for name in self.names]


class _BrokenPlugin:
    @hookimpl
    def polybus_backends(self) -> Sequence[BackendSpec]:
        raise RuntimeError("cannot reach licence server")


def _registry(*plugins: tuple[str, object], strict: bool = False) -> Registry:
    registry = Registry(strict=strict)
    registry._loaded = True  # only the plugins given here
    for distribution, plugin in plugins:
        registry.register(plugin, distribution=distribution)
    return registry


def test_installed_in_memory_backend_is_found() -> None:
    registry = Registry()

    installed = registry.get("in_memory")

    assert installed.distribution == "polybus-in-memory"
    assert installed.spec.capabilities.partition_order
    assert "in_memory" in registry.names()


def test_unknown_backend_lists_installed_ones_and_the_extra() -> None:
    registry = _registry(("polybus-acme", _Plugin("acme")))

    with pytest.raises(UnknownBackendError) as caught:
        registry.get("kafka")

    assert caught.value.installed == ("acme",)
    assert "pip install 'polybus[kafka]'" in str(caught.value)


def test_create_event_bus_reports_unknown_backend() -> None:
    settings = PolybusSettings(backend="nope")

    with pytest.raises(UnknownBackendError, match=r"'nope'.*in_memory"):
        create_event_bus(settings)


def test_failing_plugin_is_recorded_and_others_still_work() -> None:
    registry = _registry(
        ("polybus-broken", _BrokenPlugin()), ("polybus-acme", _Plugin("acme"))
    )

    assert registry.names() == ["acme"]
    (error,) = registry.errors
    assert error.distribution == "polybus-broken"
    assert "cannot reach licence server" in str(error)


def test_strict_registry_raises_on_a_failing_plugin() -> None:
    with pytest.raises(PluginLoadError, match="polybus-broken"):
        _registry(("polybus-broken", _BrokenPlugin()), strict=True)


def test_two_plugins_claiming_one_name_is_an_error_naming_both() -> None:
    registry = _registry(
        ("polybus-acme", _Plugin("acme", "solo")), ("acme-fork", _Plugin("acme"))
    )

    with pytest.raises(DuplicateBackendError) as caught:
        registry.get("acme")

    assert caught.value.distributions == ("polybus-acme", "acme-fork")
    assert registry.names() == ["solo"]
    assert [c.name for c in registry.conflicts] == ["acme"]


def test_plugin_returning_something_else_is_a_load_error() -> None:
    class Wrong:
        @hookimpl
        def polybus_backends(self) -> Sequence[object]:
            return ["not a spec"]

    registry = _registry(("polybus-wrong", Wrong()))

    assert "not a BackendSpec" in str(registry.errors[0])


# -- a real third-party distribution, installed in a fresh environment ---------

_ACME_PYPROJECT = """
[project]
name = "polybus-acme"
version = "1.2.3"
dependencies = ["polybus-core"]

[project.entry-points."polybus.backends"]
acme = "polybus_acme"

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"
"""

_ACME_MODULE = '''
"""A third-party backend: the in-memory store under another name."""

from pydantic_settings import SettingsConfigDict

from polybus import BackendSettings, BackendSpec, hookimpl
from polybus_in_memory import CAPABILITIES, InMemoryBackend, InMemorySettings


class AcmeSettings(InMemorySettings):
    model_config = SettingsConfigDict(env_prefix="POLYBUS_ACME__")


class AcmeBackend(InMemoryBackend):
    name = "acme"


@hookimpl
def polybus_backends():
    return [
        BackendSpec(
            name="acme",
            factory=AcmeBackend,
            settings_class=AcmeSettings,
            capabilities=CAPABILITIES,
            description="acme test broker",
        )
    ]
'''

_BROKEN_PYPROJECT = """
[project]
name = "polybus-broken"
version = "0.0.1"

[project.entry-points."polybus.backends"]
broken = "polybus_broken"

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"
"""

_PROBE = """
import asyncio, json
from polybus import EventMessage, Registry, create_event_bus

async def main():
    seen = []
    async def handler(message, context):
        seen.append(message.value.decode())
    async with create_event_bus() as bus:
        await bus.subscribe_to_topic("t", handler, group_id="g")
        await bus.publish_event("t", EventMessage("t", b"hello"))
        for _ in range(500):
            if seen:
                break
            await asyncio.sleep(0.01)
        registry = Registry()
        print(json.dumps({
            "backend": bus.backend.name,
            "seen": seen,
            "installed": {b.spec.name: b.distribution for b in registry.backends()},
            "errors": [[e.entry_point, e.distribution] for e in registry.errors],
        }))

asyncio.run(main())
"""


def _write_distribution(root: Path, pyproject: str, package: str, code: str) -> Path:
    root.mkdir()
    (root / "pyproject.toml").write_text(textwrap.dedent(pyproject))
    (root / package).mkdir()
    (root / package / "__init__.py").write_text(textwrap.dedent(code))
    return root


@pytest.fixture(scope="module")
def third_party_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("this test installs distributions with uv; put uv on PATH")

    base = tmp_path_factory.mktemp("third-party")
    acme = _write_distribution(
        base / "acme", _ACME_PYPROJECT, "polybus_acme", _ACME_MODULE
    )
    broken = _write_distribution(
        base / "broken",
        _BROKEN_PYPROJECT,
        "polybus_broken",
        "raise ImportError('polybus_broken needs libbroken.so')\n",
    )
    venv = base / "venv"

    subprocess.run(
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True
    )
    subprocess.run(
        [
            uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
            str(ROOT / "core"), str(ROOT / "plugins" / "in_memory"),
            str(acme), str(broken),
        ],
        check=True,
    )  # fmt: skip
    return venv


def _run_in(venv: Path, *args: str, backend: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYBUS_")}
    env["POLYBUS_BACKEND"] = backend
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        args, env=env, capture_output=True, text=True, check=False, timeout=120
    )


def test_third_party_plugin_is_discovered_and_selected(third_party_env: Path) -> None:
    python = str(third_party_env / "bin" / "python")

    result = _run_in(third_party_env, python, "-c", _PROBE, backend="acme")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "acme"
    assert report["seen"] == ["hello"]
    assert report["installed"] == {
        "acme": "polybus-acme",
        "in_memory": "polybus-in-memory",
    }
    assert report["errors"] == [["broken", "polybus-broken"]]


def test_cli_lists_plugins_and_reports_the_broken_one(third_party_env: Path) -> None:
    polybus = str(third_party_env / "bin" / "polybus")

    result = _run_in(third_party_env, polybus, "plugins", backend="in_memory")

    assert result.returncode == 0, result.stderr
    assert "acme" in result.stdout
    assert "1.2.3" in result.stdout
    assert "polybus-broken" in result.stderr
    assert "libbroken.so" in result.stderr


def test_selecting_the_broken_plugin_names_its_distribution(
    third_party_env: Path,
) -> None:
    polybus = str(third_party_env / "bin" / "polybus")

    result = _run_in(third_party_env, polybus, "topics", "list", backend="broken")

    assert result.returncode == 1
    assert "'polybus-broken' failed to load" in result.stderr
