"""Shared fixtures: the real broker, PostgreSQL and Azurite, started per session.

PostgreSQL is the server ``TEST_DATABASE_URL`` (or the default
``postgres@127.0.0.1:5432``) points at when it answers, else an embedded one.
Each test that needs a database gets a fresh one with ``alembic upgrade head``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.services import (
    Azurite,
    Broker,
    Postgres,
    ensure_postgres,
    start_azurite,
    start_broker,
)
from devtools.stack import Stack, run_migrations

TIERS = {"integration": pytest.mark.integration, "e2e": pytest.mark.e2e,
         "chaos": pytest.mark.chaos, "deploy": pytest.mark.deploy}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for tier, mark in TIERS.items():
            if f"{os.sep}{tier}{os.sep}" in str(item.fspath):
                item.add_marker(mark)


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = ensure_postgres(os.environ.get("TEST_DATABASE_URL"),
                             tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite's blob service (from ``make install``'s node_modules) for the abfs:// tests."""
    service = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("broker"))
    yield b
    b.stop()


def _migrated_database(pg: Postgres) -> Iterator[str]:
    name = f"pm_test_{uuid.uuid4().hex[:10]}"
    url = pg.create_database(name)
    run_migrations(url)
    yield url
    pg.drop_database(name)


@pytest.fixture
def database_url(pg: Postgres) -> Iterator[str]:
    """A fresh, migrated database, dropped afterwards."""
    yield from _migrated_database(pg)


@pytest.fixture
def fresh_database_url(pg: Postgres) -> Iterator[str]:
    """A second one, for a test that compares two runs (a fresh run against a
    recomputed one)."""
    yield from _migrated_database(pg)


@pytest.fixture
def empty_database_url(pg: Postgres) -> Iterator[str]:
    name = f"pm_test_{uuid.uuid4().hex[:10]}"
    url = pg.create_database(name)
    yield url
    pg.drop_database(name)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def stack(pg, tmp_path) -> Iterator[Stack]:
    s = Stack.start(tmp_path, pg, f"pm_e2e_{uuid.uuid4().hex[:8]}")
    yield s
    s.stop(drop_database=True)
