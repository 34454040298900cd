"""Counters kept by a bus instance: what it published, handled and gave up on."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass

__all__ = ["BusCounters", "LatencyWindow", "TopicCounters"]


class LatencyWindow:
    """The most recent latencies, for percentiles that follow current load."""

    def __init__(self, size: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._total = 0.0
        self._count = 0

    def add(self, milliseconds: float) -> None:
        """Record one latency."""
        self._samples.append(milliseconds)
        self._total += milliseconds
        self._count += 1

    @property
    def mean(self) -> float:
        """Mean of every latency recorded, 0 if none."""
        return self._total / self._count if self._count else 0.0

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile of the window, 0 if empty."""
        if not self._samples:
            return 0.0

        ordered = sorted(self._samples)
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[rank - 1]


@dataclass(slots=True)
class TopicCounters:
    """Counters of one topic."""

    published: int = 0
    bytes_published: int = 0
    consumed: int = 0
    bytes_consumed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0


class BusCounters:
    """Counters of a bus, in total and per topic."""

    def __init__(self) -> None:
        self.topics: defaultdict[str, TopicCounters] = defaultdict(TopicCounters)
        self.publish_failures = 0
        self.publish_latency = LatencyWindow()

    def total(self) -> TopicCounters:
        """Sum over every topic."""
        total = TopicCounters()
        for counters in self.topics.values():
            total.published += counters.published
            total.bytes_published += counters.bytes_published
            total.consumed += counters.consumed
            total.bytes_consumed += counters.bytes_consumed
            total.failed += counters.failed
            total.retried += counters.retried
            total.dead_lettered += counters.dead_lettered
        return total
