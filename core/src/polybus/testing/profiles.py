"""Hypothesis settings profiles of the conformance state machine.

``polybus-ci`` keeps a run short and bounded; ``polybus-dev`` searches deeper
for a developer who has the time. ``POLYBUS_HYPOTHESIS_PROFILE`` picks one (the
default is ``polybus-ci``). The profiles are registered on import but never
loaded globally, so a project's own Hypothesis tests keep their settings.
"""

from __future__ import annotations

import logging
import os
from typing import Final

from hypothesis import HealthCheck, settings

__all__ = ["CI_PROFILE", "DEV_PROFILE", "PROFILE_ENV_VAR", "machine_settings"]

logger = logging.getLogger(__name__)

PROFILE_ENV_VAR: Final = "POLYBUS_HYPOTHESIS_PROFILE"
CI_PROFILE: Final = "polybus-ci"
DEV_PROFILE: Final = "polybus-dev"

_SLOW_IS_FINE: Final = [HealthCheck.too_slow, HealthCheck.data_too_large]

# CI runs the same programs every time (derandomize): a failure there is a
# regression, never a new draw; the dev profile explores at random.
settings.register_profile(
    CI_PROFILE,
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=_SLOW_IS_FINE,
    print_blob=True,
    derandomize=True,
    database=None,
)
settings.register_profile(
    DEV_PROFILE,
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=_SLOW_IS_FINE,
    print_blob=True,
)


def selected_profile(default: str = CI_PROFILE) -> str:
    """Name of the profile chosen by the environment, else ``default``.

    Any registered profile may be named, so a backend on a slow broker can
    register its own (fewer examples) and select it the same way.
    """
    return os.environ.get(PROFILE_ENV_VAR, default)


def machine_settings(default: str = CI_PROFILE) -> settings:
    """The chosen profile's settings.

    :param default: the profile used when the environment names none.
    :raises hypothesis.errors.InvalidArgument: if the chosen profile is not
        registered.
    """
    return settings.get_profile(selected_profile(default))
