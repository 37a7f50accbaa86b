"""``faust -A app config ACTION [KEY...]``: versions in the config topic.

* ``push``      validate the source's documents (files, or App Configuration) together
  with the topic's latest versions of the other keys, then publish each changed key as
  a new version; every worker applies it within seconds. ``--dry-run`` publishes nothing.
* ``show``      a key's active document as YAML (``--version N``: that version).
* ``diff``      what ``push`` would change: the topic's latest against the source.
* ``history``   every pushed version: number, time, who, digest, comment.
* ``rollback``  ``KEY --to N``: push version N's document again as a new version.

Keys default to all three. A rejected document exits with status 2 and one line naming
the key, the path inside it and the problem; nothing is published.
"""

from __future__ import annotations

import difflib
import json
import time
import traceback
from typing import Any

import click
import yaml
from faust.cli import AppCommand, argument, option

from app.cli import fail
from pipeline.config import (
    KEYS,
    TRANSACTION_KEY,
    ConfigError,
    ConfigManager,
    ConfigRecords,
    ConfigVersion,
    compile_config,
    plan_push,
)
from runtime.faust_app import PaymentApp
from runtime.settings import Settings
from runtime.topics import PAYMENTS
from storage.broker import BrokerError, describe_failure
from storage.config_sources import FileSource, user
from storage.config_topic import ConfigTopic
from storage.recent import recent_records

ACTIONS = ("push", "show", "diff", "history", "rollback")


def register_config_commands(app: PaymentApp, settings: Settings,
                             manager: ConfigManager) -> None:
    @app.command(
        argument("action", type=click.Choice(ACTIONS)),
        argument("keys", nargs=-1),
        option("--to", "to_version", type=int, help="rollback: the version to restore"),
        option("--version", "number", type=int, help="show: this version, not the latest"),
        option("--comment", default="", help="push/rollback: why (kept in the history)"),
        option("--dry-run", is_flag=True, help="push/rollback: validate only, publish nothing"),
        option("--json", "as_json", is_flag=True, help="show/history: JSON output"),
        option("--force", is_flag=True,
               help="push/rollback: even if the trial on recent messages rejects many more"),
    )
    async def config(self: AppCommand, action: str, keys: tuple[str, ...],
                     to_version: int | None, number: int | None, comment: str,
                     dry_run: bool, as_json: bool, force: bool) -> None:
        """Push, show, diff, list or roll back configuration versions (the config topic)."""
        unknown = [k for k in keys if k not in KEYS]
        if unknown:
            fail(f"unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
        chosen = keys or KEYS
        topic = ConfigTopic(settings.broker, settings.app_id)
        try:
            records = await topic.read()
            if action == "push":
                await _push(topic, records, manager, chosen, comment, dry_run, force)
            elif action == "rollback":
                if len(keys) != 1 or to_version is None:
                    fail("rollback takes one KEY and --to N")
                await _rollback(topic, records, manager, keys[0], to_version, comment, dry_run,
                                force)
            elif action == "show":
                _show(records, manager, chosen, number, as_json)
            elif action == "diff":
                _diff(records, manager, chosen)
            else:
                _history(records, chosen, as_json)
        except ConfigError as exc:
            fail(f"rejected, nothing published: {exc}")
        except BrokerError as exc:
            fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - Faust's runner would exit 0 on it
            # aiokafka's connection errors (OSErrors among them): the cause, one line
            if isinstance(exc, OSError) or type(exc).__module__.startswith("aiokafka"):
                fail(await describe_failure(exc, settings.broker))
            traceback.print_exc()
            fail(f"config {action} failed: {type(exc).__name__}: {exc}")


def _source(manager: ConfigManager) -> dict[str, ConfigVersion]:
    return manager.source.load()


# A pushed validation config is first tried on this many of each partition's newest
# payments; one that would reject more than this share of them that the active one accepts
# needs --force, and so does one that takes this long on any one message.
TRIAL_PER_PARTITION = 500
TRIAL_MAX_NEWLY_REJECTED = 0.01
TRIAL_MAX_SECONDS = 0.1


async def _trial(topic: ConfigTopic, records: ConfigRecords, source: dict[str, ConfigVersion],
                 versions: list[ConfigVersion], force: bool) -> None:
    """Try a new validation version on recent payments against the active one: one line
    of figures, and a refusal (status 2) when it rejects far more, unless ``force``."""
    if not any(v.key == TRANSACTION_KEY for v in versions):
        return
    active = records.latest_over(source)
    against = "active"
    if records.latest(TRANSACTION_KEY) is None:  # the workers run their files: the shipped
        active = {**active, TRANSACTION_KEY: FileSource().load()[TRANSACTION_KEY]}
        against = "shipped"
    now = compile_config(active, records.known_bounds()).validator
    new = compile_config({**active, **{v.key: v for v in versions}},
                         records.known_bounds()).validator
    recent = await recent_records(topic.conn, PAYMENTS, TRIAL_PER_PARTITION)
    if not recent:
        click.echo(f"{TRANSACTION_KEY}: no recent payments to try it on")
        return
    newly = rejected_now = rejected_new = 0
    slowest = 0.0
    for value, stamp in recent:
        ok_now = now.parse(value, stamp).ok
        started = time.perf_counter()
        ok_new = new.parse(value, stamp).ok
        slowest = max(slowest, time.perf_counter() - started)
        rejected_now += not ok_now
        rejected_new += not ok_new
        newly += ok_now and not ok_new
    share = newly / len(recent)
    click.echo(f"{TRANSACTION_KEY}: tried on {len(recent):,} recent payments: rejects "
               f"{rejected_new:,} ({against}: {rejected_now:,}), {newly:,} of them newly "
               f"({share:.1%}); slowest message {slowest * 1000:.1f} ms")
    problems = []
    if share > TRIAL_MAX_NEWLY_REJECTED:
        problems.append(f"it rejects {share:.1%} of recent payments that the {against} "
                        f"version accepts (more than {TRIAL_MAX_NEWLY_REJECTED:.0%})")
    if slowest > TRIAL_MAX_SECONDS:
        problems.append(f"one message took {slowest * 1000:.0f} ms to validate (more than "
                        f"{TRIAL_MAX_SECONDS * 1000:.0f} ms)")
    if problems and not force:
        fail(f"rejected, nothing published: {'; '.join(problems)}; give --force to push "
             "it anyway")


async def _push(topic: ConfigTopic, records: ConfigRecords, manager: ConfigManager,
                keys: tuple[str, ...], comment: str, dry_run: bool, force: bool) -> None:
    source = _source(manager)
    versions = plan_push(records, {k: source[k] for k in keys}, source, by=user(),
                         comment=comment or f"from {manager.source.name}")
    await _trial(topic, records, source, versions, force)
    if versions and not dry_run:
        await topic.publish(versions)
    for key in keys:
        new = next((v for v in versions if v.key == key), None)
        current = records.latest(key)
        before = current.label if current else "nothing pushed"
        if new is None:
            click.echo(f"{key}: unchanged ({before})")
        else:
            verb = "would push" if dry_run else "pushed"
            click.echo(f"{key}: {verb} v{new.version} (was {before}), digest {new.digest}")


async def _rollback(topic: ConfigTopic, records: ConfigRecords, manager: ConfigManager,
                    key: str, number: int, comment: str, dry_run: bool, force: bool) -> None:
    old = records.version(key, number)
    if old is None:
        known = ", ".join(f"v{v.version}" for v in records.history(key)) or "none"
        fail(f"{key} has no version {number} (pushed: {known})")
    latest = records.latest_over(_source(manager))
    planned = plan_push(records, {key: old}, latest, by=user(),
                        comment=comment or f"rollback to v{number}")
    if not planned:
        click.echo(f"{key}: v{number} is already the latest version; nothing pushed")
        return
    new = planned[0]
    await _trial(topic, records, latest, planned, force)
    if not dry_run:
        await topic.publish([new])
    verb = "would push" if dry_run else "pushed"
    click.echo(f"{key}: {verb} v{new.version} = v{number} (was {latest[key].label})")


def _dump(document: Any, *, sort_keys: bool = False) -> str:
    """YAML, one scalar per line (diffs name the line that changed)."""
    return yaml.safe_dump(json.loads(json.dumps(document)), sort_keys=sort_keys, width=100,
                          default_flow_style=False)


def _show(records: ConfigRecords, manager: ConfigManager, keys: tuple[str, ...],
          number: int | None, as_json: bool) -> None:
    source = _source(manager) if number is None else {}
    out = []
    for key in keys:
        version = records.version(key, number) if number else (records.latest(key)
                                                                 or source[key])
        if version is None:
            fail(f"{key} has no version {number}")
        out.append(version)
    if as_json:
        click.echo(json.dumps([v.to_record() for v in out], indent=2))
        return
    for v in out:
        where = (f"pushed {v.pushed_at} by {v.pushed_by}" if v.version
                 else f"from {v.source}, never pushed")
        click.echo(f"# {v.key} {v.label} (digest {v.digest}, {where})")
        click.echo(_dump(v.document))


def _diff(records: ConfigRecords, manager: ConfigManager, keys: tuple[str, ...]) -> None:
    source = _source(manager)
    same = True
    for key in keys:
        latest = records.latest(key)
        if latest is None:
            same = False
            click.echo(f"{key}: nothing pushed; the workers run {manager.source.name}' "
                       f"version, which push would make v1")
            continue
        before = _dump(latest.document, sort_keys=True).splitlines(keepends=True)
        after = _dump(source[key].document, sort_keys=True).splitlines(keepends=True)
        lines = list(difflib.unified_diff(
            before, after, fromfile=f"{key} {latest.label}",
            tofile=f"{key} {manager.source.name}"))
        if lines:
            same = False
            click.echo("".join(lines), nl=False)
    if same:
        click.echo(f"no differences between the topic and {manager.source.name}")


def _history(records: ConfigRecords, keys: tuple[str, ...], as_json: bool) -> None:
    rows = [v for key in keys for v in records.history(key)]
    if as_json:
        click.echo(json.dumps([{k: v for k, v in r.to_record().items() if k != "document"}
                               for r in rows], indent=2))
        return
    if not rows:
        click.echo("nothing pushed yet: the workers run the source's documents")
    for v in rows:
        latest = records.latest(v.key)
        mark = "*" if latest is not None and latest.version == v.version else " "
        click.echo(f"{mark} {v.key:24} v{v.version:<4} {v.pushed_at:25} {v.digest}  "
                   f"{v.pushed_by}  {v.comment}")

