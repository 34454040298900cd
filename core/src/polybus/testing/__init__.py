"""Test support for polybus backends: the backend conformance kit.

A backend proves it keeps the contract of ``docs/semantics.md`` by running the
kit against its real server. It defines one fixture and subclasses one class::

    # conftest.py
    @pytest.fixture
    def polybus_backend_factory():
        return lambda: MyBackend(MySettings(url="..."))

    # test_conformance.py
    from polybus.testing.suite import ConformanceSuite

    class TestMyBackend(ConformanceSuite):
        pass

The parts, each importable on its own (this package imports none of them, so
``polybus.testing.tansu`` stays free of pytest and Hypothesis):

- :mod:`~polybus.testing.plugin`: the pytest plugin (``polybus`` entry point):
  option, report header, default fixtures; how to opt in, in full.
- :mod:`~polybus.testing.suite`: :class:`ConformanceSuite`, a test per clause.
- :mod:`~polybus.testing.contracts`: the clauses as async checks.
- :mod:`~polybus.testing.harness`: buses, unique names, collectors, fences and
  deadline-bound waits; :func:`async_test` runs a coroutine test in its own loop.
- :mod:`~polybus.testing.checks`: comparisons that report what is missing,
  unexpected, duplicated, out of order or changed in transit.
- :mod:`~polybus.testing.model` and :mod:`~polybus.testing.machine`: a pure
  model of the contract and a Hypothesis state machine that holds a backend to
  it; :mod:`~polybus.testing.profiles` its settings profiles,
  :mod:`~polybus.testing.regressions` the programs it once failed on.
- :mod:`~polybus.testing.tansu`: a throwaway Kafka-compatible broker.
"""
