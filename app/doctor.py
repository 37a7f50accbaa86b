"""``faust -A app doctor [--json]``: can a worker start here? One line per check, exit
status 2 when any fails.

The checks, in order:

* ``broker``         connects and authenticates (SASL and TLS as configured), and the
                     topics match ``faust -A app topics plan``: on Event Hubs every one must
                     exist, on Kafka a missing one is created by the worker when it starts;
* ``database``       PostgreSQL answers and its schema is at the head this release ships;
* ``lake``           a file can be written to and removed from ``RAW_EVENTS_URL``, and
                     no hour folder of the old Parquet layout is left to migrate;
* ``appconfig``      Azure App Configuration answers with the keys, when
                     ``CONFIG_SOURCE=azure``;
* ``configuration``  the configuration the workers would run (the config topic's latest
                     versions over the source's documents) compiles;
* ``keyvault``       every secret ``KEYVAULT_SECRETS`` names can be read, when
                     ``KEYVAULT_URL`` is set (the VM launcher's vault).

A check that does not apply here says ``skip``. No line holds a secret. The chart's init
container and the VM unit's ``ExecStartPre`` run it, so a pod or a unit that cannot work
stops before it starts, with the reason in its log.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit, urlunsplit

import click
import fsspec
from aiokafka.errors import KafkaError
from faust.cli import AppCommand, option
from sqlalchemy.exc import SQLAlchemyError

from app.cli import active_config
from app.vault import fetch, key_vault_getter, parse_mapping
from models.errors import PaymentMonitorError
from pipeline.config import ConfigError, ConfigManager
from runtime.faust_app import PaymentApp
from runtime.settings import Settings, VaultSettings
from storage import migrations
from storage.broker import describe_failure, existing_partitions

CHECK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, fail or skip
    detail: str


class Failed(PaymentMonitorError):
    """A check's one-line reason."""


async def check_broker(app: PaymentApp, settings: Settings) -> str:
    conn = settings.broker
    plan = app.topic_plan()
    found = await existing_partitions(conn, [t.name for t in plan])  # BrokerError: why
    wrong = [f"{t.name} has {found[t.name]} partitions, needs {t.partitions}"
             for t in plan if t.name in found and found[t.name] != t.partitions]
    missing = [t.name for t in plan if t.name not in found]
    if wrong or (missing and conn.eventhubs):
        raise Failed(f"{conn.describe()}: topics do not match `faust -A app topics plan`: "
                     + "; ".join(wrong + [f"{name} is missing" for name in missing]))
    created = f"; {len(missing)} missing, created by the worker at start" if missing else ""
    return (f"{conn.describe()}: {len(plan) - len(missing)} of {len(plan)} planned topics "
            f"as planned{created}")


async def check_database(settings: Settings) -> str:
    try:
        state = await asyncio.to_thread(migrations.schema_state,
                                        settings.database_url_with_password)
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        reason = str(orig or exc).strip().splitlines()[0]
        raise Failed(f"cannot reach the database at {settings.safe_database_url}: "
                     f"{reason}") from None
    if not state.at_head:
        raise Failed(f"{settings.safe_database_url} is at {state.current or 'no revision'}, "
                     f"this release needs {state.head}: run `faust -A app db upgrade`")
    return f"{settings.safe_database_url} at {state.head} (head)"


def _without_query(url: str) -> str:
    """A URL to print: a SAS token or other credential in its query is left out."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="", fragment="")) if parts.query else url


def _probe_lake(url: str, options: dict) -> int:
    """Write and remove a probe file; returns the hour folders of the old Parquet layout
    still there (``raw migrate`` converts them)."""
    from storage.compaction import legacy_folders

    fs, root = fsspec.core.url_to_fs(url, **options)
    fs.makedirs(root, exist_ok=True)
    probe = f"{root.rstrip('/')}/.doctor-{uuid.uuid4().hex}"
    fs.pipe_file(probe, b"payment-monitor doctor: safe to delete\n")
    fs.rm(probe)
    return len(legacy_folders(fs, root.rstrip("/")))


async def check_lake(settings: Settings) -> str:
    url = _without_query(settings.raw_events_url)
    try:
        legacy = await asyncio.to_thread(_probe_lake, settings.raw_events_url,
                                         settings.lake_storage_options)
    except Exception as exc:  # noqa: BLE001 - any storage error: one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise Failed(f"cannot write to {url}: {type(exc).__name__}: {reason}") from None
    if legacy:
        raise Failed(f"{url} holds {legacy} hour folders of the old Parquet layout: run "
                     "`faust -A app raw migrate` before the workers start")
    return f"{url} is writable"


async def check_appconfig(settings: Settings, manager: ConfigManager) -> str | None:
    if settings.config_source != "azure":
        return None
    where = settings.azure_appconfig_endpoint or "the connection string's store"
    try:
        documents = await asyncio.to_thread(manager.source.load)
    except Exception as exc:  # noqa: BLE001 - the SDK's errors vary
        raise Failed(f"App Configuration at {where}: {type(exc).__name__}: "
                     f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    return f"App Configuration at {where}: {len(documents)} keys"


async def check_configuration(settings: Settings, manager: ConfigManager) -> str:
    try:
        active = await active_config(settings, manager)
    except ConfigError as exc:
        raise Failed(f"does not compile: {exc}") from None
    except (KafkaError, OSError) as exc:
        raise Failed("cannot read the config topic: "
                     f"{await describe_failure(exc, settings.broker)}") from None
    except Exception as exc:  # noqa: BLE001 - the reason is the line
        raise Failed(f"cannot be read: {type(exc).__name__}: {exc}") from None
    return f"compiles ({settings.config_source} source; {active.version})"


async def check_keyvault() -> str | None:
    if not os.environ.get("KEYVAULT_URL"):
        return None
    try:
        vault = VaultSettings()
        mapping = parse_mapping(vault.keyvault_secrets)
        await asyncio.to_thread(fetch, mapping, key_vault_getter(vault.keyvault_url))
    except Exception as exc:  # noqa: BLE001 - VaultError says which secret; pydantic a setting
        raise Failed(str(exc).strip().splitlines()[0]) from None
    return f"{len(mapping)} secret(s) readable at {vault.keyvault_url}: {', '.join(mapping)}"


async def run_checks(app: PaymentApp, settings: Settings,
                     manager: ConfigManager) -> list[Check]:
    """Every check, each within :data:`CHECK_TIMEOUT_S`; none stops the others."""
    checks: list[tuple[str, Callable[[], Awaitable[str | None]]]] = [
        ("broker", lambda: check_broker(app, settings)),
        ("database", lambda: check_database(settings)),
        ("lake", lambda: check_lake(settings)),
        ("appconfig", lambda: check_appconfig(settings, manager)),
        ("configuration", lambda: check_configuration(settings, manager)),
        ("keyvault", check_keyvault),
    ]
    out = []
    for name, run in checks:
        try:
            detail = await asyncio.wait_for(run(), CHECK_TIMEOUT_S)
        except Failed as exc:
            out.append(Check(name, "fail", str(exc)))
        except TimeoutError:
            out.append(Check(name, "fail", f"no answer within {CHECK_TIMEOUT_S:.0f} s"))
        except Exception as exc:  # noqa: BLE001 - BrokerError and the like say why
            out.append(Check(name, "fail", str(exc).strip().splitlines()[0]))
        else:
            out.append(Check(name, "skip", "not configured") if detail is None
                       else Check(name, "ok", detail))
    return out


def register_doctor_command(app: PaymentApp, settings: Settings,
                            manager: ConfigManager) -> None:
    @app.command(option("--json", "as_json", is_flag=True, help="the checks as JSON"))
    async def doctor(self: AppCommand, as_json: bool) -> None:
        """Check the broker, PostgreSQL, the lake and the configuration: can a worker
        start here? Exit status 2 when a check fails."""
        checks = await run_checks(app, settings, manager)
        if as_json:
            click.echo(json.dumps([asdict(c) for c in checks], indent=2))
        else:
            for c in checks:
                click.echo(f"{c.status:<4}  {c.name:<13}  {c.detail}")
        failed = [c.name for c in checks if c.status == "fail"]
        if failed:
            click.echo(f"error: {len(failed)} check(s) failed: {', '.join(failed)}", err=True)
            self.stdout.flush()
            os._exit(2)  # as app.cli.fail: SystemExit would be logged by the mode worker
