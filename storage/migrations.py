"""The schema's Alembic migrations, wherever the code runs from.

The migrations live in the repository's ``alembic/`` folder, which the wheel installs as
the package ``payment_monitor_migrations`` (pyproject.toml maps one to the other). So an
installed worker migrates with ``faust -A app db upgrade``, no checkout beside it, and
the repository's ``alembic upgrade head`` reads the very same files.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from alembic import command
from models.errors import PaymentMonitorError

MIGRATIONS_PACKAGE = "payment_monitor_migrations"


class MigrationsNotFound(PaymentMonitorError, RuntimeError):
    """The installed package has no migrations (a broken install)."""


def script_location() -> str:
    """The folder of ``env.py`` and ``versions/``."""
    spec = importlib.util.find_spec(MIGRATIONS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MigrationsNotFound(f"the package {MIGRATIONS_PACKAGE} is not installed: "
                                 "reinstall payment-monitor")
    return list(spec.submodule_search_locations)[0]


def alembic_config(database_url: str) -> Config:
    """Alembic's configuration, without alembic.ini: the URL goes to env.py directly."""
    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head", *, down: bool = False) -> None:
    """``alembic upgrade head`` (or ``downgrade revision``), logging each step at INFO."""
    logging.getLogger("alembic").setLevel(logging.INFO)
    cfg = alembic_config(database_url)
    (command.downgrade if down else command.upgrade)(cfg, revision)


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # None: never migrated
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def pending(database_url: str, current: str | None) -> list[str]:
    """The migrations ``upgrade`` applies to a database at ``current``, oldest first, each
    as ``revision: message``."""
    script = ScriptDirectory.from_config(alembic_config(database_url))
    steps = script.iterate_revisions("heads", current or "base")
    return [f"{rev.revision}: {(rev.doc or '').splitlines()[0] if rev.doc else ''}".rstrip(": ")
            for rev in reversed(list(steps)) if rev.revision != current]


def schema_state(database_url: str) -> SchemaState:
    """Where the database's schema is, against the newest migration this code ships."""
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert head is not None  # the package ships at least one migration
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return SchemaState(current, head)
