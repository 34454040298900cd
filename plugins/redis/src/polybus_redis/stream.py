"""Reading topics: durable group members with partition leases, and broadcasts.

A member of a consumer group (:class:`GroupStream`) reads only the partitions
it holds a lease for. Every member renews its membership and its leases on a
heartbeat; from the list of live members each one works out which partitions
are its own (partition ``p`` goes to the ``p mod n``-th member), lets go of the
others and takes the free ones it wants. A partition is let go in this order:
stop fetching, :meth:`DeliverySink.revoke` (running handlers finish), wait for
the acks to be stored, then release the lease, so nobody reads a partition
before its previous owner is done with it.

A new owner first takes over the partition's pending entries in id order
(``XAUTOCLAIM`` from ``0-0``, every page) and hands them to the sink before any
new entry, so unacknowledged messages come back in order. If the previous
owner did not hand the partition over (it crashed, or lost its connection and
its lease expired), the new owner first waits until those entries have been
idle for ``claim_idle_ms``.

A broadcast subscription (:class:`BroadcastStream`) remembers the last id of
each partition when it starts and reads on from there with ``XREAD``.

Both kinds survive a lost connection or a server restart: they back off, read
on from where they stopped and, if the group vanished with the server's data,
create it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final
from uuid import uuid4

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from polybus.backend import Delivery, DeliverySink, StartPosition, Stream
from polybus.errors import TopicNotFoundError
from polybus_redis._scripts import (
    ACQUIRE_LEASE,
    CREATE_GROUP,
    HEARTBEAT,
    RELEASE_LEASE,
    RENEW_LEASE,
)

if TYPE_CHECKING:
    from polybus_redis.backend import RedisBackend

__all__ = ["TRANSIENT_ERRORS", "BroadcastStream", "GroupStream"]

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS: Final = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors after which the same call may succeed: lost connection, restart,
server still loading its data."""

# Every loop here also checks a stop flag: a cancellation that arrives while
# redis-py waits for a reply under a read timeout can be swallowed (the timeout
# and the cancellation race), and the loop must end all the same.

_BACKOFF_START: Final = 0.05
_BACKOFF_MAX: Final = 2.0
_LEASE_SAFETY: Final = 0.8
"""Share of the lease life a member trusts its lease for, counted from when it
sent the renewal, so it stops reading before the server lets the lease go."""


class _Backoff:
    """Exponential delay between attempts, reset by a success."""

    def __init__(self) -> None:
        self.delay = _BACKOFF_START

    def reset(self) -> None:
        self.delay = _BACKOFF_START

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, _BACKOFF_MAX)


def _next_id(entry_id: bytes) -> bytes:
    """The smallest stream id after ``entry_id``."""
    ms, _, seq = entry_id.partition(b"-")
    return b"%s-%d" % (ms, int(seq or b"0") + 1)


class _LeaseEnded(Exception):
    """The member can no longer trust its lease; the reader must stop."""


async def _no_ack() -> None:
    """Broadcast deliveries have nothing to acknowledge."""


# -- acknowledgements ---------------------------------------------------------


class _Acker:
    """Sends the ``XACK`` of one partition, sharing round trips.

    :meth:`ack` returns once the id is queued; the ids queued within ``linger``
    seconds, or while an ``XACK`` is on the wire, go out together in one.
    :meth:`flush` sends at once and waits until every queued id is stored.
    """

    def __init__(self, client: Redis, stream: str, group: str, linger: float) -> None:
        self._client = client
        self._stream = stream
        self._group = group
        self._linger = linger
        self._ids: list[bytes] = []
        self._now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def ack(self, entry_id: bytes) -> None:
        self._ids.append(entry_id)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                self._send(), name=f"polybus-redis-ack-{self._stream}"
            )

    async def _send(self) -> None:
        backoff = _Backoff()

        if self._linger:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._linger):
                    await self._now.wait()

        while self._ids:
            ids = self._ids[:]
            try:
                await self._client.xack(self._stream, self._group, *ids)
            except TRANSIENT_ERRORS as exc:
                logger.warning(
                    "XACK of %d entries on %s failed, retrying: %r",
                    len(ids),
                    self._stream,
                    exc,
                )
                await backoff.wait()
                continue
            except ResponseError as exc:
                logger.warning(
                    "Dropped %d acks on %s: %s (the group or stream is gone)",
                    len(ids),
                    self._stream,
                    exc,
                )
            del self._ids[: len(ids)]
            backoff.reset()

    async def flush(self, timeout: float) -> None:
        """Wait until every queued ack is stored, up to ``timeout`` seconds."""
        task = self._task
        if task is None or task.done():
            return

        self._now.set()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            logger.error(
                "%d acks on %s could not be stored within %.1fs; those messages "
                "will be delivered again",
                len(self._ids),
                self._stream,
                timeout,
            )
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# -- group members ------------------------------------------------------------


class GroupStream(Stream):
    """One member of a durable consumer group.

    :param backend: the backend whose client and settings it uses.
    :param topic: the topic read.
    :param group_id: the consumer group joined.
    :param sink: where deliveries go (the dispatcher).
    :param start: where a new group starts.
    :param prefetch: entries fetched per read.
    """

    def __init__(
        self,
        backend: RedisBackend,
        topic: str,
        group_id: str,
        sink: DeliverySink,
        *,
        start: StartPosition,
        prefetch: int,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.member = uuid4().hex
        self._backend = backend
        self._settings = backend.settings
        self._keys = backend.keys
        self._sink = sink
        self._start = start
        self._prefetch = prefetch
        self._partition_count = 0
        self._readers: dict[int, _PartitionReader] = {}
        self._leaving: dict[int, tuple[asyncio.Task[None], bool]] = {}
        self._wanted: set[int] = set()
        self._lease_deadline = 0.0
        self._fetching = False
        self._closing = False
        self._topic_gone = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._channel = backend.keys.rebalance_channel(topic, group_id)
        self._lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def client(self) -> Redis:
        return self._backend.client

    @property
    def reader(self) -> Redis:
        return self._backend.reader

    @property
    def read_turns(self) -> asyncio.Semaphore:
        return self._backend.read_turns

    @property
    def partitions(self) -> list[int]:
        """Partitions this member owns now."""
        return sorted(self._readers)

    def lease_valid(self) -> bool:
        """Whether this member may still trust its leases."""
        return time.monotonic() < self._lease_deadline

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._partition_count = await self._backend.partition_count(self.topic)

        start_id = "$" if self._start == "latest" else "0"
        if not await self._backend._guard(self.create_group(start_id)):
            raise TopicNotFoundError(self.topic)

        self._fetching = True
        self._backend._register(self)
        notifier = self._backend.notifier
        await notifier.watch(self._channel, self._wake.set)
        await self._backend._guard(self._rebalance())
        await notifier.notify(self._channel)
        self._heartbeat = asyncio.create_task(
            self._heartbeat_loop(),
            name=f"polybus-redis-heartbeat-{self.topic}-{self.group_id}",
        )

        # The group is live already; waiting for this member's share only
        # spares the first messages a hand-over right after they arrive.
        try:
            async with asyncio.timeout(self._settings.lease_ttl_ms / 1000):
                await self._settled.wait()
        except TimeoutError:
            logger.debug(
                "Member %s of group %s started before all its partitions were "
                "handed over",
                self.member,
                self.group_id,
            )
        logger.debug(
            "Member %s of group %s on topic %s started with partitions %s",
            self.member,
            self.group_id,
            self.topic,
            self.partitions,
        )

    async def create_group(self, start_id: str) -> bool:
        """Create the group on every partition; ``False`` if the topic is gone."""
        keys = self._keys
        streams = [keys.partition(self.topic, p) for p in range(self._partition_count)]
        created = await CREATE_GROUP(
            self.client,
            [keys.meta(self.topic), keys.groups(self.topic), *streams],
            [self.group_id, start_id],
        )
        return bool(created)

    async def stop_fetching(self) -> None:
        if not self._fetching:
            return

        self._fetching = False
        readers = list(self._readers.values())

        for reader in readers:
            reader.stop()
        await asyncio.gather(*(r.task for r in readers), return_exceptions=True)

        # Leave the member list at once, so the others start planning without
        # this member; its partitions follow when close() releases them.
        await self._leave()
        await self._backend.notifier.notify(self._channel)

    async def close(self) -> None:
        await self.stop_fetching()
        self._backend._unregister(self)

        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None

        async with self._lock:
            for partition in list(self._readers):
                self._let_go(partition, release=True)
            await self._settle_leaving()
            await self._leave()
        notifier = self._backend.notifier
        await notifier.unwatch(self._channel, self._wake.set)
        await notifier.notify(self._channel)
        logger.debug(
            "Member %s left group %s on topic %s",
            self.member,
            self.group_id,
            self.topic,
        )

    async def _leave(self) -> None:
        try:
            await HEARTBEAT(
                self.client,
                [
                    self._keys.members(self.topic, self.group_id),
                    self._keys.meta(self.topic),
                ],
                [self.member, self._settings.lease_ttl_ms, "leave"],
            )
        except TRANSIENT_ERRORS as exc:
            logger.warning(
                "Member %s could not leave group %s cleanly (%r); it drops out "
                "when its membership expires",
                self.member,
                self.group_id,
                exc,
            )

    async def pause(self) -> None:
        self._resumed.clear()

    async def resume(self) -> None:
        self._resumed.set()

    # -- heartbeat and rebalancing --------------------------------------------

    async def _heartbeat_loop(self) -> None:
        ttl = self._settings.lease_ttl_ms / 1000

        while not self._closing:
            interval = ttl / 3
            if self._wants_more():
                interval = min(interval, 0.1)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
            # a cancellation that arrives as the event is set, and the loop
            # would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()

            try:
                await self._rebalance()
            except TRANSIENT_ERRORS as exc:
                logger.warning(
                    "Heartbeat of member %s in group %s failed: %r",
                    self.member,
                    self.group_id,
                    exc,
                )
                if not self.lease_valid():
                    await self._drop_all("its leases may have expired")
            except ResponseError as exc:
                logger.error(
                    "Heartbeat of member %s in group %s was refused: %s",
                    self.member,
                    self.group_id,
                    exc,
                )
                if not self.lease_valid():
                    await self._drop_all("its leases may have expired")

    def _wants_more(self) -> bool:
        return self._fetching and len(self._readers) < len(self._wanted)

    async def _drop_all(self, reason: str) -> None:
        async with self._lock:
            if not self._readers:
                return

            logger.warning(
                "Member %s of group %s gives up partitions %s: %s",
                self.member,
                self.group_id,
                self.partitions,
                reason,
            )
            for partition in list(self._readers):
                self._let_go(partition, release=False)
            self._sink.assigned(self.partitions)

    async def _rebalance(self) -> None:
        """Renew membership and leases, then let go of and take partitions."""
        async with self._lock:
            sent = time.monotonic()
            members = await self._heartbeat_once()
            if members is None:
                await self._on_topic_gone()
                return

            lost = await self._renew_leases()
            self._lease_deadline = (
                sent + self._settings.lease_ttl_ms / 1000 * _LEASE_SAFETY
            )
            for partition in lost:
                logger.warning(
                    "Member %s of group %s lost the lease of %s[%d]",
                    self.member,
                    self.group_id,
                    self.topic,
                    partition,
                )
                self._let_go(partition, release=False)

            if not self._fetching:
                # Stopping: out of the member list already, so the others plan
                # without this member, but the leases stay until close() has
                # let the running handlers finish.
                self._sink.assigned(self.partitions)
                return

            for partition, reader in list(self._readers.items()):
                if reader.task.done():
                    # It stopped on its own (its lease looked expired, or it
                    # failed): hand the partition over cleanly and start again.
                    self._let_go(partition, release=True)

            self._wanted = self._share(members)
            for partition in sorted(set(self._readers) - self._wanted):
                self._let_go(partition, release=True)

            busy = set(self._readers) | set(self._leaving)
            for partition in sorted(self._wanted - busy):
                await self._take(partition)

            if self._wanted <= set(self._readers):
                self._settled.set()
            else:
                self._settled.clear()

            self._sink.assigned(self.partitions)

    async def _heartbeat_once(self) -> list[str] | None:
        """Renew (or, once stopping, drop) the membership; ``None`` if no topic."""
        keys = self._keys
        mode = "beat" if self._fetching else "leave"
        members = await HEARTBEAT(
            self.client,
            [keys.members(self.topic, self.group_id), keys.meta(self.topic)],
            [self.member, self._settings.lease_ttl_ms, mode],
        )
        if members is None:
            return None

        self._topic_gone = False
        return [m.decode() for m in members]

    async def _on_topic_gone(self) -> None:
        if not self._topic_gone:
            logger.warning(
                "Topic %s is gone; member %s of group %s waits for it to return",
                self.topic,
                self.member,
                self.group_id,
            )
        self._topic_gone = True
        self._wanted = set()

        for partition in list(self._readers):
            self._let_go(partition, release=False)
        self._sink.assigned(self.partitions)

    async def _renew_leases(self) -> list[int]:
        """Renew every lease still held; return the partitions whose lease is lost.

        Partitions being let go keep their lease until their handlers finish.
        """
        handing_over = [p for p, (_, release) in self._leaving.items() if release]
        owned = sorted({*self._readers, *handing_over})
        if not owned:
            return []

        ttl = self._settings.lease_ttl_ms
        keys = self._keys
        results = await asyncio.gather(
            *(
                RENEW_LEASE(
                    self.client,
                    [keys.lease(self.topic, self.group_id, p)],
                    [self.member, ttl],
                )
                for p in owned
            )
        )
        return [
            p
            for p, ok in zip(owned, results, strict=True)
            if ok != 1 and p in self._readers
        ]

    def _share(self, members: Sequence[str]) -> set[int]:
        """The partitions this member should own among ``members``."""
        ordered = sorted(members)
        if self.member not in ordered:
            return set()

        index = ordered.index(self.member)
        return {p for p in range(self._partition_count) if p % len(ordered) == index}

    async def _take(self, partition: int) -> None:
        keys = self._keys
        owned, handed_over = await ACQUIRE_LEASE(
            self.client,
            [
                keys.lease(self.topic, self.group_id, partition),
                keys.handed_over(self.topic, self.group_id, partition),
                keys.meta(self.topic),
            ],
            [self.member, self._settings.lease_ttl_ms],
        )
        if owned != 1:
            return

        logger.debug(
            "Member %s of group %s took %s[%d] (handed over: %s)",
            self.member,
            self.group_id,
            self.topic,
            partition,
            bool(handed_over),
        )
        self._readers[partition] = _PartitionReader(
            self, partition, handed_over=bool(handed_over)
        )

    def _let_go(self, partition: int, *, release: bool) -> None:
        """Start letting go of ``partition``, in the background.

        Handlers may take a while to finish; meanwhile the heartbeat goes on
        renewing this member's other leases (and this one, if it is released).
        """
        reader = self._readers.pop(partition)
        task = asyncio.create_task(
            self._hand_over(reader, release=release),
            name=f"polybus-redis-let-go-{self.topic}-{partition}",
        )
        self._leaving[partition] = (task, release)
        task.add_done_callback(lambda _: self._leaving.pop(partition, None))

    async def _settle_leaving(self) -> None:
        """Wait until every partition being let go is released."""
        tasks = [task for task, _ in self._leaving.values()]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _hand_over(self, reader: _PartitionReader, *, release: bool) -> None:
        """Stop reading; release the lease once work on the partition ended."""
        partition = reader.partition

        reader.stop()
        (outcome,) = await asyncio.gather(reader.task, return_exceptions=True)
        if isinstance(outcome, Exception):
            logger.error(
                "Reader of %s[%d] for group %s failed: %r",
                self.topic,
                partition,
                self.group_id,
                outcome,
            )

        await self._sink.revoke([partition])

        await reader.acker.flush(self._settings.lease_ttl_ms / 1000)

        if not release:
            return

        keys = self._keys
        try:
            await RELEASE_LEASE(
                self.client,
                [
                    keys.lease(self.topic, self.group_id, partition),
                    keys.handed_over(self.topic, self.group_id, partition),
                    keys.meta(self.topic),
                ],
                [self.member],
            )
        except TRANSIENT_ERRORS as exc:
            logger.warning(
                "Could not release %s[%d] of group %s (%r); it frees up when the "
                "lease expires",
                self.topic,
                partition,
                self.group_id,
                exc,
            )
        else:
            await self._backend.notifier.notify(self._channel)
        logger.debug(
            "Member %s of group %s let go of %s[%d]",
            self.member,
            self.group_id,
            self.topic,
            partition,
        )

    def _reader_failed(self) -> None:
        """Ask the heartbeat for an early round (a reader saw its lease end)."""
        self._wake.set()


class _PartitionReader:
    """Reads one leased partition for its group member."""

    def __init__(
        self, member: GroupStream, partition: int, *, handed_over: bool
    ) -> None:
        self.partition = partition
        self._member = member
        self._key = member._keys.partition(member.topic, partition)
        self._group = member.group_id
        self._consumer = member.member
        self._handed_over = handed_over
        self._last_id = b"0-0"
        self._stopped = False
        self.acker = _Acker(
            member.client,
            self._key,
            self._group,
            member._settings.ack_linger_ms / 1000,
        )
        self.task = asyncio.create_task(
            self._run(), name=f"polybus-redis-{member.topic}-{partition}"
        )

    @property
    def _client(self) -> Redis:
        return self._member.client

    def stop(self) -> None:
        """Stop reading; nothing more reaches the sink after this returns."""
        self._stopped = True
        self.task.cancel()

    async def _run(self) -> None:
        member = self._member
        backoff = _Backoff()
        recovered = False
        history = False

        while not self._stopped:
            await member._resumed.wait()
            if not member.lease_valid():
                member._reader_failed()
                return

            try:
                if not recovered:
                    await self._recover()
                    recovered = True
                elif history:
                    history = await self._read_history()
                else:
                    await self._read_new()
            except _LeaseEnded:
                member._reader_failed()
                return
            except TRANSIENT_ERRORS as exc:
                logger.warning(
                    "Reading %s for group %s failed, retrying: %r",
                    self._key,
                    self._group,
                    exc,
                )
                history = recovered
                await backoff.wait()
                continue
            except ResponseError as exc:
                if str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    with contextlib.suppress(*TRANSIENT_ERRORS):
                        await self._group_lost()
                else:
                    logger.error(
                        "Redis refused a read of %s for group %s: %s",
                        self._key,
                        self._group,
                        exc,
                    )
                history = recovered
                await backoff.wait()
                continue
            backoff.reset()

    # -- taking over pending entries ------------------------------------------

    async def _recover(self) -> None:
        """Claim every pending entry of the partition and deliver it in order."""
        if not self._handed_over:
            await self._wait_for_idle_pending()

        start = _next_id(self._last_id) if self._last_id != b"0-0" else b"0-0"
        while True:
            cursor, claimed, deleted = await self._client.xautoclaim(
                self._key,
                self._group,
                self._consumer,
                min_idle_time=0,
                start_id=start,
                count=self._member._prefetch,
            )
            if deleted:
                logger.warning(
                    "%d pending entries of %s for group %s were trimmed before "
                    "they were acknowledged; they are dropped",
                    len(deleted),
                    self._key,
                    self._group,
                )
            await self._deliver(claimed, await self._counts(claimed))

            if cursor == b"0-0":
                return
            start = cursor

    async def _wait_for_idle_pending(self) -> None:
        """Wait until entries of other consumers are ``claim_idle_ms`` idle.

        The previous owner did not hand the partition over: it may have crashed,
        or be cut off from Redis while a handler still runs.
        """
        idle_needed = self._member._settings.claim_idle_ms

        while True:
            freshest = await self._freshest_foreign_idle()
            if freshest is None or freshest >= idle_needed:
                return

            wait = (idle_needed - freshest) / 1000
            logger.info(
                "%s for group %s was not handed over; waiting %.1fs before "
                "taking its pending entries",
                self._key,
                self._group,
                wait,
            )
            await asyncio.sleep(wait)
            if not self._member.lease_valid():
                raise _LeaseEnded

    async def _freshest_foreign_idle(self) -> int | None:
        """Smallest idle time (ms) among entries pending with other consumers."""
        freshest: int | None = None
        start: bytes | str = "-"

        while True:
            rows: Any = await self._client.xpending_range(
                self._key, self._group, min=start, max="+", count=1000
            )
            for row in rows:
                if row["consumer"].decode() == self._consumer:
                    continue
                idle = int(row["time_since_delivered"])
                freshest = idle if freshest is None else min(freshest, idle)

            if len(rows) < 1000:
                return freshest
            start = _next_id(rows[-1]["message_id"])

    async def _counts(self, entries: Sequence[tuple[bytes, Any]]) -> dict[bytes, int]:
        """How often each entry has been delivered, from the pending list."""
        if not entries:
            return {}

        rows: Any = await self._client.xpending_range(
            self._key,
            self._group,
            min=entries[0][0],
            max=entries[-1][0],
            count=len(entries),
            consumername=self._consumer,
        )
        return {r["message_id"]: int(r["times_delivered"]) for r in rows}

    # -- reading --------------------------------------------------------------

    async def _read_new(self) -> None:
        async with self._member.read_turns:
            reply: Any = await self._member.reader.xreadgroup(
                self._group,
                self._consumer,
                {self._key: ">"},
                count=self._member._prefetch,
                block=self._member._settings.block_ms,
            )
        entries = reply[0][1] if reply else []
        await self._deliver(entries, None)

    async def _read_history(self) -> bool:
        """Re-read entries the server gave us whose reply was lost.

        :returns: whether there may be more.
        """
        reply: Any = await self._client.xreadgroup(
            self._group,
            self._consumer,
            {self._key: self._last_id},
            count=self._member._prefetch,
        )
        entries = reply[0][1] if reply else []
        if not entries:
            return False

        logger.info(
            "Re-reading %d entries of %s that were handed out while the "
            "connection was lost",
            len(entries),
            self._key,
        )
        await self._deliver(entries, await self._counts(entries))
        return True

    async def _deliver(
        self,
        entries: Sequence[tuple[bytes, dict[bytes, bytes] | None]],
        counts: dict[bytes, int] | None,
    ) -> None:
        if not entries:
            return

        if not self._member.lease_valid():
            # Not handed out: they stay pending for the partition's next owner.
            raise _LeaseEnded

        sink = self._member._sink
        acker = self.acker
        for entry_id, fields in entries:
            if self._stopped:
                return  # the rest stays pending for the partition's next owner

            payload = fields.get(b"d") if fields else None
            if payload is None:
                logger.warning(
                    "Entry %s of %s has no data (trimmed or foreign); acked away",
                    entry_id,
                    self._key,
                )
                await acker.ack(entry_id)
                self._last_id = entry_id
                continue

            count = counts.get(entry_id, 1) if counts is not None else 1
            await sink.deliver(
                Delivery(
                    partition=self.partition,
                    offset=entry_id.decode(),
                    payload=payload,
                    ack=_bind_ack(acker.ack, entry_id),
                    delivery_count=count,
                )
            )
            self._last_id = entry_id

    async def _group_lost(self) -> None:
        """Create the group again after it vanished (server lost its data)."""
        member = self._member
        created = await member.create_group("0")
        if created:
            logger.warning(
                "Group %s of topic %s was missing on the server and was created "
                "again from the oldest retained entry",
                self._group,
                member.topic,
            )
            self._last_id = b"0-0"


def _bind_ack(
    ack: Callable[[bytes], Awaitable[None]], entry_id: bytes
) -> Callable[[], Awaitable[None]]:
    async def settle() -> None:
        await ack(entry_id)

    return settle


# -- broadcast ------------------------------------------------------------------


class BroadcastStream(Stream):
    """A subscription without a group: every entry added while it is live.

    :param backend: the backend whose client and settings it uses.
    :param topic: the topic read.
    :param sink: where deliveries go.
    :param prefetch: entries fetched per read.
    """

    def __init__(
        self,
        backend: RedisBackend,
        topic: str,
        sink: DeliverySink,
        *,
        prefetch: int,
    ) -> None:
        self.topic = topic
        self._backend = backend
        self._sink = sink
        self._prefetch = prefetch
        self._positions: dict[str, bytes] = {}
        self._partition_of: dict[str, int] = {}
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        backend = self._backend
        count = await backend.partition_count(self.topic)
        keys = [backend.keys.partition(self.topic, p) for p in range(count)]

        async with backend.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xrevrange(key, "+", "-", count=1)
            lasts = await backend._guard(pipe.execute())

        for partition, (key, last) in enumerate(zip(keys, lasts, strict=True)):
            self._positions[key] = last[0][0] if last else b"0-0"
            self._partition_of[key] = partition

        backend._register(self)
        self._sink.assigned(list(range(count)))
        self._task = asyncio.create_task(
            self._run(), name=f"polybus-redis-broadcast-{self.topic}"
        )
        logger.debug("Broadcast subscription on topic %s started", self.topic)

    async def _run(self) -> None:
        backoff = _Backoff()
        client = self._backend.reader
        block = self._backend.settings.block_ms

        while not self._stopped:
            await self._resumed.wait()
            try:
                async with self._backend.read_turns:
                    reply: Any = await client.xread(
                        dict(self._positions),  # type: ignore[arg-type]
                        count=self._prefetch,
                        block=block,
                    )
            except TRANSIENT_ERRORS as exc:
                logger.warning(
                    "Broadcast read of topic %s failed, retrying: %r",
                    self.topic,
                    exc,
                )
                await backoff.wait()
                continue
            backoff.reset()

            for raw_key, entries in reply or []:
                key = raw_key.decode()
                await self._deliver(key, entries)

    async def _deliver(
        self, key: str, entries: Sequence[tuple[bytes, dict[bytes, bytes] | None]]
    ) -> None:
        partition = self._partition_of[key]

        for entry_id, fields in entries:
            if self._stopped:
                return

            self._positions[key] = entry_id
            payload = fields.get(b"d") if fields else None
            if payload is None:
                continue
            await self._sink.deliver(
                Delivery(
                    partition=partition,
                    offset=entry_id.decode(),
                    payload=payload,
                    ack=_no_ack,
                )
            )

    async def stop_fetching(self) -> None:
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        await self.stop_fetching()
        self._backend._unregister(self)

    async def pause(self) -> None:
        self._resumed.clear()

    async def resume(self) -> None:
        self._resumed.set()
