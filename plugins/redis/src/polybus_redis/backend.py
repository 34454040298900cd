"""The Redis backend: topics as one stream per partition, groups as stream groups.

Topic metadata lives in Redis (a hash per topic and a set of topic names), so
every process connected to the server sees the same topics. A topic's streams
are made with it, so publishing appends with ``XADD NOMKSTREAM`` (a deleted
topic fails instead of coming back) and trims by the topic's retention;
concurrent publishes share one pipeline. Reading is in
:mod:`polybus_redis.stream`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

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
    TopicNotFoundError,
)
from polybus.types import ContextValue, TopicInfo
from polybus_redis._keys import Keys
from polybus_redis._notify import Notifier
from polybus_redis._scripts import CREATE_TOPIC, Script
from polybus_redis.settings import RedisSettings
from polybus_redis.stream import TRANSIENT_ERRORS, BroadcastStream, GroupStream

__all__ = ["CAPABILITIES", "RedisBackend"]

logger = logging.getLogger(__name__)

CAPABILITIES: Final = Capabilities(
    persistent=False,
    shared_across_processes=True,
    partition_order=True,
    redelivers_unacked=True,
    duplicates_after_crash=True,
    earliest_start=True,
    topic_message_count=True,
    max_message_bytes=512 * 1024 * 1024,
    browse=True,
    limitations={
        "durability": "messages survive a restart of Redis only as far as the "
        "server persists them: with appendonly yes and appendfsync always "
        "nothing acknowledged by XADD is lost; the default (RDB snapshots, or "
        "appendfsync everysec) can lose the last second or more, and a server "
        "without persistence loses every topic, group and message",
        "partition order": "a partition has one reader at a time through a "
        "lease in Redis; a member that cannot renew its lease stops reading "
        "before the lease expires, but a handler that keeps running longer than "
        "claim_idle_ms after that may overlap with the partition's next owner",
        "acknowledgement": "ack() returns once the XACK is queued; it is sent at "
        "once (acks that arrive meanwhile share it) and waited for before a "
        "partition is handed over, so only a crash in between brings the "
        "message back",
        "publish": "a publish retried after a lost connection may store the "
        "message twice (the first XADD may have been applied)",
        "group loss": "a group that vanished from the server (data lost in a "
        "restart) is created again at the start of the retained stream, so "
        "messages may be delivered again",
        "cluster": "Redis Cluster is not supported: topic creation touches the "
        "topic set and the topic's own keys in one script",
    },
)

_LAYOUT_MAX_AGE: Final = 30.0
"""Seconds a topic's partition count and retention are cached for publishing.
Both are fixed when the topic is created; the age only bounds how long a topic
deleted and created again elsewhere is published with its old retention."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Layout:
    """What publishing needs to know of a topic."""

    partitions: int
    maxlen: int | None
    retention_ms: int | None
    read_at: float


@dataclass(slots=True)
class _PendingPublish:
    """Records of one ``publish`` call waiting for the shared pipeline."""

    records: Sequence[OutboundRecord]
    future: asyncio.Future[list[BaseException | None]]
    outcomes: list[BaseException | None] = field(default_factory=list)


class RedisBackend(Backend):
    """Topics, groups and leases in Redis, read and written with redis-py.

    :param settings: connection and behaviour options; read from the
        environment (``POLYBUS_REDIS__*``) if omitted.
    """

    name = "redis"
    capabilities = CAPABILITIES

    def __init__(self, settings: RedisSettings | None = None) -> None:
        self.settings = settings or RedisSettings()
        self.keys = Keys(self.settings.key_prefix)
        self._client: Redis | None = None
        self._reader: Redis | None = None
        self.read_turns = asyncio.Semaphore(self.settings.read_pool_size)
        """Taken around every blocking read, first come first served: the
        read pool hands a freed connection to whoever asks next, which lets
        the readers that just gave one back starve the others."""
        self._streams: set[GroupStream | BroadcastStream] = set()
        self._queue: list[_PendingPublish] = []
        self._sender: asyncio.Task[None] | None = None
        self._notifier: Notifier | None = None
        self._layout_cache: dict[str, _Layout] = {}

    # -- lifecycle ------------------------------------------------------------

    @property
    def client(self) -> Redis:
        """The connected client.

        :raises BackendUnavailableError: if :meth:`connect` was not called.
        """
        if self._client is None:
            raise BackendUnavailableError(
                "the Redis backend is not connected; start the event bus first"
            )
        return self._client

    @property
    def notifier(self) -> Notifier:
        """Rebalance notices of the group members of this backend."""
        if self._notifier is None:
            self._notifier = Notifier(self.client)
        return self._notifier

    @property
    def reader(self) -> Redis:
        """The client of blocking reads, on a pool of its own.

        A read that waits ``block_ms`` for new entries holds its connection
        all that time; on the pool of everything else, enough of them would
        leave lease renewals and acks waiting until leases expire.

        :raises BackendUnavailableError: if :meth:`connect` was not called.
        """
        if self._reader is None:
            raise BackendUnavailableError(
                "the Redis backend is not connected; start the event bus first"
            )
        return self._reader

    async def connect(self) -> None:
        if self._client is not None:
            return

        logger.debug("Connecting to Redis at %s", self.settings.public_dict()["url"])
        client = Redis.from_pool(self._pool(self.settings.pool_size))
        reader = Redis.from_pool(self._pool(self.settings.read_pool_size))
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            await reader.aclose()
            raise BackendUnavailableError(
                f"cannot reach Redis at {self.settings.public_dict()['url']}: {exc}"
            ) from exc

        self._client, self._reader = client, reader
        logger.debug("Connected to Redis")

    def _pool(self, size: int) -> BlockingConnectionPool:
        s = self.settings
        options: dict[str, Any] = {
            "max_connections": size,
            "timeout": None,
            "socket_connect_timeout": s.connect_timeout_ms / 1000,
            "socket_keepalive": True,
            "health_check_interval": 30,
            # Retries are ours: a silent retry of XREADGROUP after a lost reply
            # would hide entries that the server already handed to us.
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
            "protocol": 2,
        }
        if s.username is not None:
            options["username"] = s.username
        if s.password is not None:
            options["password"] = s.password.get_secret_value()

        url = s.url
        if s.uses_tls:
            if url.startswith("redis://"):
                url = "rediss://" + url.removeprefix("redis://")
            options["ssl_cert_reqs"] = (
                ssl.CERT_REQUIRED if s.tls_verify else ssl.CERT_NONE
            )
            options["ssl_check_hostname"] = s.tls_verify
            if s.tls_ca_file:
                options["ssl_ca_certs"] = s.tls_ca_file
            if s.tls_cert_file:
                options["ssl_certfile"] = s.tls_cert_file
            if s.tls_key_file:
                options["ssl_keyfile"] = s.tls_key_file

        try:
            return BlockingConnectionPool.from_url(url, **options)
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL setting: {exc}") from exc

    async def close(self) -> None:
        if self._client is None:
            return

        logger.debug("Closing the Redis backend")
        for stream in list(self._streams):
            # The bus closes its streams first; these were left open.
            try:
                await stream.close()
            except (RedisError, OSError, BackendUnavailableError) as exc:
                logger.warning(
                    "Stream of topic %s did not close: %r", stream.topic, exc
                )

        client, self._client = self._client, None
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._notifier is not None:
            await self._notifier.aclose()
            self._notifier = None
        reader, self._reader = self._reader, None
        for each in (client, reader):
            if each is not None:
                await each.aclose()
                await each.connection_pool.disconnect()
        logger.debug("Redis backend closed")

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise BackendUnavailableError(f"Redis did not answer PING: {exc}") from exc

    # -- topics ---------------------------------------------------------------

    async def create_topic(
        self,
        topic: str,
        partition_count: int,
        config: Mapping[str, ContextValue] | None = None,
    ) -> bool:
        maxlen, retention_ms = self._retention(topic, config or {})

        streams = [self.keys.partition(topic, p) for p in range(partition_count)]
        created = await self._call(
            CREATE_TOPIC,
            [self.keys.meta(topic), self.keys.topics, *streams],
            [topic, partition_count, maxlen or "", retention_ms or ""],
        )
        self._layout_cache.pop(topic, None)
        if created:
            logger.debug("Created topic %s with %d partitions", topic, partition_count)
        return bool(created)

    def _retention(
        self, topic: str, config: Mapping[str, ContextValue]
    ) -> tuple[int | None, int | None]:
        maxlen = config.get("retention_maxlen", self.settings.retention_maxlen)
        retention_ms = config.get("retention_ms", self.settings.retention_ms)

        for name, value in (
            ("retention_maxlen", maxlen),
            ("retention_ms", retention_ms),
        ):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ConfigurationError(
                    f"{name} of topic {topic!r} must be a positive int or None, "
                    f"got {value!r}"
                )

        unknown = sorted(set(config) - {"retention_maxlen", "retention_ms"})
        if unknown:
            logger.warning(
                "Ignoring unknown config keys %s of topic %s", unknown, topic
            )
        return maxlen, retention_ms  # type: ignore[return-value]

    async def delete_topic(self, topic: str) -> bool:
        client = self.client
        meta = await self._guard(client.hgetall(self.keys.meta(topic)))
        if not meta:
            await self._guard(client.srem(self.keys.topics, topic))
            return False

        for stream in [s for s in self._streams if s.topic == topic]:
            await stream.stop_fetching()
        self._layout_cache.pop(topic, None)

        count = int(meta.get(b"partitions", b"0"))
        streams = [self.keys.partition(topic, p) for p in range(count)]
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.meta(topic), self.keys.groups(topic), *streams)
            pipe.srem(self.keys.topics, topic)
            await self._guard(pipe.execute())

        leftovers = await self._guard(self._scan(self.keys.topic_pattern(topic)))
        if leftovers:
            await self._guard(client.delete(*leftovers))
        logger.debug("Deleted topic %s and %d other keys", topic, len(leftovers))
        return True

    async def _scan(self, pattern: str) -> list[bytes]:
        """Every key matching ``pattern`` (leases, members, markers)."""
        return [key async for key in self.client.scan_iter(match=pattern, count=500)]

    async def describe_topic(self, topic: str) -> TopicInfo | None:
        client = self.client
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.meta(topic))
            pipe.smembers(self.keys.groups(topic))
            meta, groups = await self._guard(pipe.execute())
        if not meta:
            return None

        count = int(meta[b"partitions"])
        async with client.pipeline(transaction=False) as pipe:
            for partition in range(count):
                pipe.xlen(self.keys.partition(topic, partition))
            lengths = await self._guard(pipe.execute())

        created_ms = int(meta.get(b"created_ms", b"0"))
        return TopicInfo(
            name=topic,
            partition_count=count,
            created_at=datetime.fromtimestamp(created_ms / 1000, UTC),
            message_count=sum(int(n) for n in lengths),
            consumer_groups=tuple(sorted(g.decode() for g in groups)),
            config={
                "retention_maxlen": _int_or_none(meta.get(b"retention_maxlen")),
                "retention_ms": _int_or_none(meta.get(b"retention_ms")),
            },
        )

    async def list_topics(self) -> list[str]:
        names = await self._guard(self.client.smembers(self.keys.topics))
        return sorted(n.decode() for n in names)

    async def partition_count(self, topic: str) -> int:
        """Partitions of ``topic``.

        :raises TopicNotFoundError: if the topic does not exist.
        """
        value = await self._guard(self.client.hget(self.keys.meta(topic), "partitions"))
        if value is None:
            raise TopicNotFoundError(topic)
        return int(value)

    async def read_topic(
        self, topic: str, *, limit: int | None = None
    ) -> list[StoredRecord]:
        count = await self.partition_count(topic)

        records: list[StoredRecord] = []
        for partition in range(count):
            remaining = None if limit is None else limit - len(records)
            if remaining is not None and remaining <= 0:
                break
            entries = await self._guard(
                self.client.xrange(
                    self.keys.partition(topic, partition), count=remaining
                )
            )
            records.extend(
                StoredRecord(partition, entry_id.decode(), fields[b"d"])
                for entry_id, fields in entries
                if b"d" in fields
            )
        return records

    # -- publishing -----------------------------------------------------------

    async def publish(
        self, records: Sequence[OutboundRecord]
    ) -> list[BaseException | None]:
        if not records:
            return []

        pending = _PendingPublish(records, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(
                self._send_queued(), name="polybus-redis-publish"
            )

        return await pending.future

    async def _send_queued(self) -> None:
        """Send what callers queued, one pipeline per round trip.

        Calls that arrive while a pipeline is on the wire go out together in the
        next one, so concurrent publishers share round trips.
        """
        while self._queue:
            # One turn of the event loop lets every publisher that is ready
            # queue its records first, so they share this round trip.
            await asyncio.sleep(0)
            batch, self._queue = self._queue, []
            try:
                await self._send(batch)
            except BaseException as exc:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue

            for pending in batch:
                if not pending.future.done():
                    pending.future.set_result(pending.outcomes)

    async def _send(self, batch: Sequence[_PendingPublish]) -> None:
        todo: list[tuple[_PendingPublish, int]] = []
        for pending in batch:
            pending.outcomes = [None] * len(pending.records)
            for index, record in enumerate(pending.records):
                if len(record.payload) > self.settings.max_message_bytes:
                    pending.outcomes[index] = MessageTooLargeError(
                        record.topic,
                        len(record.payload),
                        self.settings.max_message_bytes,
                    )
                else:
                    todo.append((pending, index))
        if not todo:
            return

        topics = {pending.records[index].topic for pending, index in todo}
        layouts = await self._with_retry(lambda: self._layouts(topics))
        sendable: list[tuple[_PendingPublish, int]] = []
        for pending, index in todo:
            record = pending.records[index]
            layout = layouts.get(record.topic)
            if layout is None:
                pending.outcomes[index] = TopicNotFoundError(record.topic)
            elif not 0 <= record.partition < layout.partitions:
                name = f"{record.topic}[{record.partition}]"
                pending.outcomes[index] = TopicNotFoundError(name)
            else:
                sendable.append((pending, index))
        if not sendable:
            return

        results = await self._with_retry(
            lambda: self._pipeline_publish(sendable, layouts)
        )
        self._settle(sendable, results)

    async def _layouts(self, topics: set[str]) -> dict[str, _Layout]:
        """Partition count and retention of each topic, cached for a while."""
        now = time.monotonic()
        found: dict[str, _Layout] = {}
        missing: list[str] = []
        for topic in topics:
            cached = self._layout_cache.get(topic)
            if cached is not None and now - cached.read_at < _LAYOUT_MAX_AGE:
                found[topic] = cached
            else:
                missing.append(topic)
        if not missing:
            return found

        async with self.client.pipeline(transaction=False) as pipe:
            for topic in missing:
                pipe.hmget(
                    self.keys.meta(topic),
                    ["partitions", "retention_maxlen", "retention_ms"],
                )
            replies = await pipe.execute()

        for topic, (partitions, maxlen, retention_ms) in zip(
            missing, replies, strict=True
        ):
            if partitions is None:
                self._layout_cache.pop(topic, None)
                continue
            layout = _Layout(
                int(partitions),
                _int_or_none(maxlen),
                _int_or_none(retention_ms),
                now,
            )
            self._layout_cache[topic] = layout
            found[topic] = layout
        return found

    async def _pipeline_publish(
        self,
        todo: Sequence[tuple[_PendingPublish, int]],
        layouts: Mapping[str, _Layout],
    ) -> list[Any]:
        """``XADD NOMKSTREAM`` each record, trimming by its topic's retention.

        ``NOMKSTREAM`` makes a deleted topic fail instead of coming back: its
        streams were created with it and are removed with it.
        """
        keys = self.keys
        now_ms = int(time.time() * 1000)
        replies: list[int] = []

        async with self.client.pipeline(transaction=False) as pipe:
            for pending, index in todo:
                record = pending.records[index]
                layout = layouts[record.topic]
                stream = keys.partition(record.topic, record.partition)
                fields: dict[str | bytes, bytes] = {"d": record.payload}
                if record.key is not None:
                    fields["k"] = record.key

                replies.append(len(pipe.command_stack))
                pipe.xadd(
                    stream,
                    fields,  # type: ignore[arg-type]
                    nomkstream=True,
                    maxlen=layout.maxlen,
                    approximate=True,
                )
                if layout.retention_ms is not None:
                    oldest = max(now_ms - layout.retention_ms, 0)
                    pipe.xtrim(stream, minid=oldest, approximate=True)
            results = await pipe.execute(raise_on_error=False)

        return [results[i] for i in replies]

    def _settle(
        self, todo: Sequence[tuple[_PendingPublish, int]], results: Sequence[Any]
    ) -> None:
        """Store each record's outcome."""
        for (pending, index), result in zip(todo, results, strict=True):
            record = pending.records[index]
            if result is None:
                # The stream is gone: the topic was deleted since it was cached.
                self._layout_cache.pop(record.topic, None)
                pending.outcomes[index] = TopicNotFoundError(record.topic)
            elif isinstance(result, ResponseError):
                pending.outcomes[index] = BackendUnavailableError(
                    f"Redis refused message {record.message_id} for topic "
                    f"{record.topic!r}: {result}"
                )
            elif isinstance(result, BaseException):
                pending.outcomes[index] = result

    async def _with_retry(self, send: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``send`` until the server answers or ``publish_retry_ms`` passes."""
        try:
            return await send()
        except TRANSIENT_ERRORS as exc:
            logger.warning("Publish to Redis failed, retrying: %r", exc)

        retrying = AsyncRetrying(
            stop=stop_after_delay(self.settings.publish_retry_ms / 1000),
            wait=wait_exponential(multiplier=0.05, max=2.0) + wait_random(0, 0.05),
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            before_sleep=_log_publish_retry,
            reraise=True,
        )

        try:
            async for attempt in retrying:
                with attempt:
                    return await send()
        except TRANSIENT_ERRORS as exc:
            raise BackendUnavailableError(
                f"Redis stayed unreachable for {self.settings.publish_retry_ms} ms "
                f"while publishing: {exc}"
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

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
        if group_id is None:
            return BroadcastStream(self, topic, sink, prefetch=prefetch)
        return GroupStream(self, topic, group_id, sink, start=start, prefetch=prefetch)

    def _register(self, stream: GroupStream | BroadcastStream) -> None:
        self._streams.add(stream)

    def _unregister(self, stream: GroupStream | BroadcastStream) -> None:
        self._streams.discard(stream)

    # -- helpers --------------------------------------------------------------

    async def _call(
        self, script: Script, keys: Sequence[str], args: Sequence[str | bytes | int]
    ) -> Any:
        return await self._guard(script(self.client, keys, args))

    async def _guard(self, awaitable: Any) -> Any:
        """Await a Redis call, turning a lost connection into a polybus error."""
        try:
            return await awaitable
        except TRANSIENT_ERRORS as exc:
            raise BackendUnavailableError(f"Redis is unreachable: {exc}") from exc


def _int_or_none(value: bytes | None) -> int | None:
    return int(value) if value is not None else None


def _log_publish_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    logger.warning(
        "Publish to Redis failed (attempt %d), retrying: %r",
        state.attempt_number,
        error,
    )
