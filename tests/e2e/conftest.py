"""The end-to-end tests share the worker tests' data and trained-model fixtures."""

from tests.workers.conftest import fmnist_test, trained_pair  # noqa: F401 - re-exported fixtures
