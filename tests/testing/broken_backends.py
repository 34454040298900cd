"""In-memory backends with one deliberate fault each, to prove the kit sees it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine, Sequence
from typing import Any

from polybus.backend import (
    Delivery,
    DeliverySink,
    OutboundRecord,
    StartPosition,
    Stream,
)
from polybus.message import EventMessage
from polybus_in_memory import InMemoryBackend, InMemoryStore


class SharedStoreFactory:
    """Backends of one class sharing one store, like clients of one broker."""

    def __init__(self, backend_class: type[InMemoryBackend] = InMemoryBackend) -> None:
        self.backend_class = backend_class
        self.store = InMemoryStore()

    def __call__(self) -> InMemoryBackend:
        return self.backend_class(store=self.store)


class DroppingBackend(InMemoryBackend):
    """Says it stored every fifth record of a topic, and drops it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.published: dict[str, int] = {}

    async def publish(
        self, records: Sequence[OutboundRecord]
    ) -> list[BaseException | None]:
        kept = []
        for record in records:
            count = self.published.get(record.topic, 0) + 1
            self.published[record.topic] = count
            if count % 5 != 3:
                kept.append(record)

        await super().publish(kept)
        return [None] * len(records)


class _SinkWrapper:
    def __init__(self, sink: DeliverySink) -> None:
        self.sink = sink
        self.tasks: set[asyncio.Task[None]] = set()

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def deliver(self, delivery: Delivery) -> None:
        await self.sink.deliver(delivery)

    async def revoke(self, partitions: Sequence[int]) -> None:
        await self.sink.revoke(partitions)

    def assigned(self, partitions: Sequence[int]) -> None:
        self.sink.assigned(partitions)


class _SwappingSink(_SinkWrapper):
    """Hands each partition's deliveries over in swapped pairs."""

    def __init__(self, sink: DeliverySink) -> None:
        super().__init__(sink)
        self.held: dict[int, Delivery] = {}

    async def deliver(self, delivery: Delivery) -> None:
        held = self.held.pop(delivery.partition, None)
        if held is None:
            self.held[delivery.partition] = delivery
            self.later(self._release(delivery))
            return

        await self.sink.deliver(delivery)
        await self.sink.deliver(held)

    async def _release(self, delivery: Delivery) -> None:
        await asyncio.sleep(0.05)
        if self.held.get(delivery.partition) is delivery:
            del self.held[delivery.partition]
            await self.sink.deliver(delivery)


class ReorderingBackend(InMemoryBackend):
    """Delivers each partition's messages two by two, the pair swapped."""

    def open_stream(
        self,
        topic: str,
        group_id: str | None,
        sink: DeliverySink,
        *,
        start: StartPosition,
        prefetch: int,
    ) -> Stream:
        return super().open_stream(
            topic, group_id, _SwappingSink(sink), start=start, prefetch=prefetch
        )


class _RedeliveringSink(_SinkWrapper):
    """Delivers the first acknowledged message of each partition once more."""

    def __init__(self, sink: DeliverySink) -> None:
        super().__init__(sink)
        self.redelivered: set[int] = set()

    async def deliver(self, delivery: Delivery) -> None:
        ack = delivery.ack

        async def ack_then_redeliver() -> None:
            await ack()
            if delivery.partition in self.redelivered:
                return
            self.redelivered.add(delivery.partition)
            again = dataclasses.replace(
                delivery, ack=_nothing, delivery_count=delivery.delivery_count + 1
            )
            self.later(self.sink.deliver(again))

        delivery.ack = ack_then_redeliver
        await self.sink.deliver(delivery)


async def _nothing() -> None:
    return None


class RedeliveringBackend(InMemoryBackend):
    """Delivers an acknowledged message again."""

    def open_stream(
        self,
        topic: str,
        group_id: str | None,
        sink: DeliverySink,
        *,
        start: StartPosition,
        prefetch: int,
    ) -> Stream:
        return super().open_stream(
            topic, group_id, _RedeliveringSink(sink), start=start, prefetch=prefetch
        )


class HeaderTypeLosingBackend(InMemoryBackend):
    """Stores int headers as text, as a broker with string-only headers might."""

    async def publish(
        self, records: Sequence[OutboundRecord]
    ) -> list[BaseException | None]:
        return await super().publish([self._corrupt(r) for r in records])

    @staticmethod
    def _corrupt(record: OutboundRecord) -> OutboundRecord:
        message = EventMessage.from_bytes(record.payload)
        message.headers = {
            name: str(value) if type(value) is int else value
            for name, value in message.headers.items()
        }
        return dataclasses.replace(record, payload=message.to_bytes())
