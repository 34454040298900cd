"""The ``polybus`` command line."""
