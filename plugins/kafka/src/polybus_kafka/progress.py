"""Which offsets of a partition may be committed.

Kafka keeps one committed offset per partition and consumer group: everything
below it counts as handled. Handlers of one partition finish in order, but a
message can also be settled by dead-lettering or left alone by a drain, so the
stream commits only the end of the run of settled messages that starts at the
oldest message it handed out. Offsets are tracked as handed out, not assumed
contiguous, because compaction and transaction markers leave gaps.
"""

from __future__ import annotations

from collections import deque

__all__ = ["PartitionProgress"]


class PartitionProgress:
    """Offsets of one partition handed to the sink and settled by it.

    :param start: the position the partition was read from, if known; it is
        what a commit made before any message is settled would store.
    """

    __slots__ = ("_committed", "_next_commit", "_pending", "_settled")

    def __init__(self, start: int | None = None) -> None:
        self._pending: deque[int] = deque()
        self._settled: set[int] = set()
        self._next_commit = start
        self._committed: int | None = None

    def handed_out(self, offset: int) -> None:
        """Record that the message at ``offset`` went to the sink."""
        if self._next_commit is None:
            self._next_commit = offset
        self._pending.append(offset)

    def settle(self, offset: int) -> None:
        """Record that the message at ``offset`` is done with."""
        pending = self._pending
        if not pending or offset < pending[0]:
            return

        if offset != pending[0]:
            self._settled.add(offset)
            return

        pending.popleft()
        self._next_commit = offset + 1
        while pending and pending[0] in self._settled:
            done = pending.popleft()
            self._settled.discard(done)
            self._next_commit = done + 1

    @property
    def start(self) -> int | None:
        """The offset a commit would store now, settled or not yet."""
        return self._next_commit

    def due(self) -> int | None:
        """The offset to commit, or ``None`` if the last commit is still current."""
        if self._next_commit is None or self._next_commit == self._committed:
            return None
        return self._next_commit

    def committed(self, offset: int) -> None:
        """Record that ``offset`` is stored as the group's position."""
        if self._committed is None or offset > self._committed:
            self._committed = offset

    @property
    def unsettled(self) -> int:
        """Messages handed out and not settled."""
        return len(self._pending)
