"""The RabbitMQ backend against the whole delivery contract."""

from polybus.testing.suite import ConformanceSuite


class TestRabbitMQConformance(ConformanceSuite):
    """Every clause of docs/semantics.md on a real RabbitMQ broker."""
