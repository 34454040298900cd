"""Kafka's default partitioner, so a key lands on the same partition everywhere.

The hash is the 32-bit murmur2 variant used by the Java Kafka client
(seed ``0x9747b28c``); the partition is the hash made positive by masking the
sign bit, modulo the partition count. A message without a key is spread round
robin by the caller.
"""

from __future__ import annotations

from typing import Final

__all__ = ["murmur2", "partition_for_key"]

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_R: Final = 24
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Return Kafka's murmur2 hash of ``data`` as a signed 32-bit integer."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    tail = length & ~3

    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k

    remaining = length & 3
    if remaining == 3:
        h ^= data[tail + 2] << 16
    if remaining >= 2:
        h ^= data[tail + 1] << 8
    if remaining >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK

    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15

    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partition_count: int) -> int:
    """Partition of ``key`` among ``partition_count`` partitions."""
    if partition_count < 1:
        raise ValueError(f"partition_count must be at least 1, got {partition_count}")

    return (murmur2(key) & 0x7FFFFFFF) % partition_count
