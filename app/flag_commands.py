"""``faust -A app flags ACTION``: the compliance team's cases from the command line.

Filters (list, export): ``--rule``, ``--status``, ``--customer``, ``--since``, ``--until``
(event time; ISO 8601 or 30m / 24h / 7d ago).

* ``list``    one line per flag, newest event first (``--limit``, 50); ``--json`` for
  JSON Lines
* ``show TXID``  the stored payment, each of its flags with the evidence, the records
  that re-sent its id, and its raw event from the lake (as ``payments show``)
* ``export``  every matching flag as ``--format csv|jsonl|parquet``, streamed to
  ``--output FILE`` (or stdout for csv and jsonl) with a progress bar
* ``review TXID --rule R --status cleared|escalated --note TEXT [--by NAME]``
"""

from __future__ import annotations

import csv
import getpass
import json
import sys
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
import pyarrow.parquet as pq
from faust.cli import AppCommand, argument, option
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from tqdm import tqdm

from app.cli import database_errors, fail, printable, written_output
from app.investigate_commands import echo_payment, payment_report
from models.db import FLAG_STATUSES
from runtime.faust_app import PaymentApp
from runtime.settings import Settings
from storage.failed import FilterError, parse_time
from storage.flags import (
    REVIEW_STATUSES,
    ComplianceFlags,
    FlagError,
    FlagFilter,
    to_json,
)

ACTIONS = ("list", "show", "export", "review")
EXPORT_SCHEMA = pa.schema([
    ("transaction_id", pa.string()), ("rule", pa.string()), ("customer_id", pa.string()),
    ("merchant_id", pa.string()), ("event_time", pa.timestamp("us", tz="UTC")),
    ("amount_minor", pa.int64()), ("currency", pa.string()), ("config_version", pa.string()),
    ("evidence", pa.string()), ("status", pa.string()), ("reviewed_by", pa.string()),
    ("reviewed_at", pa.timestamp("us", tz="UTC")), ("note", pa.string()),
    ("flagged_at", pa.timestamp("us", tz="UTC")),
])
EXPORT_CHUNK = 5000


def register_flag_commands(app: PaymentApp, settings: Settings, engine: Engine) -> None:
    @app.command(
        argument("action", type=click.Choice(ACTIONS)),
        argument("transaction_id", required=False),
        option("--rule", help="the rule's name, e.g. velocity, large_amount"),
        option("--status", type=click.Choice(FLAG_STATUSES),
               help="list/export: open, cleared or escalated; review: cleared or escalated"),
        option("--customer", help="list/export: one customer_id"),
        option("--since", help="event time at or after: ISO 8601 or 30m / 24h / 7d ago"),
        option("--until", help="event time before: ISO 8601 or a duration ago"),
        option("--limit", type=int, default=50, help="list: at most N flags (50)"),
        option("--json", "as_json", is_flag=True, help="list/show: JSON output"),
        option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]),
               default="jsonl", help="export format"),
        option("--output", type=click.Path(dir_okay=False),
               help="export: file to write (csv and jsonl default to stdout)"),
        option("--note", help="review: why"),
        option("--by", help="review: who (default: the login name)"),
    )
    async def flags(self: AppCommand, action: str, transaction_id: str | None,
                    rule: str | None, status: str | None, customer: str | None,
                    since: str | None, until: str | None, limit: int, as_json: bool,
                    fmt: str, output: str | None, note: str | None, by: str | None) -> None:
        """Work the compliance flags: list, show, export or review them."""
        store = ComplianceFlags(engine)
        try:
            if action in ("show", "review") and not transaction_id:
                raise click.UsageError(f"{action} needs a TXID")
            if action in ("list", "export") and transaction_id:
                raise click.UsageError(f"{action} takes no TXID (filter with --customer, "
                                       "--rule, --status, --since, --until)")
            if action == "review":
                if rule is None or status is None or note is None:
                    raise click.UsageError("review needs --rule, --status and --note")
                if status not in REVIEW_STATUSES:
                    raise click.UsageError("review --status is cleared or escalated")
                row = store.review(str(transaction_id), rule, status, note,
                                   by or getpass.getuser())
                when = f"{row['reviewed_at']:%Y-%m-%d %H:%M:%S}"
                click.echo(json.dumps(to_json(row), indent=2) if as_json else printable(
                    f"{row['transaction_id']} {row['rule']}: {row['status']} by "
                    f"{row['reviewed_by']} at {when}"))
                return
            if action == "show":
                report = payment_report(settings, engine, str(transaction_id))
                if report is None:
                    raise FlagError(f"no stored payment {transaction_id!r}")
                echo_payment(report, as_json)
                return
            flt = FlagFilter(rule=rule, status=status, customer=customer,
                             since=parse_time(since) if since else None,
                             until=parse_time(until) if until else None)
            if action == "list":
                _list(store, flt, limit, as_json)
            else:
                _export(store, flt, fmt, Path(output) if output else None)
        except (FlagError, FilterError) as exc:
            fail(str(exc))
        except click.ClickException as exc:
            fail(exc.format_message())
        except OSError as exc:
            fail(f"cannot write the output: {exc}")
        except (OperationalError, InterfaceError) as exc:
            database_errors(exc, settings)


def _list(store: ComplianceFlags, flt: FlagFilter, limit: int, as_json: bool) -> None:
    rows, _ = store.page(flt, limit=limit)
    for row in rows:
        if as_json:
            click.echo(json.dumps(to_json(row)))
        else:
            click.echo(printable(
                f"{row['event_time']:%Y-%m-%d %H:%M:%S}  {row['rule']:<17} "
                f"{row['status']:<9} {row['transaction_id']}  customer {row['customer_id']}  "
                f"merchant {row['merchant_id']}  {row['amount_minor']} {row['currency']}"))
    click.echo(f"{len(rows)} shown of {store.count(flt)} matching", err=True)


def _export(store: ComplianceFlags, flt: FlagFilter, fmt: str, output: Path | None) -> None:
    if fmt == "parquet" and output is None:
        raise FlagError("--format parquet needs --output FILE")
    total = store.count(flt)
    rows = tqdm(store.select(flt, chunk=EXPORT_CHUNK), total=total, unit=" flags",
                desc="export", file=sys.stderr, disable=None)
    written = 0
    try:
        with written_output(output, binary=fmt == "parquet") as sink:
            if fmt == "parquet":
                with pq.ParquetWriter(sink, EXPORT_SCHEMA, compression="zstd") as writer:
                    chunk: list[dict[str, Any]] = []
                    for row in rows:
                        chunk.append({**row, "evidence": json.dumps(row["evidence"])})
                        if len(chunk) == EXPORT_CHUNK:
                            writer.write_table(pa.Table.from_pylist(chunk, schema=EXPORT_SCHEMA))
                            written += len(chunk)
                            chunk = []
                    if chunk:
                        writer.write_table(pa.Table.from_pylist(chunk, schema=EXPORT_SCHEMA))
                        written += len(chunk)
            elif fmt == "csv":
                csv_writer = csv.DictWriter(sink, fieldnames=list(EXPORT_SCHEMA.names))
                csv_writer.writeheader()
                for row in rows:
                    csv_writer.writerow({**to_json(row), "evidence": json.dumps(row["evidence"])})
                    written += 1
            else:
                for row in rows:
                    sink.write(json.dumps(to_json(row)) + "\n")
                    written += 1
    finally:
        rows.close()
    click.echo(f"exported {written} flags{f' to {output}' if output else ''} ({fmt})",
               err=True)
