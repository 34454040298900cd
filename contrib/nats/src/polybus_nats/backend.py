"""NATS JetStream backend of polybus: an example third-party plugin.

Features:

- Topics are JetStream streams (``<stream_prefix>_<topic>``); partition ``p``
  of a topic is the subject ``<subject_prefix>.<topic>.<p>``. Keys are placed
  by polybus with Kafka's murmur2 partitioner, as on every backend.
- Topic metadata (partition count, creation time) lives in the key-value
  bucket ``<stream_prefix>_topics``, so every process sees the same topics.
- Durable consumer groups: one durable pull consumer per (group, partition)
  with ``max_ack_pending=1``. Every member pulls from every partition and the
  server hands a partition's next message out only once the previous one is
  acknowledged, so per-partition order holds across members, members share the
  work, and a group keeps what is published while it has no member.
- Broadcast subscriptions: an ephemeral consumer with deliver policy ``new``;
  if the server removes it (paused for longer than ``broadcast_inactive_ms``),
  a new one goes on from the next sequence, so nothing is missed.
- At least once: a leaving member gives back (``nak``) what it had not
  acknowledged, at once; a crashed member's message comes back after
  ``ack_wait_ms``.
- Publishing waits for JetStream's acknowledgement; a batch is published with
  every request in flight at once.
- Browsing (``read_topic``) reads each partition with message gets by
  sequence, consuming nothing, for the dead-letter queue handler.
- Persistent (file storage) and shared between processes. Message size is
  bounded by the server's ``max_payload``, read from the connection. What it
  does not promise is in :data:`CAPABILITIES`.

Connection: ``POLYBUS_NATS__SERVERS=nats://host:4222,nats://other:4222``
(``tls://`` URLs or ``POLYBUS_NATS__TLS=true`` for TLS); credentials from the
URL or from ``USER``/``PASSWORD`` or ``TOKEN``, never logged.

Selected with ``POLYBUS_BACKEND=nats``. Options are read from
``POLYBUS_NATS__*``: ``SERVERS`` (comma-separated URLs), ``USER``,
``PASSWORD``, ``TOKEN``, ``TLS``, ``TLS_CA_FILE``, ``TLS_CERT_FILE``,
``TLS_KEY_FILE``, ``STREAM_PREFIX``, ``SUBJECT_PREFIX``, ``ACK_WAIT_MS``,
``MAX_HANDLING_MS``, ``MAX_DELIVER``, ``PULL_EXPIRES_MS``,
``BROADCAST_INACTIVE_MS``, ``STORAGE``, ``REPLICAS``, ``RETENTION_MS``,
``RETENTION_MESSAGES``; see :class:`~polybus_nats.settings.NatsSettings`.

Needs a NATS server 2.9 or newer with JetStream enabled (``nats-server -js``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Coroutine, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue
from polybus.backend import (
    Backend,
    Capabilities,
    DeliverySink,
    OutboundRecord,
    StartPosition,
    StoredRecord,
    Stream,
)
from polybus.errors import (
    BackendUnavailableError,
    ConfigurationError,
    MessageTooLargeError,
    PolybusError,
    TopicNotFoundError,
)
from polybus.types import ContextValue, TopicInfo

from polybus_nats.naming import (
    GroupLabel,
    TopicNames,
    consumer_name,
    decode_token,
)
from polybus_nats.settings import NatsSettings
from polybus_nats.stream import NatsStream

__all__ = ["CAPABILITIES", "JetStreamError", "NatsBackend"]

logger = logging.getLogger(__name__)

CAPABILITIES: Final = Capabilities(
    persistent=True,
    shared_across_processes=True,
    partition_order=True,
    redelivers_unacked=True,
    duplicates_after_crash=True,
    earliest_start=True,
    topic_message_count=True,
    max_message_bytes=1_048_576,
    browse=True,
    limitations={
        "partition sharing": "members do not own partitions: every member pulls "
        "from every partition and the server keeps one message per partition "
        "and group in flight, so order holds across members but a group handles "
        "one message at a time per partition (give the topic more partitions to "
        "scale), and each member reports every partition as assigned",
        "immediate redelivery after a crash": "a message held by a member that "
        "crashed or lost its connection comes back after ack_wait_ms (30 s by "
        "default), and its partition waits meanwhile; a member that leaves "
        "gives its messages back at once",
    },
)

_API_PREFIX: Final = "$JS.API"

_ATTEMPT_ERRORS_SHOWN: Final = 4
"""How many distinct failures of one connect call its error names."""

_UNAVAILABLE: Final = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.ServiceUnavailableError,
    OSError,
)
"""Errors that mean the server cannot be asked now, not that the ask was wrong."""


class JetStreamError(PolybusError):
    """JetStream refused an operation; the message says which and why.

    Account limits, a stream or consumer changed outside polybus, or a server
    too old for a feature end here. The original error is the ``__cause__``.
    """


_STREAM_CONFIG_CONFLICT: Final = 10058
"""JetStream: a stream of that name exists with another configuration."""


@contextlib.contextmanager
def _reaching(action: str, servers: str) -> Iterator[None]:
    """Turn NATS errors into polybus' own.

    A server that cannot be reached becomes BackendUnavailableError; a refusal
    by JetStream becomes :class:`JetStreamError`.
    """
    try:
        yield
    except _UNAVAILABLE as exc:
        raise BackendUnavailableError(
            f"NATS at {servers} did not answer while trying to {action}: {exc!r}"
        ) from exc
    except nats.js.errors.APIError as exc:
        raise JetStreamError(f"JetStream refused to {action}: {exc}") from exc


class NatsBackend(Backend):
    """Topics as JetStream streams, groups as durable pull consumers.

    :param settings: connection and JetStream options; read from
        ``POLYBUS_NATS__*`` if omitted.
    """

    name = "nats"
    capabilities = CAPABILITIES

    def __init__(self, settings: NatsSettings | None = None) -> None:
        self.settings = settings or NatsSettings()
        self.streams: set[NatsStream] = set()
        """Live streams of this backend."""
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._leaving: set[asyncio.Task[None]] = set()
        self._connecting = False
        self._attempt_errors: dict[str, Exception] = {}

    # -- lifecycle ------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and make sure the metadata bucket exists.

        :raises BackendUnavailableError: if no server answers or JetStream is
            not enabled on it.
        """
        if self._client is not None and not self._client.is_closed:
            return

        servers = self.settings.redacted_servers
        logger.debug("Connecting to NATS at %s", servers)
        client = await self._open_connection()

        js = client.jetstream(timeout=self.settings.request_timeout_ms / 1000)
        try:
            action = "open the metadata bucket (is JetStream enabled, -js?)"
            with _reaching(action, servers):
                kv = await self._metadata_bucket(js)
        except BaseException:
            await client.close()
            raise

        self._client, self._js, self._kv = client, js, kv
        logger.debug("Connected to NATS at %s", servers)

    async def _open_connection(self) -> Client:
        settings = self.settings
        timeout = settings.connect_timeout_ms / 1000
        password = settings.password.get_secret_value() if settings.password else None
        token = settings.token.get_secret_value() if settings.token else None

        self._connecting = True
        self._attempt_errors.clear()
        try:
            # The client retries a refused first connection for ever when
            # reconnects are unlimited, so the whole attempt gets a deadline.
            async with asyncio.timeout(timeout):
                return await nats.connect(
                    servers=settings.server_list,
                    user=settings.user,
                    password=password,
                    token=token,
                    tls=settings.ssl_context(),
                    connect_timeout=max(1, round(timeout)),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    name="polybus",
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            # Each failed attempt is kept: the first one (say, a refused
            # password) explains more than the reset the retries then meet.
            seen = list(self._attempt_errors) or [repr(exc)]
            raise BackendUnavailableError(
                f"cannot connect to NATS at {settings.redacted_servers} within "
                f"{timeout:.1f}s: {', then '.join(seen)}; check "
                "POLYBUS_NATS__SERVERS, the credentials, and that the server is "
                "running"
            ) from exc
        finally:
            self._connecting = False

    async def _metadata_bucket(self, js: JetStreamContext) -> KeyValue:
        bucket = self.settings.metadata_bucket
        try:
            return await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            logger.debug("Creating metadata bucket %s", bucket)

        config = KeyValueConfig(
            bucket=bucket,
            history=1,
            storage=StorageType(self.settings.storage),
            replicas=self.settings.replicas,
        )
        return await js.create_key_value(config=config)

    async def _on_error(self, exc: Exception) -> None:
        # While connecting, the error ends up in the exception connect raises.
        if self._connecting:
            if len(self._attempt_errors) < _ATTEMPT_ERRORS_SHOWN:
                self._attempt_errors.setdefault(repr(exc), exc)
            logger.debug("NATS connection attempt failed: %r", exc)
            return

        logger.warning("NATS connection error: %r", exc)

    async def _on_disconnected(self) -> None:
        if self._client is not None:
            logger.warning("Disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        logger.warning("Reconnected to NATS")

    async def close(self) -> None:
        """Stop every stream, wait for their pull requests to end, disconnect."""
        for stream in list(self.streams):
            await stream.stop_fetching()

        if self._leaving:
            await asyncio.gather(*self._leaving, return_exceptions=True)

        client, self._client, self._js, self._kv = self._client, None, None, None
        if client is None or client.is_closed:
            return

        logger.debug("Closing the NATS connection")
        with contextlib.suppress(nats.errors.Error):
            await client.close()

    async def ping(self) -> None:
        """One JetStream API round trip."""
        with _reaching("ping", self.settings.redacted_servers):
            await self.jetstream.account_info()

    # -- what the streams use -------------------------------------------------

    @property
    def client(self) -> Client:
        """The connection.

        :raises BackendUnavailableError: if the backend is not connected.
        """
        if self._client is None:
            raise BackendUnavailableError("the NATS backend is not connected")
        return self._client

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context of the connection."""
        if self._js is None:
            raise BackendUnavailableError("the NATS backend is not connected")
        return self._js

    @property
    def metadata(self) -> KeyValue:
        """The topic metadata bucket."""
        if self._kv is None:
            raise BackendUnavailableError("the NATS backend is not connected")
        return self._kv

    def names(self, topic: str) -> TopicNames:
        """Server-side names of ``topic``."""
        return TopicNames.of(
            topic,
            stream_prefix=self.settings.stream_prefix,
            subject_prefix=self.settings.subject_prefix,
        )

    def pull_subject(self, names: TopicNames, consumer: str) -> str:
        """Where pull requests for one consumer of the topic go."""
        return f"{_API_PREFIX}.CONSUMER.MSG.NEXT.{names.stream}.{consumer}"

    def track(self, leaving: Coroutine[Any, Any, None]) -> None:
        """Run a stream's leaving in the background; :meth:`close` waits for it."""
        task = asyncio.create_task(leaving)
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def partition_count(self, names: TopicNames) -> int:
        """Partitions of a topic, from its metadata.

        :raises TopicNotFoundError: if the topic does not exist.
        """
        metadata = await self._read_metadata(names)
        if metadata is None:
            raise TopicNotFoundError(names.topic)
        return int(metadata["partitions"])

    async def group_consumer(
        self, names: TopicNames, group_id: str, partition: int, start: StartPosition
    ) -> str:
        """The durable consumer of one group on one partition, made if missing.

        Its position is fixed when it is made: ``latest`` starts after the last
        message stored now, ``earliest`` at the oldest retained one. An
        existing consumer keeps its position and configuration.
        """
        name = consumer_name(group_id, partition)
        js = self.jetstream

        with _reaching(f"join group {group_id!r}", self.settings.redacted_servers):
            try:
                await js.consumer_info(names.stream, name)
                return name
            except nats.js.errors.NotFoundError:
                pass

            config = ConsumerConfig(
                durable_name=name,
                description=GroupLabel(group_id, partition).to_description(),
                deliver_policy=(
                    DeliverPolicy.ALL if start == "earliest" else DeliverPolicy.NEW
                ),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.settings.ack_wait_ms / 1000,
                max_deliver=self.settings.max_deliver,
                max_ack_pending=1,
                filter_subject=names.subject(partition),
            )
            try:
                await js.add_consumer(names.stream, config=config)
            except nats.js.errors.APIError:
                # Another member made it first with other settings (a create
                # with the same ones succeeds); the first one's stand.
                await js.consumer_info(names.stream, name)

        return name

    async def broadcast_consumer(
        self, names: TopicNames, *, from_sequence: int | None = None
    ) -> tuple[str, int]:
        """A new ephemeral consumer of every partition and where it starts.

        :param from_sequence: first stream sequence to deliver; the next
            message published if ``None``.
        :returns: the consumer's name and the first sequence it delivers.
        :raises TopicNotFoundError: if the topic's stream does not exist.
        """
        if from_sequence is None:
            policy, start = DeliverPolicy.NEW, None
        else:
            policy, start = DeliverPolicy.BY_START_SEQUENCE, from_sequence
        config = ConsumerConfig(
            deliver_policy=policy,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            filter_subject=names.all_partitions,
            inactive_threshold=self.settings.broadcast_inactive_ms / 1000,
        )

        with _reaching("subscribe", self.settings.redacted_servers):
            try:
                info = await self.jetstream.add_consumer(names.stream, config=config)
            except nats.js.errors.NotFoundError as exc:
                raise TopicNotFoundError(names.topic) from exc

        # A consumer made with deliver policy "new" has "delivered" up to the
        # last message stored when it was made.
        delivered = info.delivered.stream_seq if info.delivered else None
        first = from_sequence or (delivered or 0) + 1
        return info.name, first

    async def has_consumer(self, names: TopicNames, consumer: str) -> bool:
        """Whether the consumer exists; ``True`` when the server cannot tell."""
        try:
            await self.jetstream.consumer_info(names.stream, consumer)
        except nats.js.errors.NotFoundError:
            return False
        except (*_UNAVAILABLE, BackendUnavailableError):
            return True
        return True

    async def has_topic(self, names: TopicNames) -> bool:
        """Whether the topic exists; ``True`` when the server cannot tell."""
        try:
            return await self._read_metadata(names) is not None
        except BackendUnavailableError:
            return True

    async def drop_consumer(self, names: TopicNames, consumer: str) -> None:
        """Delete a consumer; one that is already gone is fine."""
        if self._js is None:
            return

        try:
            await self._js.delete_consumer(names.stream, consumer)
        except (nats.js.errors.NotFoundError, *_UNAVAILABLE) as exc:
            # The server removes an idle ephemeral consumer by itself.
            logger.debug(
                "Consumer %s of topic %s not deleted: %r", consumer, names.topic, exc
            )

    # -- topics ---------------------------------------------------------------

    async def create_topic(
        self,
        topic: str,
        partition_count: int,
        config: Mapping[str, ContextValue] | None = None,
    ) -> bool:
        """Create the topic's stream, then claim its metadata key.

        The stream is made first (an identical stream already there is fine),
        so a topic never has metadata without a stream. Of several processes
        creating one topic at once, the one whose metadata write lands first
        gets ``True``; its partition count stands.

        :param config: ``retention_ms`` and ``retention_messages`` override the
            settings' defaults for this topic.
        """
        names = self.names(topic)
        stream_config = self._stream_config(names, config or {})
        servers = self.settings.redacted_servers

        with _reaching(f"create topic {topic!r}", servers):
            if not await self._ensure_stream(names, stream_config):
                return False

            metadata = {
                "topic": topic,
                "partitions": partition_count,
                "created_at": datetime.now(UTC).isoformat(),
                "stream": names.stream,
            }
            try:
                await self.metadata.create(names.token, json.dumps(metadata).encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                return False

        logger.debug("Created topic %s with %d partitions", topic, partition_count)
        return True

    def _stream_config(
        self, names: TopicNames, config: Mapping[str, ContextValue]
    ) -> StreamConfig:
        retention_ms = config.get("retention_ms", self.settings.retention_ms)
        retention_messages = config.get(
            "retention_messages", self.settings.retention_messages
        )
        for key, value in (
            ("retention_ms", retention_ms),
            ("retention_messages", retention_messages),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(
                    f"topic option {key} must be a positive int or None, got {value!r}"
                )

        return StreamConfig(
            name=names.stream,
            description=names.topic,
            subjects=[names.all_partitions],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType(self.settings.storage),
            num_replicas=self.settings.replicas,
            max_age=retention_ms / 1000 if isinstance(retention_ms, int) else None,
            max_msgs_per_subject=(
                retention_messages if isinstance(retention_messages, int) else -1
            ),
        )

    async def _ensure_stream(self, names: TopicNames, config: StreamConfig) -> bool:
        """Add the topic's stream; ``False`` if the topic exists with another.

        An identical stream already there is fine: JetStream's add is
        idempotent. A different one is left alone when the topic exists, so a
        repeated create changes nothing; without metadata it is a stream an
        earlier create left half-way, which takes the new settings and keeps
        its messages.
        """
        js = self.jetstream
        try:
            await js.add_stream(config=config)
            return True
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _STREAM_CONFIG_CONFLICT:
                raise

        if await self._read_metadata(names) is not None:
            return False

        logger.debug("Stream %s exists without metadata; updating it", config.name)
        await js.update_stream(config=config)
        return True

    async def delete_topic(self, topic: str) -> bool:
        """Remove the metadata key, then the stream with its consumers.

        Of several processes deleting one topic at once, only the one whose
        metadata delete lands gets ``True``.
        """
        names = self.names(topic)
        kv = self.metadata

        with _reaching(f"delete topic {topic!r}", self.settings.redacted_servers):
            try:
                entry = await kv.get(names.token)
                await kv.delete(names.token, last=entry.revision)
            except (
                nats.js.errors.KeyNotFoundError,
                nats.js.errors.KeyWrongLastSequenceError,
            ):
                return False

            # TODO: a create_topic of the same name from another process landing
            # between these two steps loses its new stream here.
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.jetstream.delete_stream(names.stream)

        for stream in [s for s in self.streams if s.topic == topic]:
            await stream.stop_fetching()
        logger.debug("Deleted topic %s", topic)
        return True

    async def _read_metadata(self, names: TopicNames) -> dict[str, Any] | None:
        with _reaching(f"read topic {names.topic!r}", self.settings.redacted_servers):
            try:
                entry = await self.metadata.get(names.token)
            except nats.js.errors.KeyNotFoundError:
                return None

        if entry.value is None:
            return None
        data = json.loads(entry.value)
        return data if isinstance(data, dict) else None

    async def describe_topic(self, topic: str) -> TopicInfo | None:
        """Partition count and creation time from the metadata; message count
        and groups from the stream."""
        names = self.names(topic)
        metadata = await self._read_metadata(names)
        if metadata is None:
            return None

        js = self.jetstream
        with _reaching(f"describe topic {topic!r}", self.settings.redacted_servers):
            try:
                stream = await js.stream_info(names.stream)
                consumers = await js.consumers_info(names.stream)
            except nats.js.errors.NotFoundError:
                # Metadata without a stream: a create that stopped half-way.
                # Reporting no topic lets the next create_topic finish it.
                return None

        groups = {
            label.group_id
            for consumer in consumers
            if (label := GroupLabel.from_description(consumer.config.description))
        }
        return TopicInfo(
            name=topic,
            partition_count=int(metadata["partitions"]),
            created_at=datetime.fromisoformat(metadata["created_at"]),
            message_count=stream.state.messages,
            consumer_groups=tuple(sorted(groups)),
            config={
                "stream": names.stream,
                "subjects": names.all_partitions,
                "storage": self.settings.storage,
                "replicas": stream.config.num_replicas,
                "retention_ms": _millis(stream.config.max_age),
                "retention_messages": _positive(stream.config.max_msgs_per_subject),
            },
        )

    async def list_topics(self) -> list[str]:
        """Every topic in the metadata bucket, sorted."""
        with _reaching("list topics", self.settings.redacted_servers):
            try:
                tokens = await self.metadata.keys()
            except nats.js.errors.NoKeysError:
                return []

        topics = []
        for token in tokens:
            try:
                topics.append(decode_token(token))
            except ValueError:
                logger.warning("Ignored a foreign key %r in the metadata bucket", token)
        return sorted(topics)

    # -- publishing -----------------------------------------------------------

    async def publish(
        self, records: Sequence[OutboundRecord]
    ) -> list[BaseException | None]:
        """Publish every record at once and wait for each acknowledgement."""
        js = self.jetstream
        limit = self.client.max_payload
        timeout = self.settings.request_timeout_ms / 1000

        async def one(record: OutboundRecord) -> BaseException | None:
            if len(record.payload) > limit:
                return MessageTooLargeError(record.topic, len(record.payload), limit)

            subject = self.names(record.topic).subject(record.partition)
            try:
                await js.publish(subject, record.payload, timeout=timeout)
            except nats.js.errors.NoStreamResponseError:
                return TopicNotFoundError(record.topic)
            except _UNAVAILABLE as exc:
                return BackendUnavailableError(
                    f"message {record.message_id} for topic {record.topic!r} was "
                    f"not confirmed by NATS: {exc!r}"
                )
            except nats.js.errors.APIError as exc:
                return JetStreamError(
                    f"JetStream refused message {record.message_id} for topic "
                    f"{record.topic!r}: {exc}"
                )
            return None

        jobs: list[Awaitable[BaseException | None]] = [one(r) for r in records]
        return list(await asyncio.gather(*jobs))

    async def read_topic(
        self, topic: str, *, limit: int | None = None
    ) -> list[StoredRecord]:
        """Retained messages, partition by partition, with gets by sequence.

        :raises TopicNotFoundError: if the topic does not exist.
        """
        names = self.names(topic)
        partitions = await self.partition_count(names)
        js = self.jetstream
        records: list[StoredRecord] = []

        # TODO: one request per message, so browsing a topic of many thousand
        # messages takes seconds; an ephemeral consumer per partition with
        # batched pull requests would read it in a few round trips.
        with _reaching(f"read topic {topic!r}", self.settings.redacted_servers):
            for partition in range(partitions):
                sequence = 1
                while limit is None or len(records) < limit:
                    try:
                        stored = await js.get_msg(
                            names.stream,
                            seq=sequence,
                            subject=names.subject(partition),
                            next=True,
                        )
                    except nats.js.errors.NotFoundError:
                        break
                    if stored.seq is None:
                        break

                    records.append(
                        StoredRecord(partition, str(stored.seq), stored.data or b"")
                    )
                    sequence = stored.seq + 1

        return records

    # -- streams --------------------------------------------------------------

    def open_stream(
        self,
        topic: str,
        group_id: str | None,
        sink: DeliverySink,
        *,
        start: StartPosition,
        prefetch: int,
    ) -> Stream:
        """A group member, or a broadcast subscription if ``group_id`` is None."""
        return NatsStream(self, topic, group_id, sink, start=start, prefetch=prefetch)


def _millis(seconds: float | None) -> int | None:
    return round(seconds * 1000) if seconds else None


def _positive(value: int | None) -> int | None:
    return value if value is not None and value > 0 else None
