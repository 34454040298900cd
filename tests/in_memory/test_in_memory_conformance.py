"""The in-memory backend against the whole delivery contract."""

from polybus.testing.suite import ConformanceSuite


class TestInMemoryConformance(ConformanceSuite):
    """Every clause of docs/semantics.md on the in-memory backend."""
