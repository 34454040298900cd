"""Rebalance notices between the members of consumer groups.

Members learn about each other from the heartbeat, but a join, a leave or a
released lease is also announced on a Pub/Sub channel of the group, so the
others act on it at once instead of at their next heartbeat. A notice that is
lost (Pub/Sub delivers at most once) only delays a rebalance until that next
heartbeat; after a lost connection every member is woken, in case it missed one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Notifier"]

logger = logging.getLogger(__name__)

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


class Notifier:
    """One Pub/Sub connection of a backend, shared by its group members.

    :param client: the backend's client.
    """

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub: PubSub | None = None
        self._callbacks: defaultdict[str, set[Callable[[], None]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def watch(self, channel: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a notice arrives on ``channel``."""
        first = not self._callbacks[channel]
        self._callbacks[channel].add(callback)
        if not first:
            return

        if self._pubsub is None:
            self._pubsub = self._client.pubsub()
        await self._pubsub.subscribe(channel)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                self._listen(), name="polybus-redis-notices"
            )

    async def unwatch(self, channel: str, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` for ``channel``."""
        callbacks = self._callbacks.get(channel)
        if callbacks is None:
            return

        callbacks.discard(callback)
        if callbacks:
            return

        del self._callbacks[channel]
        if self._pubsub is not None:
            try:
                await self._pubsub.unsubscribe(channel)
            except _TRANSIENT as exc:
                logger.debug("Could not unsubscribe from %s: %r", channel, exc)

    async def notify(self, channel: str) -> None:
        """Announce a change on ``channel``; a lost notice is only a delay."""
        try:
            await self._client.publish(channel, b"rebalance")
        except _TRANSIENT as exc:
            logger.debug("Could not announce a rebalance on %s: %r", channel, exc)

    async def _listen(self) -> None:
        delay = 0.05

        while self._pubsub is not None and self._callbacks and not self._closed:
            try:
                message: Any = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except _TRANSIENT as exc:
                logger.debug("Rebalance notices interrupted: %r", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                self._wake_all()
                continue

            delay = 0.05
            if message is None:
                continue

            channel = message["channel"]
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            for callback in list(self._callbacks.get(name, ())):
                callback()

    def _wake_all(self) -> None:
        for callbacks in list(self._callbacks.values()):
            for callback in list(callbacks):
                callback()

    async def aclose(self) -> None:
        """Stop listening and give the connection back."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        pubsub, self._pubsub = self._pubsub, None
        self._callbacks.clear()
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
