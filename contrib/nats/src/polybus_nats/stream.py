"""Reading a topic: pull consumers, pull requests, acks and giving messages back.

A subscription reads through JetStream pull consumers, asking for messages with
pull requests sent from an inbox of its own (:class:`Puller`). Doing the pull
protocol here, rather than through the client's fetch helper, lets a leaving
member keep its inbox until its last request has expired and give back
(``nak``) anything the server still sends there, so no message is stranded on
a member that is gone.

- A consumer group has one durable consumer per partition with
  ``max_ack_pending=1``: the server hands a partition's next message to a
  member only once the previous one is acknowledged, whichever member held
  it. Every member pulls from every partition, so members share the work
  message by message and per-partition order holds across members without
  any partition assignment.
- A broadcast subscription has one ephemeral consumer over all partitions,
  created with deliver policy ``new`` and no acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import nats.errors
from nats.aio.msg import Msg
from polybus.backend import Delivery, DeliverySink, StartPosition, Stream
from polybus.errors import BackendUnavailableError

from polybus_nats.naming import TopicNames, consumer_name

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.subscription import Subscription

    from polybus_nats.backend import NatsBackend

__all__ = ["NatsStream", "Puller"]

logger = logging.getLogger(__name__)

_REQUEST_MARGIN: Final = 0.1
"""Seconds past a pull request's expiry before it is taken as over without
the server saying so."""

_SILENT_REQUESTS: Final = 2
"""Pull requests in a row that end with no answer at all, not even the
server's timeout status, before the consumer is looked for: the server stays
silent when a request names a consumer that does not exist."""

_STATUS_HEADER: Final = "Status"
_DESCRIPTION_HEADER: Final = "Description"


class ConsumerGoneError(Exception):
    """The consumer was deleted, with its topic."""


def _status(msg: Msg) -> str | None:
    return msg.headers.get(_STATUS_HEADER) if msg.headers else None


class Puller:
    """Pull requests on one consumer, answered on an inbox of its own.

    :param client: the connection.
    :param api_subject: ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``.
    :param batch: messages asked for by one request.
    :param expires: seconds one request waits on the server.
    :param give_back: ``nak`` messages that arrive after :meth:`leave`
        (consumers with acks); otherwise they are dropped.
    """

    def __init__(
        self,
        client: Client,
        api_subject: str,
        *,
        batch: int,
        expires: float,
        give_back: bool,
    ) -> None:
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._client = client
        self._api_subject = api_subject
        self._inbox = client.new_inbox()
        self._batch = batch
        self._expires = expires
        self._give_back = give_back
        self._subscription: Subscription | None = None
        self._open_until = 0.0
        self._remaining = 0
        """Messages the open request may still bring; 0 once it is over."""
        self._leaving = False
        self._request_over = asyncio.Event()
        self.silent = 0
        """Requests in a row that ended without any answer."""

    async def open(self) -> None:
        """Subscribe the inbox."""
        self._subscription = await self._client.subscribe(self._inbox, cb=self._arrived)

    def retarget(self, api_subject: str) -> None:
        """Send further requests to another consumer."""
        self._api_subject = api_subject
        self.silent = 0

    async def request(self) -> None:
        """Ask the consumer for up to ``batch`` messages."""
        payload = json.dumps(
            {"batch": self._batch, "expires": int(self._expires * 1e9)}
        ).encode()

        self._remaining = self._batch
        self._request_over.clear()
        self._open_until = time.monotonic() + self._expires + _REQUEST_MARGIN
        await self._client.publish(self._api_subject, payload, reply=self._inbox)

    async def next(self) -> Msg | None:
        """The next message of the current request, or ``None`` once it is over.

        :raises ConsumerGoneError: if the server deleted the consumer.
        """
        while self._remaining > 0:
            # What already arrived is taken whatever the time: a slow sink may
            # have kept us past the request's expiry while it was answered.
            timeout = max(0.0, self._open_until - time.monotonic())
            if self.queue.empty() and timeout == 0:
                self.silent += 1
                self._remaining = 0
                return None

            # asyncio.timeout rather than wait_for: a message taken off the
            # queue is never lost to a cancellation racing with the timeout.
            try:
                async with asyncio.timeout(timeout or None):
                    msg = await self.queue.get()
            except TimeoutError:
                self.silent += 1
                self._remaining = 0
                return None

            self.silent = 0
            status = _status(msg)
            if status is None:
                self._remaining -= 1
                return msg

            self._remaining = 0
            await self._on_status(status, msg)
            return None

        return None

    async def _on_status(self, status: str, msg: Msg) -> None:
        description = msg.headers.get(_DESCRIPTION_HEADER, "") if msg.headers else ""
        if status in ("404", "408"):
            return

        if "deleted" in description.lower():
            raise ConsumerGoneError(description)

        # Anything else (too many waiting requests, a leader change) ends the
        # request; waiting out its life keeps a persistent cause from turning
        # into a busy loop of requests.
        logger.warning(
            "Pull request on %s ended with status %s (%s); asking again later",
            self._api_subject,
            status,
            description,
        )
        await asyncio.sleep(max(0.0, self._open_until - time.monotonic()))

    async def _arrived(self, msg: Msg) -> None:
        if not self._leaving:
            self.queue.put_nowait(msg)
            return

        await self._settle_late(msg)
        if self._remaining <= 0:
            self._request_over.set()

    async def _settle_late(self, msg: Msg) -> None:
        """Account for what the open request brings after :meth:`leave`."""
        if _status(msg) is not None:
            self._remaining = 0
            return

        self._remaining -= 1
        if self._give_back:
            await _give_back(msg)

    async def leave(self) -> None:
        """Stop: hand back what is queued or still arrives, then unsubscribe.

        With ``give_back``, the inbox stays subscribed until the open request
        is over (answered in full, or expired), so a message the server sends
        meanwhile is returned to the consumer at once instead of waiting out
        its ack wait.
        """
        self._leaving = True
        while not self.queue.empty():
            await self._settle_late(self.queue.get_nowait())

        remaining = self._open_until - time.monotonic()
        if self._give_back and self._remaining > 0 and remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._request_over.wait(), remaining)

        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()
            self._subscription = None


async def _give_back(msg: Msg) -> None:
    try:
        await msg.nak()
    except nats.errors.Error as exc:
        logger.debug("Could not give message %s back: %r", msg.reply, exc)


@dataclass(slots=True)
class _Held:
    """A group message handed to the dispatcher and not yet acknowledged."""

    msg: Msg
    since: float


async def _nothing_to_ack() -> None:
    """Broadcast consumers do not acknowledge."""


class NatsStream(Stream):
    """One subscription's read of a topic, as a group member or a broadcast."""

    def __init__(
        self,
        backend: NatsBackend,
        topic: str,
        group_id: str | None,
        sink: DeliverySink,
        *,
        start: StartPosition,
        prefetch: int,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self._backend = backend
        self._sink = sink
        self._start = start
        self._prefetch = prefetch
        self._names: TopicNames = backend.names(topic)
        self._pullers: dict[int, Puller] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._renewer: asyncio.Task[None] | None = None
        self._held: dict[int, _Held] = {}
        self._fetching = asyncio.Event()
        self._fetching.set()
        self._broadcast_consumer: str | None = None
        self._broadcast_next = 0
        self._live = False

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Create the consumers, fixing positions, and start pulling.

        :raises TopicNotFoundError: if the topic does not exist.
        """
        partitions = await self._backend.partition_count(self._names)
        settings = self._backend.settings
        expires = settings.pull_expires_ms / 1000

        if self.group_id is None:
            await self._open_broadcast(expires)
        else:
            await self._open_group(self.group_id, partitions, expires)

        for puller in self._pullers.values():
            await puller.open()

        self._live = True
        self._backend.streams.add(self)
        for partition, puller in self._pullers.items():
            self._readers.append(
                asyncio.create_task(
                    self._read(partition, puller),
                    name=f"polybus-nats-{self.topic}-{partition}",
                )
            )
        if self.group_id is not None:
            self._renewer = asyncio.create_task(
                self._renew_held(), name=f"polybus-nats-renew-{self.topic}"
            )

        self._sink.assigned(list(range(partitions)))
        logger.debug(
            "Reading topic %s (group %s) on %d partitions",
            self.topic,
            self.group_id,
            partitions,
        )

    async def _open_group(self, group_id: str, partitions: int, expires: float) -> None:
        consumers = await asyncio.gather(
            *(
                self._backend.group_consumer(
                    self._names, group_id, partition, self._start
                )
                for partition in range(partitions)
            )
        )

        for partition, consumer in enumerate(consumers):
            self._pullers[partition] = Puller(
                self._backend.client,
                self._backend.pull_subject(self._names, consumer),
                batch=1,
                expires=expires,
                give_back=True,
            )

    async def _open_broadcast(self, expires: float) -> None:
        consumer, self._broadcast_next = await self._backend.broadcast_consumer(
            self._names
        )
        self._broadcast_consumer = consumer

        # Partition -1 stands for "all": one consumer reads every partition and
        # each message says its own partition in its subject.
        self._pullers[-1] = Puller(
            self._backend.client,
            self._backend.pull_subject(self._names, consumer),
            batch=self._prefetch,
            expires=expires,
            give_back=False,
        )

    async def stop_fetching(self) -> None:
        """Stop pulling; whatever still arrives is given back to the group."""
        if not self._live:
            return
        self._live = False

        readers, self._readers = self._readers, []
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

        for puller in self._pullers.values():
            self._backend.track(puller.leave())
        self._pullers.clear()

    async def close(self) -> None:
        """Leave: give back every message not acknowledged, drop the consumer."""
        await self.stop_fetching()
        self._backend.streams.discard(self)

        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None

        held = sorted(self._held.items())
        self._held.clear()
        for _, entry in held:
            await _give_back(entry.msg)
        if held:
            logger.debug(
                "Gave %d unacknowledged messages of topic %s back to group %s",
                len(held),
                self.topic,
                self.group_id,
            )

        consumer, self._broadcast_consumer = self._broadcast_consumer, None
        if consumer is not None:
            await self._backend.drop_consumer(self._names, consumer)

    async def pause(self) -> None:
        """Send no further pull request until :meth:`resume`."""
        self._fetching.clear()

    async def resume(self) -> None:
        """Pull again."""
        self._fetching.set()

    # -- reading --------------------------------------------------------------

    async def _read(self, partition: int, puller: Puller) -> None:
        pause = self._backend.settings.pull_expires_ms / 1000

        while True:
            try:
                await self._pull_once(partition, puller)
            except ConsumerGoneError as gone:
                logger.debug("Consumer of topic %s is gone: %s", self.topic, gone)
                return
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionDrainingError,
            ):
                logger.debug("Connection closed under the reader of %s", self.topic)
                return
            except (nats.errors.Error, BackendUnavailableError) as exc:
                logger.warning(
                    "Reading partition %d of topic %s failed, trying again in "
                    "%.1fs: %r",
                    partition,
                    self.topic,
                    pause,
                    exc,
                )
                await asyncio.sleep(pause)

    async def _pull_once(self, partition: int, puller: Puller) -> None:
        """One pull request, its messages handed over, then a check on silence."""
        await self._fetching.wait()
        await puller.request()

        while (msg := await puller.next()) is not None:
            await self._hand_over(partition, msg)

        if puller.silent >= _SILENT_REQUESTS:
            await self._find_consumer(partition, puller)

    async def _hand_over(self, partition: int, msg: Msg) -> None:
        metadata = msg.metadata
        sequence = metadata.sequence.stream

        if self.group_id is None:
            try:
                partition = self._names.partition_of(msg.subject)
            except ValueError:
                logger.error("Dropped a message on a foreign subject %s", msg.subject)
                return
            ack: Callable[[], Awaitable[None]] = _nothing_to_ack
            self._broadcast_next = sequence + 1
        else:
            self._held[sequence] = _Held(msg, time.monotonic())
            ack = functools.partial(self._ack, sequence, msg)

        delivery = Delivery(
            partition=partition,
            offset=str(sequence),
            payload=msg.data,
            ack=ack,
            delivery_count=metadata.num_delivered,
        )
        await self._sink.deliver(delivery)

    async def _find_consumer(self, partition: int, puller: Puller) -> None:
        """Make the consumer again if it is gone while its topic is not.

        The server removes a broadcast consumer that pulled nothing for
        ``broadcast_inactive_ms`` (a long pause), and an operator may delete
        any consumer; a request to a missing consumer is never answered.

        :raises ConsumerGoneError: if the topic itself is gone.
        """
        puller.silent = 0
        if self.group_id is None:
            consumer = self._broadcast_consumer
        else:
            consumer = consumer_name(self.group_id, partition)
        if consumer is None or await self._backend.has_consumer(self._names, consumer):
            return

        if not await self._backend.has_topic(self._names):
            raise ConsumerGoneError(f"topic {self.topic!r} was deleted")

        if self.group_id is None:
            logger.warning(
                "Broadcast consumer of topic %s was removed by the server; "
                "reading on from sequence %d with a new one",
                self.topic,
                self._broadcast_next,
            )
            consumer, self._broadcast_next = await self._backend.broadcast_consumer(
                self._names, from_sequence=self._broadcast_next
            )
            self._broadcast_consumer = consumer
        else:
            logger.error(
                "Consumer of group %s on partition %d of topic %s was deleted "
                "outside polybus; making it again at the %s position",
                self.group_id,
                partition,
                self.topic,
                self._start,
            )
            await self._backend.group_consumer(
                self._names, self.group_id, partition, self._start
            )

        puller.retarget(self._backend.pull_subject(self._names, consumer))

    async def _ack(self, sequence: int, msg: Msg) -> None:
        timeout = self._backend.settings.request_timeout_ms / 1000
        try:
            await msg.ack_sync(timeout=timeout)
        except nats.errors.Error as exc:
            raise BackendUnavailableError(
                f"the ack of message {sequence} of topic {self.topic!r} was not "
                f"confirmed: {exc!r}; it will be delivered again"
            ) from exc
        finally:
            # Held or not, the message is ours no more: renewing it after a
            # lost ack would keep it, and its partition, from the group
            # until max_handling_ms instead of ack_wait_ms.
            self._held.pop(sequence, None)

    async def _renew_held(self) -> None:
        """Tell the server, every third of the ack wait, which messages we hold."""
        settings = self._backend.settings
        period = settings.ack_wait_ms / 3000
        longest = settings.max_handling_ms / 1000

        while True:
            await asyncio.sleep(period)

            now = time.monotonic()
            for sequence, entry in list(self._held.items()):
                if now - entry.since > longest:
                    # TODO: a handler that legitimately runs past max_handling_ms
                    # loses its message to another member, which may then
                    # handle it concurrently and out of order.
                    logger.warning(
                        "Message %s of topic %s held for over %.0fs; letting the "
                        "group have it again",
                        sequence,
                        self.topic,
                        longest,
                    )
                    del self._held[sequence]
                    continue

                with contextlib.suppress(nats.errors.Error):
                    await entry.msg.in_progress()
