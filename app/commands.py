"""``faust -A app failed ACTION``: work the dead-letter queue from the command line.

Actions (filters: ``--category``, ``--field``, ``--since``, ``--until``, ``--topic``,
``--partition``, ``--limit``, ids as arguments):

* ``list``    one line per failed item, newest filters first; ``--json`` for JSON Lines
* ``show``    one item in full: every error, the raw payload (text if UTF-8, else base64)
* ``export``  to ``--output FILE`` as JSON Lines (``--format jsonl``) or Parquet
* ``replay``  send the raw payloads back to ``payments`` (same key) with
  ``x-retry-count`` = retry_count + 1 and ``x-replay-of`` = id, then mark the rows
  replayed. ``--dry-run`` sends nothing and shows what the current validation
  config says of each; ``--only-valid`` sends only those that now pass;
  rows already replayed are skipped unless ``--force``.

A replayed payment that was accepted before is caught as a duplicate, so a
replay never counts a payment twice.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
import pyarrow.parquet as pq
from aiokafka import AIOKafkaProducer
from faust.cli import AppCommand, argument, option
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from tqdm import tqdm

from app.cli import active_config, fail, finish_output, output_target, printable, written_output
from models.events import CHANNELS, REPLAY_OF_HEADER, RETRY_COUNT_HEADER, STATUSES
from pipeline.config import ConfigError, ConfigManager
from pipeline.parse import Mode, Validator
from runtime.faust_app import PaymentApp
from runtime.settings import Settings
from runtime.topics import PAYMENTS
from storage.broker import BrokerError, describe_failure
from storage.failed import FailedFilter, FailedItems, FailedRow, FilterError, parse_time
from storage.lake import LakeQuery, LakeQueryError, RawEventLake

ACTIONS = ("list", "show", "export", "replay")


def register_commands(app: PaymentApp, settings: Settings, engine: Engine,
                      config: ConfigManager) -> None:
    @app.command(
        argument("action", type=click.Choice(ACTIONS)),
        argument("ids", nargs=-1, type=int),
        option("--category", help="error category: too_large, not_utf8, not_json, "
               "not_object, schema, rule, duplicate"),
        option("--field", help="the (first) offending field, e.g. currency or metadata.note"),
        option("--since", help="created at or after: ISO 8601 time or 30m / 24h / 7d ago"),
        option("--until", help="created before: ISO 8601 time or a duration ago"),
        option("--topic", help="source topic"),
        option("--partition", type=int, help="source partition"),
        option("--limit", type=int, default=None, help="at most N items (list: 50)"),
        option("--json", "as_json", is_flag=True, help="list/show: JSON output"),
        option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl",
               help="export format"),
        option("--output", type=click.Path(dir_okay=False), help="export: file to write"),
        option("--dry-run", is_flag=True, help="replay: send nothing, show the verdicts"),
        option("--only-valid", is_flag=True, help="replay: only items that now pass"),
        option("--force", is_flag=True, help="replay: include items already replayed"),
    )
    async def failed(self: AppCommand, action: str, ids: tuple[int, ...], category: str | None,
                     field: str | None, since: str | None, until: str | None, topic: str | None,
                     partition: int | None, limit: int | None, as_json: bool, fmt: str,
                     output: str | None, dry_run: bool, only_valid: bool, force: bool) -> None:
        """Work the dead-letter queue: list, show, export or replay failed items."""
        try:
            flt = FailedFilter(
                ids=ids, category=category, field=field, topic=topic, partition=partition,
                since=parse_time(since) if since else None,
                until=parse_time(until) if until else None,
                include_replayed=action != "replay" or force,
                limit=limit if limit is not None else (50 if action == "list" else None),
            )
            # replay judges with what the workers run: the topic's latest versions
            validator = ((await active_config(settings, config)).validator
                         if action == "replay" else None)
            await _run(action, ids, flt, FailedItems(engine), settings, validator, as_json=as_json,
                       fmt=fmt, output=output, dry_run=dry_run, only_valid=only_valid)
        except (FilterError, click.ClickException) as exc:
            fail(str(exc) if isinstance(exc, FilterError) else exc.format_message())
        except ConfigError as exc:
            fail(f"the active configuration does not compile: {exc}")
        except (OperationalError, InterfaceError) as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            fail(f"cannot reach the database at {settings.safe_database_url}: {reason}")
        except BrokerError as exc:
            fail(str(exc))
        except Exception as exc:
            # aiokafka's connection errors (OSErrors among them): the cause, one line
            if isinstance(exc, OSError) or type(exc).__module__.startswith("aiokafka"):
                fail(await describe_failure(exc, settings.broker))
            raise


def register_raw_commands(app: PaymentApp, settings: Settings) -> None:
    @app.command(
        argument("action", type=click.Choice(["query", "compact", "migrate"])),
        option("--from", "start", default=None,
               help="query: start (inclusive): ISO 8601 time, a date, or 30m / 24h / 7d ago"),
        option("--before", default="2h",
               help="compact: only the dates up to this time's (default 2h ago)"),
        option("--to", "end", default=None, help="end (exclusive); default now"),
        option("--merchant", help="merchant_id"),
        option("--status", type=click.Choice(STATUSES), help="payment status"),
        option("--channel", type=click.Choice(CHANNELS), help="payment channel"),
        option("--accepted-only", is_flag=True, help="leave out failed messages"),
        option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]),
               default="jsonl", help="output format"),
        option("--output", type=click.Path(dir_okay=False),
               help="file to write (parquet: required; jsonl/csv: default stdout)"),
    )
    async def raw(self: AppCommand, action: str, start: str | None, before: str,
                  end: str | None, merchant: str | None, status: str | None,
                  channel: str | None, accepted_only: bool, fmt: str,
                  output: str | None) -> None:
        """Query the raw-event lake (RAW_EVENTS_URL, a Delta table) by time range,
        merchant, status, channel; compact its small files (Delta optimize); or migrate a
        lake of the old Parquet layout into the table, in place."""

        if action == "compact":
            _compact(settings, before)
            return
        if action == "migrate":
            _migrate(settings)
            return
        if start is None:
            fail("query needs --from")
        try:
            query = LakeQuery(parse_time(start), parse_time(end) if end else datetime.now(UTC),
                              merchant, status, channel, accepted_only)
            lake = RawEventLake(settings.raw_events_url, settings.lake_storage_options)
            written = _write_events(lake, query, fmt, Path(output) if output else None)
        except (FilterError, LakeQueryError) as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"cannot read the lake or write the output: {exc}")
        click.echo(f"{written:,} events", err=True)


def _write_events(lake: RawEventLake, query: LakeQuery, fmt: str,
                  output: Path | None) -> int:
    """Stream the matching events to ``output`` (atomically) or stdout; returns how many."""
    import csv

    from storage.lake import to_records

    if fmt == "parquet" and output is None:
        raise OSError("--format parquet needs --output FILE")
    written = 0
    progress = tqdm(unit=" events", disable=None, file=sys.stderr)
    writer: Any = None
    try:
        with written_output(output, binary=fmt == "parquet") as sink:
            for batch in lake.scan(query):
                if fmt == "parquet":
                    writer = writer or pq.ParquetWriter(sink, batch.schema, compression="zstd")
                    writer.write_batch(batch)
                elif fmt == "csv":
                    rows = to_records(batch)
                    if writer is None:
                        writer = csv.DictWriter(sink, fieldnames=list(rows[0]),
                                                extrasaction="ignore")
                        writer.writeheader()
                    writer.writerows(rows)
                else:
                    for row in to_records(batch):
                        sink.write(json.dumps(row) + "\n")
                written += batch.num_rows
                progress.update(batch.num_rows)
            if fmt == "parquet" and writer is None:  # no match: an empty file with the schema
                from storage.parquet import RAW_SCHEMA

                writer = pq.ParquetWriter(sink, RAW_SCHEMA, compression="zstd")
            if fmt == "parquet":
                writer.close()
    finally:
        progress.close()
    return written


def _compact(settings: Settings, before: str) -> None:
    from storage.compaction import compact
    from storage.delta import RawTable

    try:
        until = parse_time(before)
    except FilterError as exc:
        fail(str(exc))
    table = RawTable(settings.raw_events_url, settings.lake_storage_options)
    try:
        report = compact(table, before=until, target_mb=settings.lake_optimize_target_mb)
    except OSError as exc:
        fail(f"cannot compact the lake: {exc}")
    click.echo(f"optimized the hours that ended by {until:%Y-%m-%d %H:%M}: "
               f"{report['removed']} files compacted into {report['added']}")


def _migrate(settings: Settings) -> None:
    import fsspec

    from storage.compaction import migrate
    from storage.delta import RawTable

    fs, root = fsspec.core.url_to_fs(settings.raw_events_url, **settings.lake_storage_options)
    table = RawTable(settings.raw_events_url, settings.lake_storage_options)
    with tqdm(unit=" hours", desc="migrate", disable=None,
              file=click.get_text_stream("stderr")) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
            if bar.disable:
                click.echo(f"migrate: {done}/{total} hour folders", err=True)

        try:
            report = migrate(fs, root.rstrip("/"), table, progress)
        except OSError as exc:
            fail(f"cannot migrate the lake: {exc}")
    click.echo(f"{report.folders} hour folders converted ({report.files} files, "
               f"{report.rows:,} rows); {report.skipped} converted before; "
               f"{report.incomplete} files of incomplete flushes and {report.superseded} "
               f"superseded files left out")


async def _run(action: str, ids: tuple[int, ...], flt: FailedFilter, store: FailedItems,
               settings: Settings, validator: Validator | None, *, as_json: bool, fmt: str,
               output: str | None, dry_run: bool, only_valid: bool) -> None:
    if action == "list":
        _list(store, flt, as_json)
    elif action == "show":
        if len(ids) != 1:
            raise click.UsageError("show takes exactly one id")
        _show(store, ids[0], as_json)
    elif action == "export":
        if not output:
            raise click.UsageError("export needs --output FILE")
        _export(store, flt, Path(output), fmt)
    else:
        assert validator is not None
        await _replay(store, flt, settings, validator, dry_run=dry_run,
                      only_valid=only_valid)


def _list(store: FailedItems, flt: FailedFilter, as_json: bool) -> None:
    n = 0
    for row in store.select(flt):
        n += 1
        if as_json:
            click.echo(json.dumps(row.to_dict(payload=False)))
        else:
            replayed = " replayed" if row.replayed else ""
            click.echo(f"{row.id:>8}  {row.created_at:%Y-%m-%d %H:%M:%S}  "
                       f"{row.error_category:<10} {row.source_topic}[{row.source_partition}]"
                       f"@{row.source_offset}  retry={row.retry_count}{replayed}  "
                       f"{printable(row.error_message[:90])}")
    if not as_json:
        total = store.count(FailedFilter(**{**flt.__dict__, "limit": None}))
        click.echo(f"{n} shown of {total} matching", err=True)


def _show(store: FailedItems, item_id: int, as_json: bool) -> None:
    row = store.get(item_id)
    if row is None:
        raise click.ClickException(f"no failed item with id {item_id}")
    if as_json:
        click.echo(json.dumps(row.to_dict(), indent=2))
        return
    for key, value in row.to_dict(payload=False).items():
        if key != "errors":
            click.echo(f"{key:>14}: {printable(value)}")
    click.echo("        errors:")
    for e in row.errors:
        click.echo(printable(f"                - [{e.get('rule')}] "
                             f"{e.get('field') or '(message)'}: {e.get('message')}"))
    try:
        payload = row.raw_payload.decode("utf-8")
        click.echo(f"       payload ({len(row.raw_payload)} bytes, UTF-8):\n"
                   f"{printable(payload[:4000])}")
    except UnicodeDecodeError:
        click.echo(f"       payload ({len(row.raw_payload)} bytes, base64):\n"
                   f"{row.to_dict()['raw_payload_b64'][:4000]}")


def _export(store: FailedItems, flt: FailedFilter, output: Path, fmt: str) -> None:
    total = store.count(flt) if flt.limit is None else min(flt.limit, store.count(flt))
    try:
        tmp = output_target(output)
    except OSError as exc:
        fail(str(exc))
    rows = tqdm(store.select(flt), total=total, unit="item", desc="export", file=sys.stderr,
                disable=None)
    if fmt == "jsonl":
        with tmp.open("w") as f:
            for row in rows:
                f.write(json.dumps(row.to_dict()) + "\n")
    else:
        records = [_parquet_record(row) for row in rows]
        pq.write_table(pa.Table.from_pylist(records, schema=_PARQUET_SCHEMA), tmp,
                       compression="zstd")
    finish_output(tmp, output)  # a half-written export never looks finished
    click.echo(f"exported {total} failed items to {output} ({fmt})", err=True)


_PARQUET_SCHEMA = pa.schema([
    ("id", pa.int64()), ("raw_payload", pa.binary()), ("source_key", pa.binary()),
    ("error_category", pa.string()), ("error_message", pa.string()),
    ("error_field", pa.string()), ("errors_json", pa.string()),
    ("source_topic", pa.string()), ("source_partition", pa.int32()),
    ("source_offset", pa.int64()), ("retry_count", pa.int32()), ("replayed", pa.bool_()),
    ("replay_of", pa.int64()), ("first_seen_at", pa.timestamp("ms", tz="UTC")),
    ("created_at", pa.timestamp("ms", tz="UTC")),
])


def _parquet_record(row: FailedRow) -> dict[str, Any]:
    return {
        "id": row.id, "raw_payload": row.raw_payload, "source_key": row.source_key,
        "error_category": row.error_category, "error_message": row.error_message,
        "error_field": row.error_field, "errors_json": json.dumps(row.errors),
        "source_topic": row.source_topic, "source_partition": row.source_partition,
        "source_offset": row.source_offset, "retry_count": row.retry_count,
        "replayed": row.replayed, "replay_of": row.replay_of,
        "first_seen_at": row.first_seen_at, "created_at": row.created_at,
    }


async def _replay(store: FailedItems, flt: FailedFilter, settings: Settings,
                  validator: Validator, *, dry_run: bool, only_valid: bool) -> None:
    diagnose = validator.with_mode(Mode.COLLECT_ALL)
    selected = list(store.select(flt))
    verdicts: Counter[str] = Counter()
    to_send: list[FailedRow] = []
    for row in selected:
        result = diagnose.parse(row.raw_payload)
        verdicts["now passes" if result.ok else f"still {result.category}"] += 1
        if dry_run:
            click.echo(f"{row.id:>8}  {'PASS' if result.ok else 'FAIL'}  "
                       f"{result.message[:100] if not result.ok else ''}")
        if result.ok or not only_valid:
            to_send.append(row)
    summary = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())) or "nothing selected"
    if dry_run:
        click.echo(f"dry run: {len(selected)} selected ({summary}); would replay "
                   f"{len(to_send)} to {PAYMENTS}", err=True)
        return
    conn = settings.broker
    # idempotence needs InitProducerId, which we do not count on at Event Hubs; a resent
    # replay is caught by the duplicate check either way
    producer = AIOKafkaProducer(**conn.client_kwargs(acks="all",
                                                     enable_idempotence=not conn.eventhubs))
    try:
        await producer.start()
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        await producer.stop()
        raise click.ClickException(await describe_failure(exc, conn)) from exc
    try:
        for row in tqdm(to_send, unit="item", desc="replay", file=sys.stderr, disable=None):
            await producer.send(PAYMENTS, row.raw_payload, key=row.source_key, headers=[
                (RETRY_COUNT_HEADER, str(row.retry_count + 1).encode()),
                (REPLAY_OF_HEADER, str(row.id).encode()),
            ])
        await producer.flush()
    finally:
        await producer.stop()
    # marked after the broker has them: a crash in between replays them again, and
    # the duplicate check keeps an accepted payment from counting twice
    await asyncio.to_thread(store.mark_replayed, [row.id for row in to_send])
    click.echo(f"replayed {len(to_send)} of {len(selected)} selected ({summary})", err=True)
