"""The Kafka backend: topics, publishing and streams on aiokafka.

The backend holds three clients per bus: a metadata client (topic lookups that
never create a topic by accident), an admin client (create and delete topics,
groups, configs) and one shared producer. aiokafka compresses per producer, so
a publish that asks for another record compression than the ``compression``
setting (``EventPublisher.publish_batch(..., compression)``) goes through a
producer of that codec, started on first use and closed with the rest. Each
subscription gets a consumer of its own (see :mod:`polybus_kafka.stream`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IncompatibleBrokerVersion,
    KafkaConnectionError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from polybus.backend import (
    Backend,
    Capabilities,
    CompressedPublishResult,
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
    UnsupportedOperationError,
)
from polybus.types import (
    BrokerInfo,
    ConsumerGroupInfo,
    ConsumerGroupMember,
    ContextValue,
    KafkaMetadata,
    LiteralCompressionType,
    PartitionOffsets,
    TopicInfo,
)
from polybus_kafka._connection import (
    KafkaBackendError,
    check_codec,
    client_options,
    compression_type,
    translate_error,
)
from polybus_kafka._protocol import incremental_alter_request
from polybus_kafka.settings import KafkaSettings
from polybus_kafka.stream import KafkaStream

__all__ = ["CAPABILITIES", "ConsumerGroupActiveError", "KafkaBackend", "ProduceStats"]

logger = logging.getLogger(__name__)

_Offsets: TypeAlias = dict[TopicPartition, int]
"""Offset of each partition."""

_NO_ERROR: Final = 0
_UNKNOWN_TOPIC: Final = 3
_TOPIC_EXISTS: Final = 36
_EARLIEST: Final = -2
_LATEST: Final = -1
_GROUP_BUSY_ERRORS: Final = (
    CommitFailedError,
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

CAPABILITIES = Capabilities(
    persistent=True,
    shared_across_processes=True,
    partition_order=True,
    redelivers_unacked=True,
    duplicates_after_crash=True,
    earliest_start=True,
    topic_message_count=True,
    max_message_bytes=1_048_576,
    browse=True,
    native_compression=frozenset({"gzip", "snappy", "lz4", "zstd"}),
    limitations={
        "topic creation time": "Kafka's metadata carries no creation time, so "
        "TopicInfo.created_at is None",
        "exact message count": "TopicInfo.message_count is the sum of end minus "
        "start offsets; compaction and transaction markers make it an upper bound",
        "delivery count": "Kafka does not count deliveries; delivery_count is "
        "always 1, also for a message delivered again after a rebalance",
        "consumer groups of a topic": "TopicInfo.consumer_groups is empty; use "
        "get_consumer_group_info for one group",
        "broker message size limit": "max_message_bytes is the producer's "
        "max_request_size (1 MiB by default); the broker may enforce a smaller "
        "message.max.bytes",
    },
)


class ConsumerGroupActiveError(PolybusError, RuntimeError):
    """A consumer group's offsets were to be reset while it has members."""

    def __init__(self, group_id: str, reason: str) -> None:
        self.group_id = group_id
        self.reason = reason
        super().__init__(
            f"consumer group {group_id!r} has members, so its offsets cannot be "
            f"reset ({reason}); stop its subscriptions and try again"
        )


@dataclass(slots=True)
class ProduceStats:
    """What this backend's producer has sent since it connected."""

    messages: int = 0
    """Messages the brokers acknowledged."""
    bytes: int = 0
    """Payload bytes of those messages, before compression."""
    latency_ms_total: float = 0.0
    """Sum of the publish latencies of acknowledged batches, per message."""

    @property
    def latency_ms_avg(self) -> float:
        """Mean publish latency per message."""
        return self.latency_ms_total / self.messages if self.messages else 0.0


class KafkaBackend(Backend):
    """Kafka topics, consumer groups and an idempotent producer where possible.

    :param settings: the backend settings; read from ``POLYBUS_KAFKA__*`` if
        omitted.
    """

    name = "kafka"
    capabilities = CAPABILITIES

    def __init__(self, settings: KafkaSettings | None = None) -> None:
        self.settings = settings or KafkaSettings()
        self.stats = ProduceStats()
        self.idempotent = False
        self._client: AIOKafkaClient | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._producer: AIOKafkaProducer | None = None
        self._codec_producers: dict[str, AIOKafkaProducer] = {}
        self._codec_producers_lock = asyncio.Lock()
        self._partition_counts: dict[str, tuple[int, float]] = {}
        self._streams: set[KafkaStream] = set()

    # -- lifecycle ------------------------------------------------------------

    async def connect(self) -> None:
        """Check the codec, then start the metadata, admin and producer clients.

        :raises CodecUnavailableError: if the compression codec's package is
            missing.
        :raises BackendUnavailableError: if no broker answers.
        """
        settings = self.settings
        check_codec(settings.compression)
        self._codec_producers_lock = asyncio.Lock()  # of this event loop
        logger.debug(
            "Connecting to Kafka at %s as %s",
            ",".join(settings.bootstrap_servers),
            settings.client_id,
        )

        try:
            self._client = AIOKafkaClient(**client_options(settings, "metadata"))
            await self._client.bootstrap()
            self._admin = AIOKafkaAdminClient(**client_options(settings, "admin"))
            await self._admin.start()
            self._producer = await self._start_producer()
        except (KafkaError, OSError) as exc:
            await self._close_clients()
            raise translate_error(exc, "connect to the Kafka brokers") from exc
        except BaseException:
            await self._close_clients()
            raise

        logger.debug("Connected to Kafka (idempotent producer: %s)", self.idempotent)

    def _producer_options(self, codec: str, role: str) -> dict[str, Any]:
        settings = self.settings
        options = client_options(settings, role)
        options.update(
            acks="all",
            compression_type=compression_type(codec),
            linger_ms=settings.linger_ms,
            max_batch_size=settings.max_batch_size,
            max_request_size=settings.max_request_size,
        )
        return options

    async def _start_producer(self) -> AIOKafkaProducer:
        settings = self.settings
        options = self._producer_options(settings.compression, "producer")

        if settings.enable_idempotence is not False:
            producer = AIOKafkaProducer(enable_idempotence=True, **options)
            try:
                await producer.start()
            except KafkaConnectionError:
                await producer.stop()
                raise
            except KafkaError as exc:
                await producer.stop()
                if settings.enable_idempotence:
                    raise KafkaBackendError(
                        "start an idempotent producer (enable_idempotence=True)", exc
                    ) from exc
                logger.warning(
                    "The brokers refused an idempotent producer (%s); publishing "
                    "without idempotence: a retried send may store a message "
                    "twice. Set enable_idempotence=False to skip this attempt",
                    type(exc).__name__,
                )
            else:
                self.idempotent = True
                return producer

        # aiokafka keeps at most one batch in flight per partition, so a retry
        # cannot overtake the batch behind it and per-key order holds without
        # idempotence too.
        producer = AIOKafkaProducer(**options)
        await producer.start()
        self.idempotent = False
        return producer

    async def close(self) -> None:
        """Close streams left open, flush the producer and close every client."""
        for stream in list(self._streams):
            await stream.close()
        self._streams.clear()

        await self._close_clients()
        self._partition_counts.clear()
        logger.debug("Disconnected from Kafka")

    async def _close_clients(self) -> None:
        producers = list(self._codec_producers.values())
        if self._producer is not None:
            producers.insert(0, self._producer)
        self._producer = None
        self._codec_producers = {}
        admin, self._admin = self._admin, None
        client, self._client = self._client, None

        try:
            for producer in producers:
                await _stop_producer(producer)
        finally:
            if admin is not None:
                await admin.close()
            if client is not None:
                await client.close()

    async def ping(self) -> None:
        """Fetch metadata for no topic: one round trip to a broker."""
        await self._metadata([])

    @property
    def connected(self) -> bool:
        """Whether :meth:`connect` succeeded and :meth:`close` was not called."""
        return self._producer is not None

    def _require_client(self) -> AIOKafkaClient:
        if self._client is None:
            raise BackendUnavailableError(
                "the Kafka backend is not connected; start the event bus first"
            )
        return self._client

    def _require_admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise BackendUnavailableError(
                "the Kafka backend is not connected; start the event bus first"
            )
        return self._admin

    # -- metadata -------------------------------------------------------------

    async def _metadata(self, topics: list[str] | None) -> dict[str, Any]:
        """A metadata response as a dict; never creates a topic.

        :param topics: topics to describe; ``None`` for all, ``[]`` for none.
        """
        client = self._require_client()
        request = MetadataRequest(topics, allow_auto_topic_creation=False)
        try:
            node = client.get_random_node()
            if node is None:
                await client.force_metadata_update()
                node = client.get_random_node()
            response = await client.send(node, request)
        except (KafkaError, OSError) as exc:
            raise translate_error(exc, "fetch Kafka metadata") from exc

        result: dict[str, Any] = response.to_object()
        return result

    async def _topic_entry(self, topic: str) -> dict[str, Any] | None:
        """The metadata entry of one topic, or ``None`` if it does not exist."""
        metadata = await self._metadata([topic])
        entry: dict[str, Any]
        for entry in metadata["topics"]:
            if entry["topic"] != topic:
                continue

            code = entry["error_code"]
            if code == _UNKNOWN_TOPIC:
                return None
            if code != _NO_ERROR:
                raise translate_error(
                    for_code(code)(), f"describe topic {topic!r}", topic=topic
                )
            return entry
        return None

    async def partition_count(self, topic: str) -> int:
        """Partitions of ``topic``, from a short-lived cache.

        :raises TopicNotFoundError: if the topic does not exist.
        """
        cached = self._partition_counts.get(topic)
        max_age = self.settings.metadata_max_age_ms / 1000
        if cached is not None and time.monotonic() - cached[1] < max_age:
            return cached[0]

        entry = await self._topic_entry(topic)
        if entry is None:
            self._partition_counts.pop(topic, None)
            raise TopicNotFoundError(topic)

        count = len(entry["partitions"])
        self._partition_counts[topic] = (count, time.monotonic())
        return count

    async def _offset_range(
        self, topic: str, partitions: Sequence[Mapping[str, Any]]
    ) -> tuple[list[TopicPartition], _Offsets, _Offsets]:
        """The partitions of ``topic`` with their start and end offsets.

        :param partitions: the topic's partition entries from the metadata.
        :returns: the partitions, then start and end offset of each partition
            whose leader answered.
        """
        leaders = {
            TopicPartition(topic, p["partition"]): p["leader"] for p in partitions
        }
        starts = await self._end_offsets(leaders, _EARLIEST)
        ends = await self._end_offsets(leaders, _LATEST)
        return list(leaders), starts, ends

    async def _end_offsets(
        self, partitions: Mapping[TopicPartition, int], timestamp: int
    ) -> dict[TopicPartition, int]:
        """Earliest (``-2``) or latest (``-1``) offset of partitions.

        :param partitions: each partition with its leader's node id.
        :param timestamp: ``-2`` for the start, ``-1`` for the end.
        """
        client = self._require_client()
        by_leader: dict[int, dict[str, list[tuple[int, int]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for tp, leader in partitions.items():
            by_leader[leader][tp.topic].append((tp.partition, timestamp))

        async def ask(leader: int, topics: dict[str, list[tuple[int, int]]]) -> Any:
            request = OffsetRequest(-1, 0, list(topics.items()))
            return (await client.send(leader, request)).to_object()

        try:
            answers = await asyncio.gather(
                *(ask(leader, topics) for leader, topics in by_leader.items())
            )
        except (KafkaError, OSError) as exc:
            raise translate_error(exc, "list partition offsets") from exc

        offsets: dict[TopicPartition, int] = {}
        for answer in answers:
            for topic_entry in answer["topics"]:
                for part in topic_entry["partitions"]:
                    if part["error_code"] == _NO_ERROR:
                        tp = TopicPartition(topic_entry["topic"], part["partition"])
                        offsets[tp] = part["offset"]
        return offsets

    # -- topics ---------------------------------------------------------------

    async def create_topic(
        self,
        topic: str,
        partition_count: int,
        config: Mapping[str, ContextValue] | None = None,
    ) -> bool:
        """Create a topic with the default replication factor."""
        return await self.create_topic_with_replicas(
            topic, partition_count, self.settings.replication_factor, config
        )

    async def create_topic_with_replicas(
        self,
        topic: str,
        partition_count: int,
        replication_factor: int,
        config: Mapping[str, ContextValue] | None = None,
    ) -> bool:
        """Create a topic; ``False`` if it already existed.

        Returns once the topic shows in the metadata, so a publish right after
        finds it.

        :raises ConfigurationError: if a count is below 1.
        :raises KafkaBackendError: if the broker refuses, e.g. too few brokers
            for the replication factor.
        """
        if partition_count < 1 or replication_factor < 1:
            raise ConfigurationError(
                f"topic {topic!r} needs at least one partition and one replica, "
                f"got {partition_count} and {replication_factor}"
            )

        admin = self._require_admin()
        configs = {k: _config_text(v) for k, v in (config or {}).items()}
        new_topic = NewTopic(
            topic, partition_count, replication_factor, topic_configs=configs
        )
        try:
            response = await admin.create_topics([new_topic])
        except (KafkaError, OSError) as exc:
            raise translate_error(exc, f"create topic {topic!r}") from exc

        self._partition_counts.pop(topic, None)
        if not _outcome_for(topic, response.topic_errors, "create", _TOPIC_EXISTS):
            return False

        await self._await_topic(topic)
        logger.debug(
            "Created topic %s: %d partitions, %d replicas",
            topic,
            partition_count,
            replication_factor,
        )
        return True

    async def _await_topic(self, topic: str) -> None:
        deadline = time.monotonic() + self.settings.request_timeout_ms / 1000
        while await self._topic_entry(topic) is None:
            if time.monotonic() > deadline:
                raise BackendUnavailableError(
                    f"topic {topic!r} was created but did not appear in the "
                    "metadata in time"
                )
            await asyncio.sleep(0.05)

    async def delete_topic(self, topic: str) -> bool:
        """Delete a topic; ``False`` if it did not exist."""
        admin = self._require_admin()
        try:
            response = await admin.delete_topics([topic])
        except (KafkaError, OSError) as exc:
            raise translate_error(exc, f"delete topic {topic!r}") from exc

        self._partition_counts.pop(topic, None)
        if not _outcome_for(
            topic, response.topic_error_codes, "delete", _UNKNOWN_TOPIC
        ):
            return False

        logger.debug("Deleted topic %s", topic)
        return True

    async def describe_topic(self, topic: str) -> TopicInfo | None:
        """Partition count, replication and message count from the offsets."""
        entry = await self._topic_entry(topic)
        if entry is None:
            return None

        partitions = entry["partitions"]
        self._partition_counts[topic] = (len(partitions), time.monotonic())
        all_partitions, starts, ends = await self._offset_range(topic, partitions)
        count = sum(max(0, ends[tp] - starts.get(tp, 0)) for tp in ends)
        replicas = len(partitions[0]["replicas"]) if partitions else 0

        return TopicInfo(
            name=topic,
            partition_count=len(partitions),
            created_at=None,
            message_count=count if len(ends) == len(all_partitions) else None,
            config={"replication_factor": replicas},
        )

    async def list_topics(self) -> list[str]:
        """Every topic that is not internal to the brokers, sorted."""
        metadata = await self._metadata(None)
        return sorted(
            t["topic"]
            for t in metadata["topics"]
            if t["error_code"] == _NO_ERROR and not t.get("is_internal", False)
        )

    # -- publishing -----------------------------------------------------------

    async def publish(
        self, records: Sequence[OutboundRecord]
    ) -> list[BaseException | None]:
        """Send every record to its partition and wait for the brokers' acks.

        Records are handed to the producer first, so they share batches, and
        only then awaited.
        """
        producer = self._producer
        if producer is None:
            raise BackendUnavailableError(
                "the Kafka backend is not connected; start the event bus first"
            )

        started = time.perf_counter()
        outcomes: list[BaseException | None] = [None] * len(records)
        sent: list[tuple[int, asyncio.Future[Any]]] = []

        counts = await self._partition_counts_of({r.topic for r in records})
        for index, record in enumerate(records):
            outcomes[index] = self._unsendable(record, counts)
            if outcomes[index] is not None:
                continue

            try:
                future = await producer.send(
                    record.topic,
                    record.payload,
                    key=record.key,
                    partition=record.partition,
                )
            except (KafkaError, OSError) as exc:
                outcomes[index] = self._publish_error(exc, record)
                continue
            sent.append((index, future))

        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        elapsed_ms = (time.perf_counter() - started) * 1000

        for (index, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                outcomes[index] = self._publish_error(result, records[index])
                continue
            self._count_sent(records[index], elapsed_ms)
        return outcomes

    async def publish_compressed(
        self, records: Sequence[OutboundRecord], codec: LiteralCompressionType
    ) -> CompressedPublishResult:
        """Send records in record batches that aiokafka compresses with ``codec``.

        The producer of ``codec`` (the shared one if it is the ``compression``
        setting) gets each partition's records, in order, in batches of up to
        ``max_batch_size`` built here (``create_batch`` and ``send_batch``), so
        the bytes the broker took are known exactly: the size of every
        acknowledged compressed batch. A batch is taken or refused whole.
        Consumers, aiokafka's included, decompress the batches themselves.

        :raises CodecUnavailableError: if aiokafka lacks the codec's package;
            then nothing is sent.
        :raises UnsupportedOperationError: for a codec not in
            ``native_compression``.
        :raises BackendUnavailableError: if the codec's producer cannot start.
        """
        if codec not in self.capabilities.native_compression:
            raise UnsupportedOperationError(
                self.name,
                f"{codec} compression by the broker",
                "the brokers are not declared to take it (native_compression)",
            )
        check_codec(codec)
        producer = await self._codec_producer(codec)

        started = time.perf_counter()
        outcomes: list[BaseException | None] = [None] * len(records)
        by_partition: dict[tuple[str, int], list[int]] = defaultdict(list)
        counts = await self._partition_counts_of({r.topic for r in records})
        for index, record in enumerate(records):
            outcomes[index] = self._unsendable(record, counts)
            if outcomes[index] is None:
                by_partition[record.topic, record.partition].append(index)

        sent: list[tuple[list[int], Any, asyncio.Future[Any]]] = []
        for (topic, partition), indices in by_partition.items():
            for members, batch in self._fill_batches(
                producer, records, indices, outcomes
            ):
                try:
                    future = await producer.send_batch(
                        batch, topic, partition=partition
                    )
                except (KafkaError, OSError) as exc:
                    for index in members:
                        outcomes[index] = self._publish_error(exc, records[index])
                    continue
                sent.append((members, batch, future))

        results = await asyncio.gather(*(f for *_, f in sent), return_exceptions=True)
        elapsed_ms = (time.perf_counter() - started) * 1000

        taken = 0
        for (members, batch, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                for index in members:
                    outcomes[index] = self._publish_error(result, records[index])
                continue
            taken += batch.size()  # the compressed batch, once built for sending
            for index in members:
                self._count_sent(records[index], elapsed_ms)
        return CompressedPublishResult(outcomes, taken)

    def _fill_batches(
        self,
        producer: AIOKafkaProducer,
        records: Sequence[OutboundRecord],
        indices: Sequence[int],
        outcomes: list[BaseException | None],
    ) -> Iterator[tuple[list[int], Any]]:
        """Batches of one partition's records, each with the indices it holds.

        A record over ``max_request_size`` gets its error in ``outcomes``
        instead, as aiokafka's ``send`` would raise it.
        """
        limit = self.settings.max_request_size
        batch = producer.create_batch()
        members: list[int] = []
        for index in indices:
            record = records[index]
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
                record.key, record.payload, []
            )
            if size > limit:
                outcomes[index] = MessageTooLargeError(record.topic, size, limit)
                continue

            if _append(batch, record):
                members.append(index)
                continue

            # Full (and closed): send it; a new batch always takes a first record.
            if members:
                yield members, batch
            batch = producer.create_batch()
            members = []
            if _append(batch, record):
                members.append(index)
            else:
                outcomes[index] = MessageTooLargeError(record.topic, size, limit)

        if members:
            batch.close()
            yield members, batch

    async def _codec_producer(self, codec: str) -> AIOKafkaProducer:
        """The producer that compresses with ``codec``, started on first use."""
        shared = self._producer
        if shared is None:
            raise BackendUnavailableError(
                "the Kafka backend is not connected; start the event bus first"
            )
        if codec == self.settings.compression:
            return shared

        async with self._codec_producers_lock:
            producer = self._codec_producers.get(codec)
            if producer is not None:
                return producer

            # The shared producer's settings and idempotence; its own client id.
            producer = AIOKafkaProducer(
                enable_idempotence=self.idempotent,
                **self._producer_options(codec, f"producer-{codec}"),
            )
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                await producer.stop()
                raise translate_error(exc, f"start the {codec} producer") from exc

            if self._producer is not shared:  # closed while it started
                await _stop_producer(producer)
                raise BackendUnavailableError(
                    "the Kafka backend was closed while a producer started"
                )
            self._codec_producers[codec] = producer
            logger.debug("Started a producer compressing with %s", codec)
            return producer

    def _unsendable(
        self, record: OutboundRecord, counts: Mapping[str, int | BaseException]
    ) -> BaseException | None:
        """Why ``record`` cannot go to its partition, or ``None`` if it can."""
        count = counts[record.topic]
        if isinstance(count, BaseException):
            return count
        if not 0 <= record.partition < count:
            self._partition_counts.pop(record.topic, None)
            return TopicNotFoundError(f"{record.topic}[{record.partition}]")
        return None

    def _count_sent(self, record: OutboundRecord, elapsed_ms: float) -> None:
        self.stats.messages += 1
        self.stats.bytes += len(record.payload)
        self.stats.latency_ms_total += elapsed_ms

    async def _partition_counts_of(
        self, topics: set[str]
    ) -> dict[str, int | BaseException]:
        # The producer's own metadata lookup would make the broker create a
        # missing topic, so each topic of the batch is looked up here first.
        counts: dict[str, int | BaseException] = {}
        for topic in topics:
            try:
                counts[topic] = await self.partition_count(topic)
            except (TopicNotFoundError, BackendUnavailableError) as exc:
                counts[topic] = exc
        return counts

    def _publish_error(
        self, exc: BaseException, record: OutboundRecord
    ) -> BaseException:
        error = translate_error(
            exc,
            f"publish message {record.message_id} to {record.topic!r}",
            topic=record.topic,
            size=len(record.payload),
            limit=self.settings.max_request_size,
        )
        # Whatever went wrong, the next publish checks the topic afresh: a
        # broker that lost it (a restart of Tansu) answers with an unknown error.
        self._partition_counts.pop(record.topic, None)
        return error

    # -- browsing -------------------------------------------------------------

    async def read_topic(
        self, topic: str, *, limit: int | None = None
    ) -> list[StoredRecord]:
        """Retained records of ``topic``, partition by partition, oldest first.

        A consumer without a group reads each partition from its start to the
        end offset it had when the call began, and commits nothing.

        :raises TopicNotFoundError: if the topic does not exist.
        :raises BackendUnavailableError: if the records do not arrive within
            the request timeout.
        """
        entry = await self._topic_entry(topic)
        if entry is None:
            raise TopicNotFoundError(topic)

        _, starts, ends = await self._offset_range(topic, entry["partitions"])
        bounds = {
            tp: (starts.get(tp, 0), end)
            for tp, end in ends.items()
            if end > starts.get(tp, 0)
        }
        if not bounds or limit == 0:
            return []

        records = await self._read_partitions(bounds)
        records.sort(key=lambda r: (r.partition, int(r.offset)))
        return records if limit is None else records[:limit]

    async def _read_partitions(
        self, bounds: Mapping[TopicPartition, tuple[int, int]]
    ) -> list[StoredRecord]:
        options = client_options(self.settings, "browse")
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **options)
        records: list[StoredRecord] = []
        deadline = time.monotonic() + self.settings.request_timeout_ms / 1000

        try:
            await consumer.start()
            consumer.assign(list(bounds))
            for tp, (start, _) in bounds.items():
                consumer.seek(tp, start)

            remaining = set(bounds)
            while remaining:
                if time.monotonic() > deadline:
                    raise BackendUnavailableError(
                        f"reading {sorted(tp.partition for tp in remaining)} of "
                        "the topic did not finish within the request timeout"
                    )
                batches = await consumer.getmany(timeout_ms=200)
                for tp, batch in batches.items():
                    end = bounds[tp][1]
                    records.extend(
                        StoredRecord(tp.partition, str(r.offset), r.value)
                        for r in batch
                        if r.offset < end and r.value is not None
                    )
                for tp in list(remaining):
                    if await consumer.position(tp) >= bounds[tp][1]:
                        remaining.discard(tp)
                        consumer.pause(tp)
        except (KafkaError, OSError) as exc:
            raise translate_error(exc, "read the topic") from exc
        finally:
            await consumer.stop()
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
        """A consumer-group member, or a broadcast reader if ``group_id`` is None."""
        stream = _TrackedStream(
            self, topic, group_id, sink, start=start, prefetch=prefetch
        )
        self._streams.add(stream)
        return stream

    # -- cluster administration -------------------------------------------------

    async def cluster_metadata(self) -> KafkaMetadata:
        """Brokers, controller and topics of the cluster."""
        metadata = await self._metadata(None)
        brokers = tuple(
            BrokerInfo(
                node_id=b["node_id"], host=b["host"], port=b["port"], rack=b.get("rack")
            )
            for b in metadata["brokers"]
        )
        topics = {
            t["topic"]: len(t["partitions"])
            for t in metadata["topics"]
            if t["error_code"] == _NO_ERROR
        }
        return KafkaMetadata(
            cluster_id=metadata.get("cluster_id"),
            controller_id=metadata.get("controller_id"),
            brokers=brokers,
            topics=topics,
        )

    async def _all_partitions(self) -> dict[TopicPartition, int]:
        metadata = await self._metadata(None)
        return {
            TopicPartition(t["topic"], p["partition"]): p["leader"]
            for t in metadata["topics"]
            if t["error_code"] == _NO_ERROR and not t.get("is_internal", False)
            for p in t["partitions"]
        }

    async def consumer_group_info(self, group_id: str) -> ConsumerGroupInfo:
        """Members, assignments, committed offsets and lag of a group.

        Offsets are asked for every partition of every topic by name, because
        some brokers (Tansu) drop the connection on an open-ended offset fetch.
        """
        admin = self._require_admin()
        try:
            (described,) = await admin.describe_consumer_groups([group_id])
            partitions = await self._all_partitions()
            committed = await admin.list_consumer_group_offsets(
                group_id, partitions=list(partitions)
            )
        except (KafkaError, OSError) as exc:
            raise translate_error(exc, f"describe consumer group {group_id!r}") from exc

        group = described.to_object()["groups"][0]
        members = tuple(_member(m) for m in group["members"])
        stored = {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
        ends = await self._end_offsets(
            {tp: partitions[tp] for tp in stored if tp in partitions}, _LATEST
        )

        offsets = tuple(
            PartitionOffsets(
                topic=tp.topic,
                partition=tp.partition,
                committed_offset=offset,
                end_offset=ends.get(tp),
                lag=max(0, ends[tp] - offset) if tp in ends else None,
            )
            for tp, offset in sorted(stored.items())
        )
        return ConsumerGroupInfo(
            group_id=group_id,
            state=group["state"] or "Unknown",
            protocol=group["protocol"] or None,
            members=members,
            offsets=offsets,
        )

    async def reset_group_offsets(self, group_id: str, topic: str, offset: int) -> None:
        """Move a group's position on every partition of ``topic``.

        :param offset: the next offset to read; ``-2`` for the start of each
            partition and ``-1`` for its end; clamped to what is retained.
        :raises ConsumerGroupActiveError: if the group has members.
        :raises TopicNotFoundError: if the topic does not exist.
        """
        entry = await self._topic_entry(topic)
        if entry is None:
            raise TopicNotFoundError(topic)
        all_partitions, starts, ends = await self._offset_range(
            topic, entry["partitions"]
        )
        targets = {
            tp: _target_offset(offset, starts.get(tp, 0), ends.get(tp, 0))
            for tp in all_partitions
        }

        # A manually assigned consumer commits without joining the group,
        # which the coordinator accepts only while the group has no members.
        # Asking it is the one reliable test: some brokers (Tansu) keep listing
        # members that have left.
        options = client_options(self.settings, "offset-reset")
        consumer = AIOKafkaConsumer(
            group_id=group_id, enable_auto_commit=False, **options
        )
        try:
            await consumer.start()
            consumer.assign(list(targets))
            await consumer.commit(targets)
        except _GROUP_BUSY_ERRORS as exc:
            raise ConsumerGroupActiveError(group_id, type(exc).__name__) from exc
        except (KafkaError, OSError) as exc:
            raise translate_error(
                exc, f"reset offsets of group {group_id!r} on {topic!r}"
            ) from exc
        finally:
            await consumer.stop()
        logger.info("Reset group %s on topic %s to %s", group_id, topic, targets)

    async def topic_configs(self, topics: Sequence[str]) -> dict[str, dict[str, str]]:
        """Configuration of each topic, for the topics the broker describes.

        Brokers that answer DescribeConfigs with nothing (Tansu) give an empty
        dict.
        """
        if not topics:
            return {}

        admin = self._require_admin()
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        try:
            responses = await admin.describe_configs(resources)
        except (KafkaError, OSError) as exc:
            raise translate_error(exc, "describe topic configs") from exc

        configs: dict[str, dict[str, str]] = {}
        for response in responses:
            for resource in response.to_object().get("resources", []):
                if resource["error_code"] != _NO_ERROR:
                    continue
                configs[resource["resource_name"]] = {
                    entry["config_names"]: entry["config_value"]
                    for entry in resource["config_entries"]
                    if entry["config_value"] is not None
                }
        return configs

    async def alter_topic_configs(
        self, topic: str, settings: Mapping[str, ContextValue]
    ) -> str:
        """Set configuration entries of a topic, leaving the others alone.

        IncrementalAlterConfigs is tried first. Brokers without it get
        AlterConfigs, which replaces the topic's whole configuration with the
        given entries.

        :returns: the name of the call that was used.
        :raises TopicNotFoundError: if the topic does not exist.
        :raises UnsupportedOperationError: if the brokers answer neither call.
        :raises KafkaBackendError: if the brokers refuse a value.
        """
        if await self._topic_entry(topic) is None:
            raise TopicNotFoundError(topic)

        configs = {k: _config_text(v) for k, v in settings.items()}
        request = incremental_alter_request(topic, configs)
        if request is not None:
            try:
                response = await self._send_any(request)
            except IncompatibleBrokerVersion:
                logger.debug("No IncrementalAlterConfigs; trying AlterConfigs")
            except (KafkaError, OSError) as exc:
                raise translate_error(exc, f"alter configs of {topic!r}") from exc
            else:
                _raise_for_resources(
                    response.to_object()["responses"], f"alter configs of {topic!r}"
                )
                return "IncrementalAlterConfigs"

        admin = self._require_admin()
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)
        try:
            responses = await admin.alter_configs([resource])
        except IncompatibleBrokerVersion as exc:
            raise UnsupportedOperationError(
                self.name,
                "altering topic configs",
                "the brokers offer neither IncrementalAlterConfigs nor an "
                "AlterConfigs version this client speaks",
            ) from exc
        except (KafkaError, OSError) as exc:
            raise translate_error(exc, f"alter configs of {topic!r}") from exc

        for response in responses:
            _raise_for_resources(
                response.to_object()["resources"], f"alter configs of {topic!r}"
            )
        return "AlterConfigs"

    async def _send_any(self, request: Any) -> Any:
        client = self._require_client()
        node = client.get_random_node()
        return await client.send(node, request)


class _TrackedStream(KafkaStream):
    """A stream that forgets itself in its backend once closed."""

    async def close(self) -> None:
        await super().close()
        self._backend._streams.discard(self)


def _append(batch: Any, record: OutboundRecord) -> bool:
    """Add ``record`` to an aiokafka ``BatchBuilder``; ``False`` if it is full."""
    metadata = batch.append(key=record.key, value=record.payload, timestamp=None)
    return metadata is not None


async def _stop_producer(producer: AIOKafkaProducer) -> None:
    """Flush and stop a producer; a broker that is gone costs what was unsent."""
    try:
        await producer.stop()
    except (KafkaError, OSError) as exc:
        logger.warning("Producer stopped uncleanly, unsent messages lost: %r", exc)


def _raise_for_resources(results: Sequence[Mapping[str, Any]], operation: str) -> None:
    for result in results:
        code = result["error_code"]
        if code != _NO_ERROR:
            detail = result.get("error_message") or ""
            raise KafkaBackendError(f"{operation} ({detail})", for_code(code)())


def _config_text(value: ContextValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _target_offset(offset: int, start: int, end: int) -> int:
    if offset == _EARLIEST:
        return start
    if offset == _LATEST:
        return end
    if offset < 0:
        raise ConfigurationError(
            f"an offset is >= 0, -1 (end) or -2 (start), got {offset}"
        )
    return min(max(offset, start), end)


def _member(raw: Mapping[str, Any]) -> ConsumerGroupMember:
    assignment: tuple[tuple[str, int], ...] = ()
    blob = raw.get("member_assignment") or b""
    if blob:
        try:
            decoded = ConsumerProtocolMemberAssignment.decode(blob)
        except Exception:  # a member of another protocol type
            logger.debug("Could not decode the assignment of %s", raw["member_id"])
        else:
            assignment = tuple(
                sorted((tp.topic, tp.partition) for tp in decoded.partitions())
            )

    return ConsumerGroupMember(
        member_id=raw["member_id"],
        client_id=raw["client_id"],
        host=raw["client_host"],
        assignment=assignment,
    )


def _outcome_for(
    topic: str, results: Sequence[Sequence[Any]], action: str, benign: int
) -> bool:
    """Read a topic's error code from an admin response.

    :returns: ``False`` when the code is ``benign`` (the topic already existed,
        or was already gone), ``True`` when the call succeeded.
    :raises KafkaBackendError: for any other error code.
    """
    for name, code, *_ in results:
        if name != topic or code == _NO_ERROR:
            continue
        if code == benign:
            return False
        raise KafkaBackendError(f"{action} topic {topic!r}", for_code(code)())
    return True
