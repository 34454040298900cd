"""The Kafka backend against the whole delivery contract, on the session broker."""

from polybus.testing.suite import ConformanceSuite


class TestKafkaConformance(ConformanceSuite):
    """Every clause of docs/semantics.md on the Kafka backend."""
