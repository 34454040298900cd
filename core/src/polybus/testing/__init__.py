"""Test support for polybus backends."""
