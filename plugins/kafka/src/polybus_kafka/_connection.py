"""What every aiokafka client of the backend shares: connection options, codec
checks and the translation of aiokafka errors into polybus errors."""

from __future__ import annotations

import importlib.util
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final

from aiokafka.codec import has_lz4, has_snappy, has_zstd
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    UnknownTopicOrPartitionError,
)
from aiokafka.helpers import create_ssl_context

from polybus.errors import (
    BackendUnavailableError,
    CodecUnavailableError,
    MessageTooLargeError,
    PolybusError,
    TopicNotFoundError,
)
from polybus_kafka.settings import KafkaSettings

__all__ = [
    "KafkaBackendError",
    "check_codec",
    "client_options",
    "compression_type",
    "module_available",
    "translate_error",
]

logger = logging.getLogger(__name__)

#: Codec name to the module aiokafka needs for it (``aiokafka.codec`` imports
#: ``cramjam`` for all three); gzip is the standard library's.
_CODEC_MODULES: Final = {"snappy": "cramjam", "lz4": "cramjam", "zstd": "cramjam"}

#: Codec name to aiokafka's own test that it can compress with it.
_AIOKAFKA_HAS: Final[dict[str, Callable[[], bool]]] = {
    "snappy": has_snappy,
    "lz4": has_lz4,
    "zstd": has_zstd,
}


class KafkaBackendError(PolybusError):
    """The broker refused a request for a reason polybus has no type for.

    :param operation: what was attempted, e.g. ``"create topic 'orders'"``.
    :param cause: the aiokafka error, also kept as ``__cause__``.
    """

    def __init__(self, operation: str, cause: BaseException) -> None:
        self.operation = operation
        self.cause = cause
        super().__init__(f"{operation} failed: {type(cause).__name__}: {cause}")


def check_codec(codec: str) -> None:
    """Make sure aiokafka can compress with ``codec``: its package is installed
    and aiokafka found it.

    :raises CodecUnavailableError: naming the package to install.
    """
    module = _CODEC_MODULES.get(codec)
    if module is None:
        return
    if not module_available(module) or not _AIOKAFKA_HAS[codec]():
        raise CodecUnavailableError(codec, module)


def module_available(name: str) -> bool:
    """Whether the top-level module ``name`` can be imported."""
    return importlib.util.find_spec(name) is not None


def compression_type(codec: str) -> str | None:
    """aiokafka's name for a codec: ``None`` for no compression."""
    return None if codec == "none" else codec


def client_options(settings: KafkaSettings, role: str) -> dict[str, Any]:
    """Options understood by every aiokafka client (producer, consumer, admin).

    :param settings: the backend settings.
    :param role: suffix of the client id (``producer``, ``consumer``...), so the
        brokers' logs tell the clients of one service apart.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": list(settings.bootstrap_servers),
        "client_id": f"{settings.client_id}-{role}",
        "request_timeout_ms": settings.request_timeout_ms,
        "retry_backoff_ms": settings.retry_backoff_ms,
        "metadata_max_age_ms": settings.metadata_max_age_ms,
        "security_protocol": settings.security_protocol,
    }

    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)

    if settings.sasl_mechanism is not None:
        password = settings.sasl_password
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = (
            password.get_secret_value() if password is not None else None
        )
    return options


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    key_password = settings.ssl_key_password
    context = create_ssl_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
        certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        password=key_password.get_secret_value() if key_password else None,
    )
    context.check_hostname = settings.ssl_check_hostname
    return context  # type: ignore[no-any-return]


def translate_error(
    exc: BaseException,
    operation: str,
    *,
    topic: str | None = None,
    size: int = 0,
    limit: int = 0,
) -> BaseException:
    """The polybus error that stands for an aiokafka error.

    :param exc: what aiokafka raised.
    :param operation: what was attempted, for the message.
    :param topic: the topic concerned, if any.
    :param size: bytes of the message concerned, for size errors.
    :param limit: the size limit in force, for size errors.
    """
    if isinstance(exc, PolybusError) or not isinstance(exc, KafkaError | OSError):
        return exc

    if isinstance(exc, UnknownTopicOrPartitionError) and topic is not None:
        error: BaseException = TopicNotFoundError(topic)
    elif isinstance(exc, MessageSizeTooLargeError) and topic is not None:
        error = MessageTooLargeError(topic, size, limit)
    elif isinstance(exc, KafkaConnectionError | KafkaTimeoutError | OSError) or (
        isinstance(exc, KafkaError) and exc.retriable
    ):
        error = BackendUnavailableError(
            f"{operation}: the Kafka brokers could not be reached or did not "
            f"answer in time ({type(exc).__name__}: {exc}); the operation may "
            "succeed when retried"
        )
    else:
        error = KafkaBackendError(operation, exc)

    error.__cause__ = exc
    return error
