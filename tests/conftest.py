"""Shared fixtures of the polybus test suite."""

from __future__ import annotations

import logging

import pytest

import waiting


@pytest.fixture(autouse=True)
def _polybus_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="polybus")


@pytest.fixture
def eventually() -> waiting.Eventually:
    """Wait until a condition holds, failing with ``what`` past the deadline."""
    return waiting.eventually
