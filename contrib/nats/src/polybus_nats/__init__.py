"""NATS JetStream backend of polybus, written as a third-party plugin would be.

It uses polybus' public interface only (:mod:`polybus.backend`,
:mod:`polybus.settings`, :mod:`polybus.errors`, :mod:`polybus.hookspecs`), so it
doubles as the worked example of ``docs/writing-a-backend-plugin.md``.
"""

from polybus_nats.backend import CAPABILITIES, JetStreamError, NatsBackend
from polybus_nats.settings import NatsSettings

__all__ = ["CAPABILITIES", "JetStreamError", "NatsBackend", "NatsSettings"]
