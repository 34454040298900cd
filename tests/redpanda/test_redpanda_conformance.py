"""The Redpanda backend against the delivery contract, on the session broker.

The state machine is left to the Kafka backend's run: the Redpanda backend is
the same code under another name, and the machine is the slowest test.
"""

from polybus.testing.suite import ConformanceSuite


class TestRedpandaConformance(ConformanceSuite):
    """Every clause of docs/semantics.md on the Redpanda backend."""

    test_state_machine = None  # type: ignore[assignment]
