"""The operator's commands: which build runs, and the schema it needs.

``faust -A app version [--json]``: this build's version and git revision (from the tag,
:mod:`runtime.version`), with Faust's and Python's.

``faust -A app db upgrade|current [--json]``: the schema, from the installed package.

* ``upgrade``  applies every migration up to the newest this code ships (Alembic's
  ``upgrade head``), one line per migration applied. Safe to run again: at head it
  applies nothing. The Helm hook, the VM's deploy step and the CD pipeline run it.
* ``current``  the database's revision and the newest shipped; exit status 2 when they
  differ (a database to migrate, or one migrated by a newer release).

The migrations ship in the wheel (:mod:`storage.migrations`): no checkout, no
alembic.ini. Inside the repository, ``alembic upgrade head`` does the same.
"""

from __future__ import annotations

import json
import platform

import click
import faust
from faust.cli import AppCommand, argument

from app.cli import database_errors, fail
from runtime.faust_app import PaymentApp
from runtime.settings import Settings
from runtime.version import REVISION, VERSION
from storage import migrations


def register_ops_commands(app: PaymentApp, settings: Settings) -> None:
    @app.command(click.option("--json", "as_json", is_flag=True, help="JSON output"))
    async def version(self: AppCommand, as_json: bool) -> None:
        """Which build this is: its version and git revision."""
        about = {"name": "payment-monitor", "version": VERSION, "revision": REVISION,
                 "faust": faust.__version__, "python": platform.python_version()}
        if as_json:
            click.echo(json.dumps(about))
        else:
            click.echo(f"payment-monitor {VERSION} (revision {REVISION}; "
                       f"Faust {about['faust']}, Python {about['python']})")

    @app.command(
        argument("action", type=click.Choice(["upgrade", "current"])),
        click.option("--json", "as_json", is_flag=True, help="current: JSON output"),
    )
    async def db(self: AppCommand, action: str, as_json: bool) -> None:
        """Migrate the database to the schema this release needs (upgrade), or show
        where it is (current)."""
        url = settings.database_url_with_password
        try:
            before = migrations.schema_state(url)
            if action == "upgrade":
                applied = migrations.pending(url, before.current)
                migrations.upgrade(url)
                for revision in applied:
                    click.echo(f"applied {revision}")
                click.echo(f"the database is at {before.head} (head), "
                           f"{len(applied)} migration(s) applied")
                return
        except migrations.MigrationsNotFound as exc:
            fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - the database's errors: one line
            database_errors(exc, settings)
        if as_json:
            click.echo(json.dumps({"current": before.current, "head": before.head,
                                   "at_head": before.at_head}))
        else:
            click.echo(f"current {before.current or '(none: never migrated)'}, "
                       f"head {before.head}")
        if not before.at_head:
            fail(f"the database is at {before.current or 'no revision'}, this release "
                 f"needs {before.head}: run `faust -A app db upgrade`")
