"""Read what a Kafka-protocol broker stores, as record batches off the wire.

A consumer hides compression: aiokafka decompresses a fetched batch and hands
out its records. :func:`fetch_batches` sends Fetch requests itself and splits
the answer into the record batches the broker returned, so a test can see each
batch's compression attribute and size as the broker keeps them.
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.default_records import DefaultRecordBatch

__all__ = ["CODEC_IDS", "FetchedBatch", "fetch_batches"]

logger = logging.getLogger(__name__)

CODEC_IDS: Final = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
"""The codec bits of a record batch's attributes, by codec name."""

_BATCH_HEAD: Final = struct.Struct(">qi")  # base offset, length of the rest
_FETCH_BYTES: Final = 4 * 1024 * 1024
_NO_ERROR: Final = 0


@dataclass(frozen=True, slots=True)
class FetchedBatch:
    """One record batch as the broker returned it."""

    partition: int
    """Partition it came from."""
    compression: int
    """Codec bits of its attributes (see :data:`CODEC_IDS`)."""
    size: int
    """Bytes of the whole batch, header included."""
    crc_valid: bool
    """Whether its CRC matches its content."""
    values: tuple[bytes | None, ...]
    """Values of its records, decompressed."""


async def fetch_batches(
    bootstrap_servers: str, topic: str, partitions: int, *, timeout: float = 20.0
) -> list[FetchedBatch]:
    """Every record batch of ``topic``'s partitions, oldest first per partition.

    :raises AssertionError: if the broker answers with an error, or the
        partitions are not read to their end within ``timeout`` seconds.
    """
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers, client_id="polybus-wire-check"
    )
    await client.bootstrap()
    try:
        client.add_topic(topic)
        await client.force_metadata_update()
        batches: list[FetchedBatch] = []
        for partition in range(partitions):
            batches.extend(await _read_partition(client, topic, partition, timeout))
        return batches
    finally:
        await client.close()


async def _read_partition(
    client: AIOKafkaClient, topic: str, partition: int, timeout: float
) -> list[FetchedBatch]:
    leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
    assert leader is not None, f"no leader known for {topic}[{partition}]"
    assert leader >= 0, f"{topic}[{partition}] has no leader"

    deadline = time.monotonic() + timeout
    batches: list[FetchedBatch] = []
    offset = 0
    while True:
        assert time.monotonic() < deadline, f"{topic}[{partition}] not read in time"
        request = FetchRequest(
            100, 1, _FETCH_BYTES, 0, [(topic, [(partition, offset, _FETCH_BYTES)])]
        )
        response: Any = await client.send(leader, request)
        ((_, (entry,)),) = response.topics
        error_code, high_watermark, raw = entry[1], entry[2], entry[-1]
        assert error_code == _NO_ERROR, f"fetch of {topic}[{partition}]: {error_code}"

        fetched = _split(partition, raw or b"")
        batches.extend(fetched)
        if fetched:
            offset = DefaultRecordBatch(_last_batch_bytes(raw)).next_offset
        if offset >= high_watermark:
            return batches
        if not fetched:
            logger.debug("%s[%d]: nothing at %d yet", topic, partition, offset)


def _split(partition: int, raw: bytes) -> list[FetchedBatch]:
    batches: list[FetchedBatch] = []
    for chunk in _chunks(raw):
        batch = DefaultRecordBatch(chunk)
        batches.append(
            FetchedBatch(
                partition=partition,
                compression=batch.compression_type,
                size=len(chunk),
                crc_valid=batch.validate_crc(),
                values=tuple(record.value for record in batch),
            )
        )
    return batches


def _last_batch_bytes(raw: bytes) -> bytes:
    *_, last = _chunks(raw)
    return last


def _chunks(raw: bytes) -> list[bytes]:
    """The complete batches in ``raw``; a batch cut off at the end is left out."""
    chunks: list[bytes] = []
    position = 0
    while position + _BATCH_HEAD.size <= len(raw):
        _, rest = _BATCH_HEAD.unpack_from(raw, position)
        end = position + _BATCH_HEAD.size + rest
        if end > len(raw):
            break
        chunks.append(raw[position:end])
        position = end
    return chunks
