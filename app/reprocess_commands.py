"""``faust -A app reprocess --since T --until T [--dry-run] [--json]``: judge a range of
event time again under the configuration the workers run now (the config topic's
latest versions over the source's documents), after ``config push`` changed the rules.

The range's ``compliance_flags`` become the new verdicts (a review is kept where the flag
still holds) and its payments' ``dynamic_metrics`` rows are written again; then its
settled windows are rebuilt from its payments, late ones included. Two progress bars
count the payments judged and the hours rebuilt; the report gives the flags added,
removed and kept per rule, every reviewed flag that was removed, and the windows rebuilt,
left to the workers and the payments brought into them. ``--dry-run`` reports and
changes nothing.
Safe while workers run, and idempotent (:mod:`storage.reprocess`).
"""

from __future__ import annotations

import json
from datetime import datetime

import click
from faust.cli import AppCommand, option
from sqlalchemy import Engine
from tqdm import tqdm

from app.cli import active_config_and_bounds, database_errors, fail
from pipeline.config import ConfigError, ConfigManager
from runtime.faust_app import PaymentApp
from runtime.settings import Settings
from storage import reprocess as rework
from storage.broker import BrokerError
from storage.failed import FilterError, parse_time
from storage.reprocess import ReprocessError, ReprocessReport
from storage.window_rebuild import WindowPlan


def register_reprocess_command(app: PaymentApp, settings: Settings, engine: Engine,
                               manager: ConfigManager) -> None:
    @app.command(
        option("--since", required=True,
               help="event time at or after: ISO 8601 or 30m / 24h / 7d ago"),
        option("--until", required=True, help="event time before: ISO 8601 or a duration ago"),
        option("--dry-run", is_flag=True, help="report what would change, change nothing"),
        option("--json", "as_json", is_flag=True, help="the report as JSON"),
    )
    async def reprocess(self: AppCommand, since: str, until: str, dry_run: bool,
                        as_json: bool) -> None:
        """Judge a range again under the active configuration: its compliance flags,
        metric rows and windows."""
        try:
            start, end = parse_time(since), parse_time(until)
            total = rework.count_payments(engine, start, end)
            active, known = await active_config_and_bounds(settings, manager)
            plan = WindowPlan(settings.window_size_list, settings.window_retention_s)
            hours = plan.hours(start, end)
            stderr = click.get_text_stream("stderr")
            with tqdm(total=total, unit=" payments", desc="flags", disable=None,
                      file=stderr) as bar, \
                    tqdm(total=len(hours), unit=" windows", desc="windows", disable=None,
                         file=stderr) as window_bar:
                report = rework.reprocess(engine, active, start, end, dry_run=dry_run,
                                          progress=_Progress(bar, total, end),
                                          windows=plan, known_bounds=known,
                                          window_progress=_WindowProgress(window_bar, hours))
        except (ReprocessError, FilterError, BrokerError) as exc:
            fail(str(exc))
        except ConfigError as exc:
            fail(f"the active configuration does not compile: {exc}")
        except Exception as exc:  # noqa: BLE001 - the database's errors: one line
            database_errors(exc, settings)
        _echo(report, as_json)


class _Progress:
    """The bar on a terminal; otherwise a line on stderr per 5 % of the payments, and at
    the end (a Kubernetes job's log has no terminal)."""

    def __init__(self, bar: tqdm, total: int, end: datetime) -> None:
        self.bar, self.total, self.end = bar, total, end
        self.step = max(1, total // 20)
        self.done = 0

    def __call__(self, _: datetime, until: datetime, report: ReprocessReport) -> None:
        added, removed = sum(report.added.values()), sum(report.removed.values())
        self.bar.set_postfix(added=added, removed=removed)
        self.bar.update(report.payments - self.done)
        crossed = report.payments // self.step > self.done // self.step
        self.done = report.payments
        if self.bar.disable and (crossed or until == self.end):
            click.echo(f"reprocess: {report.payments}/{self.total} payments, up to "
                       f"{until.isoformat()}: +{added} -{removed} flags", err=True)


class _WindowProgress:
    """The windows' bar on a terminal; otherwise a line on stderr per window rebuilt of
    the largest size (an hour: there are few)."""

    def __init__(self, bar: tqdm, hours: list[int]) -> None:
        self.bar, self.total, self.done = bar, len(hours), 0

    def __call__(self, until: datetime) -> None:
        self.done += 1
        self.bar.update(1)
        if self.bar.disable:
            click.echo(f"reprocess: windows {self.done}/{self.total}, up to "
                       f"{until.isoformat()}", err=True)


def _echo(report: ReprocessReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    data = report.to_json()
    verb = "would change" if report.dry_run else "changed"
    click.echo(f"{report.payments} payments with event times in [{data['since']}, "
               f"{data['until']}) judged under {report.config_version}; flags {verb}:")
    for rule, n in data["rules"].items():
        click.echo(f"  {rule:<18} +{n['added']}  -{n['removed']}  (kept {n['kept']})")
    if not data["rules"]:
        click.echo("  none: no rule flags a payment of the range")
    for item in data["removed_reviewed"]:
        click.echo(f"  removed although reviewed ({item['status']}): {item['transaction_id']} "
                   f"{item['rule']}")
    windows = report.windows
    if windows is None or windows.span is None:
        click.echo("windows: none rebuilt (no window of the largest size lies wholly in the "
                   "range)")
        return
    first, last = (t.isoformat() for t in windows.span)
    sizes = ", ".join(f"{n} of {size} s" for size, n in sorted(windows.rebuilt.items()))
    done = "would be rebuilt" if report.dry_run else "rebuilt"
    click.echo(f"windows in [{first}, {last}) {done}: "
               f"{sizes or 'none'}; {windows.brought_in} payments brought in")
    if windows.unsettled:
        click.echo(f"  {len(windows.unsettled)} windows left to the workers, not settled yet "
                   f"(first {windows.unsettled[0].isoformat()}): run again later")
