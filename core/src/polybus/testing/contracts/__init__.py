"""The clauses of ``docs/semantics.md``, one async check per clause.

Each check takes a :class:`~polybus.testing.harness.Harness` and raises
:class:`AssertionError` with a report when the backend breaks the clause. The
checks are grouped by the part of the contract they cover: :mod:`.topics`,
:mod:`.delivery`, :mod:`.groups`, :mod:`.settlement` and :mod:`.lifecycle`.
:class:`polybus.testing.suite.ConformanceSuite` turns them into pytest tests;
calling one directly is how the kit's own tests prove a check catches a fault.
"""
