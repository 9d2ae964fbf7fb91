"""Fixtures of the worker tests (the shared ones, galleries and models, are in tests/conftest.py)."""
