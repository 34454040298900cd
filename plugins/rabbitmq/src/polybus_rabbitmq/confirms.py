"""Publishing a batch with all its publisher confirms in flight at once.

AMQP 0-9-1 has no batch publish: a batch is a run of ``basic.publish`` on one
channel in confirm mode, and the broker confirms each message on its own with a
``basic.ack`` (or refuses it with a ``basic.nack``), often many at once
(``multiple``). aiormq's ``basic_publish`` returns only once its message is
confirmed, so a batch made of it needs one task per message, and each task pays
for its own lock, timeout, frame marshalling and socket write: more than the
broker's own work for the message.

:func:`publish_confirmed` writes the batch itself instead. Holding the channel's
lock, as ``basic_publish`` does, it takes the next delivery tags, registers one
confirmation future per tag where aiormq's frame reader settles it, and puts the
frames on the connection's write queue in a few large writes. The broker reads
the ``basic.publish`` frames in batch order on one channel, so messages bound for
one queue stay in order; only the confirms are awaited together.

That uses the attributes of ``aiormq.Channel`` its own ``basic_publish`` uses.
:func:`writes_batches` says whether the installed aiormq has them; without them
a batch falls back to one ``basic_publish`` task per message, started in batch
order (asyncio runs new tasks in creation order and the channel lock queues its
waiters in order, so those frames go out in order too).

The outcome of each message is ``None`` once the broker acked it, else its own
error: :class:`aiormq.exceptions.DeliveryError` for a nack,
:class:`~polybus_rabbitmq.errors.MessageReturnedError` for a ``mandatory``
message the broker returned unroutable, :class:`TimeoutError` when no confirm
came for ``stall_timeout`` seconds, the channel's close reason when the broker
closed the channel, and :class:`~polybus.errors.BackendUnavailableError` when
the connection went away first. Nothing unconfirmed is ever reported as
published.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import aiormq
import aiormq.abc
import aiormq.exceptions
import pamqp.frame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from polybus.errors import BackendUnavailableError
from polybus_rabbitmq.errors import MessageReturnedError

__all__ = ["WRITE_BYTES", "Outgoing", "publish_confirmed", "writes_batches"]

logger = logging.getLogger(__name__)

WRITE_BYTES: Final = 1024 * 1024
"""Message bytes marshalled into one write; a batch goes out in writes of
about this size, so a large batch is not copied into one huge buffer."""

_CHANNEL_ATTRIBUTES: Final = (
    "confirmations",
    "delivery_tag",
    "message_id_delivery_tag",
    "max_content_size",
    "write_queue",
    "number",
    "lock",
    "closing",
    "create_future",
)
"""What :func:`publish_confirmed` uses of an ``aiormq.Channel``."""

Confirmation = asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message of a batch."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Basic.Properties
    mandatory: bool = False
    """Have the broker return the message if no queue receives it."""


def writes_batches(channel: aiormq.abc.AbstractChannel) -> bool:
    """Whether a batch on ``channel`` can be written in one go.

    True for a channel in confirm mode of an aiormq that keeps its publishing
    state where :func:`publish_confirmed` expects it.
    """
    return (
        isinstance(channel, aiormq.Channel)
        and bool(getattr(channel, "publisher_confirms", False))
        and hasattr(aiormq.abc.ChannelFrame, "marshall")
        and all(hasattr(channel, name) for name in _CHANNEL_ATTRIBUTES)
    )


async def publish_confirmed(
    channel: aiormq.abc.AbstractChannel,
    messages: Sequence[Outgoing],
    *,
    stall_timeout: float,
    batched: bool | None = None,
) -> list[BaseException | None]:
    """Publish ``messages`` in order on ``channel`` and await every confirm.

    :param channel: a channel in confirm mode.
    :param stall_timeout: seconds without any confirm after which the messages
        still unconfirmed fail with :class:`TimeoutError`.
    :param batched: write the batch in one go (the default where
        :func:`writes_batches` allows it), or with one ``basic_publish`` each.
    :returns: for each message, in order, ``None`` once the broker confirmed it,
        or the error that stopped it.
    :raises aiormq.exceptions.ChannelInvalidStateError: if the channel is
        closed; then nothing was sent.
    """
    if not messages:
        return []

    if batched is None:
        batched = writes_batches(channel)
    if not batched:
        return await _settle(_publish_each(channel, messages), messages, stall_timeout)

    confirmations, failure = await _write(
        cast(aiormq.Channel, channel), messages, stall_timeout
    )
    sent = len(confirmations)
    outcomes = await _settle(confirmations, messages[:sent], stall_timeout)
    return outcomes + [failure] * (len(messages) - sent)


async def _write(
    channel: aiormq.Channel, messages: Sequence[Outgoing], stall_timeout: float
) -> tuple[list[Confirmation], BaseException | None]:
    """Send the messages' frames in order.

    If this fails or is cancelled partway, the tags of the messages not yet
    handed to the writer are given back, as ``basic_publish`` does, and the
    broker never sees those messages.

    :returns: the confirmation futures of the messages handed to the writer,
        which are all of them unless the channel closed or the writer took
        nothing for ``stall_timeout``; then also why the rest were not.
    :raises aiormq.exceptions.ChannelInvalidStateError: if the channel is
        closed; then nothing was sent.
    """
    confirmations: list[Confirmation] = []
    number = channel.number
    limit = channel.max_content_size
    methods: dict[tuple[str, str, bool], bytes] = {}

    async with channel.lock:
        first = channel.delivery_tag
        progress = _Progress(written=first)
        try:
            parts: list[bytes] = []
            size = 0
            for message in messages:
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirmation = channel.create_future()
                channel.confirmations[tag] = confirmation
                confirmations.append(confirmation)
                if message.mandatory:
                    _expect_return(channel, message, tag, confirmation)

                parts.extend(_marshal(message, number, limit, methods))
                size += len(message.body)
                if size >= WRITE_BYTES:
                    await _put(channel, parts, stall_timeout, progress, tag)
                    parts, size = [], 0

            if parts:
                await _put(channel, parts, stall_timeout, progress, tag)
        except Exception as exc:
            _give_back(channel, progress.written)
            return confirmations[: progress.written - first], exc
        except BaseException:
            _give_back(channel, progress.written)
            raise
    return confirmations, None


def _marshal(
    message: Outgoing,
    channel_number: int,
    body_limit: int,
    methods: dict[tuple[str, str, bool], bytes],
) -> list[bytes]:
    """The frames of ``message``: basic.publish, content header, body parts.

    :param body_limit: largest body frame payload (from the negotiated
        ``frame_max``).
    :param methods: marshalled basic.publish frames by exchange, routing key
        and ``mandatory``, shared over a batch: they are the same for every
        message to one place.
    """
    place = (message.exchange, message.routing_key, message.mandatory)
    method = methods.get(place)
    if method is None:
        publish = Basic.Publish(
            exchange=message.exchange,
            routing_key=message.routing_key,
            mandatory=message.mandatory,
        )
        method = methods[place] = pamqp.frame.marshal(publish, channel_number)

    body = message.body
    header = ContentHeader(body_size=len(body), properties=message.properties)
    frames = [method, pamqp.frame.marshal(header, channel_number)]
    for start in range(0, len(body), body_limit):
        part = ContentBody(body[start : start + body_limit])
        frames.append(pamqp.frame.marshal(part, channel_number))
    return frames


@dataclass(slots=True)
class _Progress:
    written: int
    """The last delivery tag whose frames are in the connection's write queue."""


async def _put(
    channel: aiormq.Channel,
    parts: list[bytes],
    timeout: float,
    progress: _Progress,
    last_tag: int,
) -> None:
    """Hand the marshalled frames, up to ``last_tag``, to the writer in one write.

    The drain future has the writer wait for the socket to drain after the
    write, so a large batch is held back by the socket rather than buffered.
    Nobody needs to await it.

    The write queue is small; while it is full this waits for room, but not
    past ``timeout`` nor past the channel's close: a connection that dies
    leaves its queue full for good.
    """
    frame = aiormq.abc.ChannelFrame(
        payload=b"".join(parts),
        should_close=False,
        drain_future=channel.create_future(),
    )
    queue = channel.write_queue
    try:
        queue.put_nowait(frame)
    except asyncio.QueueFull:
        pass
    else:
        progress.written = last_tag
        return

    putting = asyncio.ensure_future(queue.put(frame))
    closing = channel.closing
    try:
        await asyncio.wait(
            (putting, closing), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        # Cancelling a put that has not returned keeps its frame out of the
        # queue, but one that returned (even as this task is being cancelled)
        # put it there. The observer of the close is ours alone.
        putting.cancel()
        closing.cancel()
        if putting.done() and not putting.cancelled():
            progress.written = last_tag
    if progress.written == last_tag:
        return
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(
            f"{channel!r} closed while a batch was being written"
        )
    raise TimeoutError(f"the connection's writer took nothing for {timeout:g} s")


def _give_back(channel: aiormq.Channel, written: int) -> None:
    """Forget the tags after ``written``: their frames never reached the writer."""
    for tag in range(written + 1, channel.delivery_tag + 1):
        confirmation = channel.confirmations.pop(tag, None)
        if isinstance(confirmation, asyncio.Future):
            confirmation.cancel()
    channel.delivery_tag = written


def _expect_return(
    channel: aiormq.Channel,
    message: Outgoing,
    tag: int,
    confirmation: Confirmation,
) -> None:
    """Let aiormq's reader match a returned ``message`` to its tag, by id."""
    message_id = message.properties.message_id
    if not message_id:
        message_id = message.properties.message_id = uuid.uuid4().hex
    channel.message_id_delivery_tag[message_id] = tag

    def forget(_: Confirmation) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            del channel.message_id_delivery_tag[message_id]

    confirmation.add_done_callback(forget)


def _publish_each(
    channel: aiormq.abc.AbstractChannel, messages: Sequence[Outgoing]
) -> list[Confirmation]:
    """One ``basic_publish`` task per message, created in batch order."""
    return [
        asyncio.ensure_future(
            channel.basic_publish(
                message.body,
                exchange=message.exchange,
                routing_key=message.routing_key,
                properties=message.properties,
                mandatory=message.mandatory,
            )
        )
        for message in messages
    ]


class _Settlement:
    """Counts confirmations as they settle, and when the last one did."""

    __slots__ = ("_loop", "done", "last_progress", "unsettled")

    def __init__(
        self, confirmations: Sequence[Confirmation], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._loop = loop
        self.unsettled = len(confirmations)
        self.last_progress = loop.time()
        self.done: asyncio.Future[None] = loop.create_future()
        for confirmation in confirmations:
            confirmation.add_done_callback(self._settled)

    def _settled(self, _: Confirmation) -> None:
        self.unsettled -= 1
        self.last_progress = self._loop.time()
        if self.unsettled == 0 and not self.done.done():
            self.done.set_result(None)

    async def wait(self, stall_timeout: float) -> bool:
        """Wait until every confirmation settled, or none did for a while.

        :returns: ``False`` if waiting stopped because of the stall.
        """
        while not self.done.done():
            idle = self._loop.time() - self.last_progress
            if idle >= stall_timeout:
                return False
            await asyncio.wait((self.done,), timeout=stall_timeout - idle)
        return True


async def _settle(
    confirmations: Sequence[Confirmation],
    messages: Sequence[Outgoing],
    stall_timeout: float,
) -> list[BaseException | None]:
    """Await the confirmations together; each message's outcome, in order."""
    settlement = _Settlement(confirmations, asyncio.get_running_loop())
    try:
        settled = await settlement.wait(stall_timeout)
    except BaseException:
        # The caller was cancelled: nobody will read these any more.
        for confirmation in confirmations:
            confirmation.cancel()
        raise

    if not settled:
        unconfirmed = sum(not c.done() for c in confirmations)
        logger.warning(
            "No publisher confirm for %.3g s; %d of %d messages are unconfirmed",
            stall_timeout,
            unconfirmed,
            len(confirmations),
        )
        for confirmation in confirmations:
            confirmation.cancel()

    return [
        _outcome(confirmation, message, settled, stall_timeout)
        for confirmation, message in zip(confirmations, messages, strict=True)
    ]


def _outcome(
    confirmation: Confirmation,
    message: Outgoing,
    settled: bool,
    stall_timeout: float,
) -> BaseException | None:
    """What became of one message: ``None`` only for a ``basic.ack``."""
    if confirmation.cancelled():
        if not settled:
            return TimeoutError(
                f"the broker did not confirm the message within {stall_timeout:g} s"
            )
        return BackendUnavailableError(
            "the channel closed before the broker confirmed the message"
        )

    error = confirmation.exception()
    if error is None:
        result = confirmation.result()
        if isinstance(result, Basic.Ack):
            return None
        if isinstance(result, aiormq.abc.DeliveredMessage) and isinstance(
            result.delivery, Basic.Return
        ):
            return _returned(message, result.delivery)
        return BackendUnavailableError(
            f"the broker answered the message with {result!r}, not a confirm"
        )

    if isinstance(error, asyncio.CancelledError) or type(error) is Exception:
        # Closing a connection rejects what waits on it with CancelledError,
        # although no task was cancelled, or with a bare Exception when it was
        # closed without a reason.
        lost = BackendUnavailableError(
            "the connection closed before the broker confirmed the message"
        )
        lost.__cause__ = error
        return lost
    if isinstance(error, aiormq.exceptions.PublishError):
        returned = error.message.delivery if error.message is not None else None
        if isinstance(returned, Basic.Return):
            refusal = _returned(message, returned)
            refusal.__cause__ = error
            return refusal
    return error


def _returned(message: Outgoing, frame: Basic.Return) -> MessageReturnedError:
    return MessageReturnedError(
        message.exchange,
        message.routing_key,
        frame.reply_code or 0,
        frame.reply_text or "",
    )
