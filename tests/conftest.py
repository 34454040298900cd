"""Shared fixtures of the polybus test suite."""

from __future__ import annotations

import logging
import os

import pytest
from hypothesis import settings

import waiting

# In CI every property test draws the same examples, so a red run is always a
# regression and never a new random draw; locally they explore at random.
settings.register_profile("polybus-tests-ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("polybus-tests-ci")


@pytest.fixture(autouse=True)
def _polybus_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="polybus")


@pytest.fixture
def eventually() -> waiting.Eventually:
    """Wait until a condition holds, failing with ``what`` past the deadline."""
    return waiting.eventually
