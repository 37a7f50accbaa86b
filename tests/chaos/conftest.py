"""The chaos tests use the end-to-end tests' stack fixture."""

from tests.e2e.conftest import stack  # noqa: F401
