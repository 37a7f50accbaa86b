"""``faust -A app customers show`` and ``faust -A app payments show``: investigate one
customer or one payment from the command line.

* ``customers show CUSTOMER_ID [--since T] [--until T] [--json]``: the customer's payments
  across every merchant (oldest first, at most 1,000), their flags, and per rule the flags
  by status and, for the rules over time, the most payments that fell within one of the
  rule's windows in the range (beside the rule's limit).
* ``payments show TXID [--json]``: the stored payment, its flags with their evidence, the
  records that re-sent its id (duplicates in ``failed_items``) and its raw event from the
  lake. ``flags show`` prints the same.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from faust.cli import AppCommand, argument, option
from sqlalchemy import Engine

from app.cli import active_config, database_errors, fail, printable
from pipeline.config import ConfigError, ConfigManager
from runtime.faust_app import PaymentApp
from runtime.settings import Settings
from storage.broker import BrokerError
from storage.failed import FilterError, parse_time
from storage.flags import ComplianceFlags, FlagFilter, to_json
from storage.lake import LakeQuery, RawEventLake, to_records
from storage.queries import MAX_PAGE, PaymentQueries, QueryError

DEFAULT_DAYS = 30  # customers show without --since: the last 30 days


def register_investigate_commands(app: PaymentApp, settings: Settings, engine: Engine,
                                  config: ConfigManager) -> None:
    @app.command(
        argument("action", type=click.Choice(["show"])),
        argument("customer_id"),
        option("--since", help="event time at or after: ISO 8601 or 30m / 24h / 7d ago "
                               f"(default: {DEFAULT_DAYS} days ago)"),
        option("--until", help="event time before: ISO 8601 or a duration ago (default: now)"),
        option("--json", "as_json", is_flag=True, help="JSON output"),
    )
    async def customers(self: AppCommand, action: str, customer_id: str, since: str | None,
                        until: str | None, as_json: bool) -> None:
        """One customer across every merchant: payments, flags, counts per rule window."""
        try:
            end = parse_time(until) if until else datetime.now(UTC)
            start = parse_time(since) if since else end - timedelta(days=DEFAULT_DAYS)
            rules = [(e.kind, e.params) for e in
                     (await active_config(settings, config)).engine.extractors if e.is_rule]
            report = customer_report(engine, rules, customer_id, start, end)
        except (FilterError, QueryError) as exc:
            fail(str(exc))
        except ConfigError as exc:
            fail(f"the active configuration does not compile: {exc}")
        except BrokerError as exc:
            fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - the database's errors: one line
            database_errors(exc, settings)
        echo_customer(report, as_json)

    @app.command(
        argument("action", type=click.Choice(["show"])),
        argument("transaction_id"),
        option("--json", "as_json", is_flag=True, help="JSON output"),
    )
    async def payments(self: AppCommand, action: str, transaction_id: str,
                       as_json: bool) -> None:
        """One payment: the stored row, its flags, its re-sends and its raw event."""
        try:
            report = payment_report(settings, engine, transaction_id)
        except Exception as exc:  # noqa: BLE001 - the database's errors: one line
            database_errors(exc, settings)
        if report is None:
            fail(f"no stored payment {transaction_id!r}")
        echo_payment(report, as_json)


# -- one payment ------------------------------------------------------------------------


def payment_report(settings: Settings, engine: Engine,
                   transaction_id: str) -> dict[str, Any] | None:
    """The payment, its flags, its re-sends and its raw event; None when none is known."""
    queries = PaymentQueries(engine)
    payment = queries.transaction(transaction_id)
    flags = ComplianceFlags(engine).for_transaction(transaction_id)
    resends = queries.resends(transaction_id)
    if payment is None and not flags and not resends:
        return None
    return {"payment": payment, "flags": flags, "resends": resends,
            "raw_event": raw_event(settings, payment) if payment is not None else None}


def raw_event(settings: Settings, payment: dict[str, Any]) -> dict[str, Any] | None:
    """The payment's record in the lake: its event-time hour's files, then its id."""
    t = payment["event_time"]
    lake = RawEventLake(settings.raw_events_url, settings.lake_storage_options)
    try:
        for batch in lake.scan(LakeQuery(t, t + timedelta(milliseconds=1), accepted_only=True)):
            for row in to_records(batch):
                if row.get("transaction_id") == payment["transaction_id"]:
                    return row
    except OSError:
        return None
    return None


def echo_payment(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({
            "payment": to_json(report["payment"]) if report["payment"] else None,
            "flags": [to_json(f) for f in report["flags"]],
            "resends": [to_json(r) for r in report["resends"]],
            "raw_event": report["raw_event"]}, indent=2, default=str))
        return
    payment = report["payment"]
    if payment is not None:
        click.echo("payment:")
        for key, value in payment.items():
            click.echo(printable(f"  {key:>16}: {value}"))
    else:
        click.echo("payment: not stored (retention may have removed it)")
    click.echo(f"flags ({len(report['flags'])}):")
    for f in report["flags"]:
        review = (f"{f['status']} by {f['reviewed_by']} at {f['reviewed_at']:%Y-%m-%d %H:%M:%S}: "
                  f"{f['note']}" if f["reviewed_at"] else f["status"])
        click.echo(printable(f"  {f['rule']}: {review} (config {f['config_version']})"))
        click.echo(printable(f"    evidence: {json.dumps(f['evidence'])}"))
    click.echo(f"re-sent ({len(report['resends'])}):")
    for r in report["resends"]:
        click.echo(printable(f"  failed item {r['id']}: {r['source_topic']}"
                             f"[{r['source_partition']}]@{r['source_offset']} at "
                             f"{r['first_seen_at']:%Y-%m-%d %H:%M:%S}: {r['error_message']}"))
    raw = report["raw_event"]
    click.echo("raw event:" if raw else "raw event: not in the lake (yet)")
    for key, value in (raw or {}).items():
        click.echo(printable(f"  {key:>16}: {value}"))


# -- one customer -----------------------------------------------------------------------


def largest_window(times: list[float], within: float) -> int:
    """The most of ``times`` (sorted) that lie within ``within`` seconds of each other."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_right(times, t + within, lo=i) - i)
    return best


def customer_report(engine: Engine, rules: list[tuple[str, dict[str, Any]]],
                    customer_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    """The customer's payments and flags in ``[start, end)``, and per rule its flags by
    status and, for rules over time, the largest window's payments against the limit."""
    payments = PaymentQueries(engine).customer_payments(customer_id, start, end)
    flags = list(ComplianceFlags(engine).select(
        FlagFilter(customer=customer_id, since=start, until=end)))
    by_tx: dict[str, list[str]] = defaultdict(list)
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    for f in flags:
        by_tx[f["transaction_id"]].append(f["rule"])
        statuses[f["rule"]][f["status"]] += 1
    summary: dict[str, dict[str, Any]] = {}
    for kind, params in rules:
        entry: dict[str, Any] = {"flags": dict(statuses.get(kind, {}))}
        if kind == "velocity":
            times = sorted(p["event_time"].timestamp() for p in payments)
            entry.update(within_seconds=params["within_seconds"],
                         limit=f"more than {params['max_payments']}",
                         largest_window=largest_window(times, params["within_seconds"]))
        elif kind == "structuring":
            fraction = params["lower_fraction"]
            band: dict[str, list[float]] = defaultdict(list)
            for p in payments:
                limit = params["thresholds_minor"].get(p["currency"])
                if limit is not None and limit * fraction <= p["amount_minor"] < limit:
                    band[p["currency"]].append(p["event_time"].timestamp())
            entry.update(within_seconds=params["within_seconds"],
                         limit=f"at least {params['min_payments']} just under the threshold",
                         largest_window=max((largest_window(sorted(t), params["within_seconds"])
                                             for t in band.values()), default=0))
        summary[kind] = entry
    return {"customer_id": customer_id, "since": start, "until": end,
            "payments": [{**p, "flags": by_tx.get(p["transaction_id"], [])} for p in payments],
            "truncated": len(payments) == MAX_PAGE, "flags": flags, "rules": summary}


def echo_customer(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**to_json({k: v for k, v in report.items()
                                          if k not in ("payments", "flags")}),
                               "payments": [to_json(p) for p in report["payments"]],
                               "flags": [to_json(f) for f in report["flags"]]},
                              indent=2, default=str))
        return
    payments = report["payments"]
    merchants = {p["merchant_id"] for p in payments}
    click.echo(printable(
        f"customer {report['customer_id']}: {len(payments)} payments at {len(merchants)} "
        f"merchants, {report['since']:%Y-%m-%d %H:%M} to {report['until']:%Y-%m-%d %H:%M} UTC"
        + (" (the first 1,000)" if report["truncated"] else "")))
    for p in payments:
        click.echo(printable(
            f"  {p['event_time']:%Y-%m-%d %H:%M:%S}  {p['transaction_id']}  merchant "
            f"{p['merchant_id']}  {p['amount_minor']} {p['currency']}  {p['status']}"
            + (f"  FLAGGED: {', '.join(p['flags'])}" if p["flags"] else "")))
    click.echo("rules:")
    for kind, entry in report["rules"].items():
        flags = ", ".join(f"{n} {s}" for s, n in sorted(entry["flags"].items())) or "no flags"
        window = (f"; at most {entry['largest_window']} payments within "
                  f"{entry['within_seconds']} s (flags {entry['limit']})"
                  if "largest_window" in entry else "")
        click.echo(f"  {kind}: {flags}{window}")
