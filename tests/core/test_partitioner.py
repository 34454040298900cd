"""Kafka's murmur2 partitioner, against published vectors and aiokafka."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from polybus import murmur2, partition_for_key

# Hash values the Java Kafka client's own tests pin for these inputs.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), sorted(KAFKA_VECTORS.items()))
def test_murmur2_matches_kafka_vectors(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


@given(st.binary(max_size=64))
def test_murmur2_matches_aiokafka(data: bytes) -> None:
    expected = aiokafka_murmur2(data)
    signed = expected - (1 << 32) if expected & 0x80000000 else expected

    assert murmur2(data) == signed


@given(st.binary(min_size=1, max_size=32), st.integers(min_value=1, max_value=64))
def test_partition_matches_aiokafka_default_partitioner(
    key: bytes, partitions: int
) -> None:
    all_partitions = list(range(partitions))

    expected = DefaultPartitioner()(key, all_partitions, all_partitions)

    assert partition_for_key(key, partitions) == expected


def test_partition_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        partition_for_key(b"k", 0)
