"""The in-memory backend opts in to the polybus conformance suite."""

from __future__ import annotations

import pytest

from polybus.testing.harness import BackendFactory
from polybus_in_memory import InMemoryBackend, InMemoryStore


class SharedStoreFactory:
    """Makes in-memory backends that share one store, like clients of one broker.

    Each backend keeps its own streams, so closing one bus leaves the others'
    subscriptions running, as closing one connection to a broker would.
    """

    def __init__(self) -> None:
        self.store = InMemoryStore()

    def __call__(self) -> InMemoryBackend:
        return InMemoryBackend(store=self.store)


@pytest.fixture
def polybus_backend_factory() -> BackendFactory:
    """A fresh store per test; every backend of the test shares it."""
    return SharedStoreFactory()
