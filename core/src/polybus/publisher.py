"""Batched, compressed and retried publishing over any backend.

:class:`EventPublisher` implements ProtocolEventPublisher on top of an
:class:`~polybus.bus.EventBus`. A batch goes to the backend in one
``Backend.publish`` call, so each backend batches the way its broker does best
(Kafka record batches, Redis pipelines, RabbitMQ confirms in flight), and the
result counts only what the broker confirmed.

Compression takes one of two paths. A codec the backend declares in
``Capabilities.native_compression`` (Kafka, Redpanda) is the broker's own: the
uncompressed records go to ``Backend.publish_compressed``, which has the
broker's client compress whole record batches, and no codec header is set.
Any other codec compresses each value here and names itself in the
``polybus.codec`` header (see :mod:`polybus.codecs`). Either way the metrics
compare the envelopes' size with the bytes the broker took: the compressed
values, or the compressed record batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from polybus.backend import OutboundRecord
from polybus.bus import EventBus
from polybus.codecs import Codec, compress_message, get_codec
from polybus.errors import (
    BackendUnavailableError,
    CodecUnavailableError,
    ConfigurationError,
    PolybusError,
)
from polybus.message import EventMessage, as_event_message
from polybus.metrics import LatencyWindow
from polybus.protocols import ProtocolEventMessage
from polybus.types import (
    BatchPublishResult,
    LiteralCompressionType,
    PublisherMetrics,
    PublishFailure,
)
from polybus.validation import validate_topic_name

__all__ = ["TRANSIENT_ERRORS", "EventPublisher"]

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    BackendUnavailableError,
    ConnectionError,
    TimeoutError,
    OSError,
)
"""Failures worth another try: the broker, not the message, was the problem."""


class EventPublisher:
    """Publishing helpers for one bus.

    :param bus: a started event bus.
    :param compression: codec used when a call names none.
    """

    def __init__(
        self, bus: EventBus, *, compression: LiteralCompressionType = "none"
    ) -> None:
        self.bus = bus
        self.default_compression: LiteralCompressionType = compression
        self._latency = LatencyWindow()
        self._published = 0
        self._bytes = 0
        self._uncompressed = 0
        self._batches = 0
        self._failures = 0
        self._retries = 0

    async def publish_batch(
        self,
        topic: str,
        messages: list[ProtocolEventMessage],
        compression: LiteralCompressionType | None = None,
    ) -> BatchPublishResult:
        """Publish ``messages`` in one backend call and count what was taken.

        A message that cannot be sent (too large, not a valid message) is a
        failure of its own; the rest still go. A codec the broker applies itself
        (``Capabilities.native_compression``) compresses the record batches,
        and the messages carry no codec header; any other compresses each
        value.

        :raises InvalidTopicNameError: if the topic name is not valid.
        :raises CodecUnavailableError: if the codec's package is missing; then
            nothing is sent.
        """
        validate_topic_name(topic)
        chosen = compression or self.default_compression
        codec = get_codec(chosen)
        native = self._native(codec)
        started = time.perf_counter()

        records: list[OutboundRecord] = []
        sizes: list[int] = []
        failures: list[PublishFailure] = []
        prepared = await self._prepare(topic, messages, None if native else codec)
        for message, ready in zip(messages, prepared, strict=True):
            if isinstance(ready, PolybusError):
                failures.append(_failure(message, ready))
                continue
            record, plain = ready
            records.append(record)
            sizes.append(plain)

        outcomes, sent = await self._send(records, native)
        taken = 0
        taken_bytes = 0
        for record, plain, outcome in zip(records, sizes, outcomes, strict=True):
            if outcome is None:
                self._uncompressed += plain
                taken += 1
                taken_bytes += len(record.payload)
            else:
                failures.append(
                    PublishFailure(
                        message_id=record.message_id,
                        error_type=type(outcome).__name__,
                        error=str(outcome),
                    )
                )
        if taken:
            self.bus.note_published(topic, taken_bytes, taken)

        elapsed = (time.perf_counter() - started) * 1000
        succeeded = len(messages) - len(failures)
        self._batches += 1
        self._published += succeeded
        self._bytes += sent
        self._failures += len(failures)
        self._latency.add(elapsed)

        return BatchPublishResult(
            topic=topic,
            success_count=succeeded,
            failure_count=len(failures),
            failures=tuple(failures),
            bytes_sent=sent,
            compression=chosen,
            duration_ms=elapsed,
        )

    async def publish_with_retry(
        self,
        topic: str,
        message: ProtocolEventMessage,
        max_retries: int = 3,
        backoff_ms: int = 1000,
    ) -> bool:
        """Publish, retrying transient failures with exponential backoff and jitter.

        The same message, with the same id, is sent on every attempt. Invalid
        input (topic name, size, message fields) fails at once.

        :returns: ``True`` once published, ``False`` when every attempt failed.
        :raises PolybusError: for input that no retry can fix.
        """
        if max_retries < 0 or backoff_ms < 0:
            raise ConfigurationError(
                f"max_retries and backoff_ms must not be negative, got "
                f"{max_retries} and {backoff_ms}"
            )

        event = as_event_message(message)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(max_retries + 1),
            wait=wait_exponential_jitter(
                multiplier=backoff_ms / 1000, jitter=backoff_ms / 2000
            ),
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            reraise=True,
        )

        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self._retries += 1
                    await self._publish_one(topic, event, None)
        except TRANSIENT_ERRORS as exc:
            if isinstance(exc, PolybusError) and not isinstance(
                exc, BackendUnavailableError
            ):
                raise
            self._failures += 1
            logger.error(
                "Gave up publishing message %s to %s after %d attempts: %r",
                event.message_id,
                topic,
                max_retries + 1,
                exc,
            )
            return False
        return True

    async def publish_compressed(
        self,
        topic: str,
        message: ProtocolEventMessage,
        compression_type: LiteralCompressionType,
    ) -> bool:
        """Publish one message compressed by ``compression_type``.

        As in :meth:`publish_batch`, the broker compresses the record batch if
        it declares the codec native; otherwise the value is compressed here.

        :raises CodecUnavailableError: if the codec's package is missing.
        """
        codec = get_codec(compression_type)
        await self._publish_one(topic, as_event_message(message), codec)
        return True

    async def get_publisher_metrics(self) -> PublisherMetrics:
        """Counters of this publisher."""
        ratio = self._uncompressed / self._bytes if self._bytes else 1.0
        return PublisherMetrics(
            messages_published=self._published,
            bytes_published=self._bytes,
            uncompressed_bytes=self._uncompressed,
            batches_published=self._batches,
            failures=self._failures,
            retries=self._retries,
            compression_ratio=ratio,
            latency_ms_p50=self._latency.percentile(0.50),
            latency_ms_p95=self._latency.percentile(0.95),
            latency_ms_p99=self._latency.percentile(0.99),
        )

    async def _publish_one(
        self, topic: str, message: EventMessage, codec: Codec | None
    ) -> None:
        validate_topic_name(topic)
        native = self._native(codec)
        started = time.perf_counter()
        (prepared,) = await self._prepare(topic, [message], None if native else codec)
        if isinstance(prepared, PolybusError):
            raise prepared
        record, plain = prepared

        (outcome,), sent = await self._send([record], native)
        if outcome is not None:
            raise outcome

        self.bus.note_published(topic, len(record.payload))
        self._published += 1
        self._bytes += sent
        self._uncompressed += plain
        self._latency.add((time.perf_counter() - started) * 1000)

    def _native(self, codec: Codec | None) -> LiteralCompressionType | None:
        """``codec``'s name if the backend's broker compresses with it itself."""
        if codec is None:
            return None
        for name in self.bus.backend.capabilities.native_compression:
            if name == codec.name:
                return name
        return None

    async def _prepare(
        self,
        topic: str,
        messages: Sequence[ProtocolEventMessage],
        codec: Codec | None,
    ) -> list[tuple[OutboundRecord, int] | PolybusError]:
        """For each message, its record and uncompressed envelope size, or why not.

        Every message is encoded first; the topic's partition count is then
        looked up once for the batch, not once per message.

        :param codec: the codec that compresses each value here, if any.
        """
        encoded: list[tuple[EventMessage, bytes, int] | PolybusError] = []
        for message in messages:
            try:
                encoded.append(self._encode(topic, message, codec))
            except PolybusError as exc:
                encoded.append(exc)

        count: int | PolybusError = 0
        if not all(isinstance(item, PolybusError) for item in encoded):
            try:
                count = await self.bus.partition_count(topic)
            except PolybusError as exc:
                count = exc

        prepared: list[tuple[OutboundRecord, int] | PolybusError] = []
        for item in encoded:
            if isinstance(item, PolybusError):
                prepared.append(item)
            elif isinstance(count, PolybusError):
                prepared.append(count)
            else:
                event, payload, plain = item
                prepared.append((self.bus.route(event, payload, None, count), plain))
        return prepared

    def _encode(
        self, topic: str, message: ProtocolEventMessage, codec: Codec | None
    ) -> tuple[EventMessage, bytes, int]:
        """The message as sent, its envelope, and the envelope's size uncompressed.

        Without a codec the envelope is encoded once and is its own
        uncompressed size. With one, the uncompressed size is that of a
        different envelope, the one without compression, so both are encoded.
        """
        event = as_event_message(message)
        if codec is None:
            event, payload = self.bus.envelope(topic, event)
            return event, payload, len(payload)

        plain = len(event.to_bytes())
        event, payload = self.bus.envelope(topic, compress_message(event, codec))
        return event, payload, plain

    async def _send(
        self, records: Sequence[OutboundRecord], native: LiteralCompressionType | None
    ) -> tuple[list[BaseException | None], int]:
        """Send records; the outcome of each, and the bytes the broker took.

        :param native: the codec the broker compresses the batch with, if any.
        :raises CodecUnavailableError: if the backend lacks ``native``'s
            package; then nothing was sent.
        """
        if not records:
            return [], 0

        backend = self.bus.backend
        try:
            if native is not None:
                result = await backend.publish_compressed(records, native)
                return result.outcomes, result.bytes_sent

            outcomes = await backend.publish(records)
        except CodecUnavailableError:
            raise
        except Exception as exc:
            logger.warning("Batch of %d records was not sent: %r", len(records), exc)
            return [exc] * len(records), 0

        sent = sum(
            len(record.payload)
            for record, outcome in zip(records, outcomes, strict=True)
            if outcome is None
        )
        return outcomes, sent


def _failure(message: ProtocolEventMessage, error: BaseException) -> PublishFailure:
    return PublishFailure(
        message_id=message.message_id,
        error_type=type(error).__name__,
        error=str(error),
    )
