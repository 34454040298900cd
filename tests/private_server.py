"""A broker process of the test run's own, on a free port, that tests may restart.

Tests that stop or restart a broker never touch the shared servers other runs
use: they start one of these instead. A subclass names the binary, the command
line and how to tell that the server answers; start, stop and restart are here.
"""

from __future__ import annotations

import abc
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Final

import pytest

from polybus.testing.harness import free_port

__all__ = ["PrivateServer", "ServerStartError"]

logger = logging.getLogger(__name__)

_START_SECONDS: Final = 10.0
_POLL_SECONDS: Final = 0.02


class ServerStartError(RuntimeError):
    """A private server did not answer within its deadline."""


class PrivateServer(abc.ABC):
    """One server process on ``127.0.0.1:port``, its data kept in ``directory``.

    :param binary_name: the executable, looked up on ``PATH``; the test is
        skipped when it is not installed.
    :param directory: the server's data and log folder, kept across restarts.
    """

    def __init__(self, binary_name: str, directory: Path) -> None:
        binary = shutil.which(binary_name)
        if binary is None:
            pytest.skip(f"{binary_name} is not installed")

        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The server's command line, binary first."""

    @abc.abstractmethod
    def answers(self) -> bool:
        """Whether the server takes requests now; ``False`` while it cannot."""

    def start(self) -> None:
        """Start the server and return once it answers.

        :raises ServerStartError: if it does not within ten seconds.
        """
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log)
        log.close()

        deadline = time.monotonic() + _START_SECONDS
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServerStartError(
                    f"private {Path(self.binary).name} on port {self.port} did "
                    f"not start; see {self.directory / 'server.log'}"
                )
            time.sleep(_POLL_SECONDS)

        logger.debug("Private %s ready on port %d", self.binary, self.port)

    def stop(self) -> None:
        """Stop the server with SIGTERM, which lets it flush what it stores."""
        process, self.process = self.process, None
        if process is None:
            return

        process.terminate()
        process.wait(timeout=_START_SECONDS)

    def restart(self) -> None:
        """Stop the server and start it again on the same port and folder."""
        self.stop()

        self.start()
