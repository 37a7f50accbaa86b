"""Read-only web views on the worker's Faust web server (docs/metrics.md lists them).

- ``/payments/stats/``: this worker's partitions, ingest and sink counters, latency
  percentiles (``POST /payments/stats/reset/`` starts them afresh).
- ``/payments/tables/``: the tables, with their keys on this worker.
- ``/payments/tables/<table>/windows/?limit=12``: the newest windows of a window
  table, partitions added up (counts) or merged (histograms).
- ``/payments/tables/<table>/series/?key=<k>``: one key across the windows: a
  channel (``window-counts-*``) or ``<metric>|<dimension>`` (``window-metrics-*``).
- ``/payments/tables/<table>/keys/<key>/``: one stored value as is.
- ``/payments/dashboard/``: an HTML page of the current windows per channel that
  refreshes itself (no build step, no CDN); its data is ``/payments/dashboard.json``.

Window keys carry their source partition, so Faust's ``table_route`` (which hashes
the key) cannot find their owner; these views route the same way from the
assignor's table metadata instead: a key's partition names the worker that owns
it, and a view over all partitions asks every worker for its part
(``?scope=local`` answers for this worker only) and merges the answers.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import orjson
from aiohttp import ClientTimeout
from faust.web import Request, Response, View
from faust.web.exceptions import ValidationError as BadRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from agents.ingest import IngestStats
from agents.sinks import SinkService
from app.health import Health
from models.db import FLAG_STATUSES
from models.errors import PaymentMonitorError
from models.events import CHANNELS, STATUSES, approval_rate, authorization_rate
from pipeline.config import ConfigManager
from pipeline.windows import FAILED_EVENTS, LATE_EVENTS, WindowCounts, WindowMetrics
from runtime.faust_app import PaymentApp
from runtime.settings import Settings
from runtime.telemetry import Telemetry
from storage.flags import MAX_PAGE, ComplianceFlags, FlagError, FlagFilter, FlagNotFound, to_json
from tables.payments import (
    CLOCK_TABLE,
    WindowState,
    counts_table,
    key_order,
    key_partition,
    key_window_start,
    metrics_table,
    split_key,
)
from tables.seen import SeenIds
from tables.stores import rocksdb_memory, table_databases

log = logging.getLogger(__name__)
DASHBOARD_HTML = Path(__file__).with_name("dashboard.html")
PEER_TIMEOUT = ClientTimeout(total=5)  # another worker's answer to a merged view


STARTING = ("the worker is starting and has not loaded its configuration yet (the bucket "
            "bounds of the windows come from it): try again in a moment")


class Windows:
    """Window summaries of this worker's partitions, and their merge across workers."""

    def __init__(self, app: PaymentApp, state: WindowState, config: ConfigManager) -> None:
        self.app = app
        self.state = state
        self.sizes = state.sizes
        self.config = config
        self.kinds: dict[str, tuple[str, int]] = {}
        for size in state.sizes:
            self.kinds[counts_table(size)] = ("counts", size)
            self.kinds[metrics_table(size)] = ("metrics", size)

    # -- this worker --------------------------------------------------------------------

    @property
    def starting(self) -> bool:
        """True until the worker has loaded its configuration: the bucket bounds of
        values stored before they carried their own come from it."""
        return not self.config.loaded

    def local_raw(self, table: str) -> dict[str, Any]:
        """This worker's stored values of ``table`` by key (one per window and partition)."""
        return dict(self.state.items(table))

    def merge(self, table: str, raw: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """``{window start: {channel: WindowCounts}}`` or ``{window start: {metric key:
        Histogram}}``: the partitions' values added (counts) or merged (histograms).

        Keys are merged in sorted order, so float sums come out bit for bit the same
        however the values are spread over workers or recovered.
        """
        kind, _ = self.kinds[table]
        out: dict[int, dict[str, Any]] = defaultdict(dict)
        for key in sorted(raw, key=key_order):
            if kind == "counts":
                start, channel, _ = split_key(key)
                counts = WindowCounts.from_dict(raw[key])
                slot = out[start].setdefault(channel, WindowCounts())
                slot.merge(counts)
            else:
                value = WindowMetrics.from_dict(raw[key], self.config.bounds)
                merged = out[key_window_start(key)].setdefault("", WindowMetrics())
                merged.merge(value.hists)
        if kind == "metrics":
            return {start: slot[""].hists for start, slot in out.items()}
        return out

    def local(self, table: str) -> dict[int, dict[str, Any]]:
        return self.merge(table, self.local_raw(table))

    # -- every worker --------------------------------------------------------------------

    def peers(self, table: str) -> list[str]:
        """Web URLs of the other workers that own partitions of ``table``."""
        me = str(self.app.conf.canonical_url).rstrip("/")
        topic = self.app.tables[table].changelog_topic.get_topic_name()
        try:
            hosts = self.app.assignor.table_metadata(topic)
        except Exception:  # noqa: BLE001 - no assignment yet: this worker only
            return []
        return sorted({str(h).rstrip("/") for h, parts in hosts.items() if parts} - {me})

    async def merged(self, table: str) -> dict[int, dict[str, Any]]:
        raw = self.local_raw(table)
        peers = self.peers(table)
        if peers:
            answers = await asyncio.gather(*(self._fetch(p, table) for p in peers))
            for answer in answers:
                if answer is not None:
                    raw.update(answer)
        return self.merge(table, raw)

    async def _fetch(self, peer: str, table: str) -> dict[str, Any] | None:
        url = URL(peer) / "payments" / "tables" / table / "windows" / ""
        try:
            async with self.app.http_client.get(url.with_query(scope="local", raw="1"),
                                                timeout=PEER_TIMEOUT) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                return orjson.loads(await resp.read())
        except Exception as exc:  # noqa: BLE001 - show what we have, say what is missing
            log.warning("web: worker %s did not answer for %s: %s", peer, table, exc)
            return None


def present(kind: str, slot: dict[str, Any]) -> dict[str, Any]:
    if kind == "metrics":
        return {key: h.to_dict() for key, h in sorted(slot.items())}
    out = {}
    for channel, counts in sorted(slot.items()):
        approved = counts.by_status.get("approved", 0)
        declined = counts.by_status.get("declined", 0)
        out[channel] = {
            "tx_count": counts.tx_count,
            "amount_minor_sum": counts.amount_minor_sum,
            **{status: n for status, n in sorted(counts.by_status.items())},
            "approval_rate": _round(approval_rate(approved, counts.tx_count)),
            "authorization_rate": _round(authorization_rate(approved, declined)),
        }
    return out


def _round(rate: float | None) -> float | None:
    return None if rate is None else round(rate, 4)


def window_list(windows: Windows, table: str, merged: dict[int, dict[str, Any]],
                limit: int) -> list[dict[str, Any]]:
    kind, size = windows.kinds[table]
    return [{"window_start": datetime.fromtimestamp(start, UTC).isoformat(),
             "window_seconds": size, "values": present(kind, merged[start])}
            for start in sorted(merged, reverse=True)[:limit]]


async def dashboard_data(windows: Windows, health: Health | None = None,
                         flags: ComplianceFlags | None = None) -> dict[str, Any]:
    """The dashboard's data: the current windows per channel (counts, approval, latency,
    amounts), the trend of the last 24 finest windows (with the flags per rule), the
    newest open compliance flags, this worker's probes and lag, and its configuration
    versions and reload counters."""
    out: dict[str, Any] = {"generated_at": datetime.now(UTC).isoformat(), "windows": [],
                           "trend": [], "health": None, "rules": [], "open_flags": None,
                           "config": windows.config.snapshot()}
    for size in windows.sizes:
        counts = await windows.merged(counts_table(size))
        metrics = await windows.merged(metrics_table(size))
        if not counts and not metrics:
            continue
        if size == windows.sizes[0]:
            out["trend"] = trend(counts, metrics, size)
        # the newest window with payments (failed messages are windowed by broker time)
        start = max(counts) if counts else max(metrics)
        slot_c = present("counts", counts.get(start, {}))
        slot_m = metrics.get(start, {})
        channels = {}
        for channel in sorted(set(slot_c) | set(CHANNELS)):
            c = slot_c.get(channel, {})
            latency = slot_m.get(f"processing_ms|channel={channel}")
            channels[channel] = {
                "tx_count": c.get("tx_count", 0),
                **{s: c.get(s, 0) for s in STATUSES},
                "approval_rate": c.get("approval_rate"),
                "authorization_rate": c.get("authorization_rate"),
                "latency_ms": {q: latency.quantile(v) if latency else None
                               for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
            }
        amounts = {key.split("=", 1)[1]: h.to_dict() for key, h in slot_m.items()
                   if key.startswith("amount_minor|currency=") and "," not in key}
        late = slot_m.get(f"{LATE_EVENTS}|")
        out["windows"].append({
            "window_seconds": size,
            "window_start": datetime.fromtimestamp(start, UTC).isoformat(),
            "channels": channels,
            "amount_minor_by_currency": amounts,
            "late_events": late.count if late else 0,
        })
    if flags is not None:
        try:
            await _flags_of(out, flags, windows)
        except Exception as exc:  # noqa: BLE001 - the rest of the page still shows
            log.warning("dashboard: cannot read the compliance flags (%s)", type(exc).__name__)
    if health is not None:
        live, ready = await health.probe()
        lag = list(health.telemetry.lag.collect())[0].samples
        out["health"] = {"live": live.to_dict(), "ready": ready.to_dict(),
                         "lag": {s.labels["partition"]: int(s.value) for s in lag}}
    return out


async def _flags_of(out: dict[str, Any], flags: ComplianceFlags, windows: Windows) -> None:
    """The configured rules, the flags per rule in each trend window (PostgreSQL's, by
    event time: the rules over a customer's payments are judged there), and the newest
    open flags."""
    config = windows.config
    out["rules"] = (sorted(e.kind for e in config.active.engine.extractors if e.is_rule)
                    if config.loaded else [])
    if out["trend"]:
        size = out["trend"][0]["window_seconds"]
        starts = [datetime.fromisoformat(w["window_start"]) for w in out["trend"]]
        counts = await asyncio.to_thread(flags.per_window, starts[0],
                                         starts[-1] + timedelta(seconds=size), size)
        for w, start in zip(out["trend"], starts, strict=True):
            w["flags"] = counts.get(int(start.timestamp()), {})
    newest, _ = await asyncio.to_thread(flags.page, FlagFilter(status="open"),
                                        limit=NEWEST_FLAGS)
    out["open_flags"] = [to_json(f) for f in newest]


TREND_WINDOWS = 24
NEWEST_FLAGS = 10


def trend(counts: dict[int, dict[str, Any]], metrics: dict[int, dict[str, Any]],
          size: int) -> list[dict[str, Any]]:
    """The last 24 windows of one size, oldest first: payments, approval rate, failures by
    category and p95 processing time."""
    starts = sorted(set(counts) | set(metrics))[-TREND_WINDOWS:]
    out = []
    prefix = f"{FAILED_EVENTS}|category="
    for start in starts:
        by_channel = counts.get(start, {})
        total = WindowCounts()
        for value in by_channel.values():
            total.merge(value)
        hists = metrics.get(start, {})
        latency = hists.get("processing_ms|")
        out.append({
            "window_start": datetime.fromtimestamp(start, UTC).isoformat(),
            "window_seconds": size,
            "payments": total.tx_count,
            "approval_rate": _round(approval_rate(total.by_status.get("approved", 0),
                                                  total.tx_count)),
            "failed": {key[len(prefix):]: h.count for key, h in sorted(hists.items())
                       if key.startswith(prefix)},
            "latency_ms_p95": latency.quantile(0.95) if latency else None,
        })
    return out


class BadParameter(PaymentMonitorError, BadRequest):
    """A request parameter this view does not take, or a value it cannot use (a 400)."""


Parser = Callable[[str, str], Any]


def _limit(high: int) -> Parser:
    def parse(name: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise BadParameter(f"{name} must be an integer, got {text[:40]!r}") from None
        if not 1 <= value <= high:
            raise BadParameter(f"{name} must be between 1 and {high}, got {value}")
        return value
    return parse


def _choice(*allowed: str) -> Parser:
    def parse(name: str, text: str) -> str:
        if text not in allowed:
            raise BadParameter(f"{name} must be {' or '.join(map(repr, allowed))}, "
                               f"got {text[:40]!r}")
        return text
    return parse


def _text(max_chars: int) -> Parser:
    def parse(name: str, text: str) -> str:
        if not text or len(text) > max_chars:
            raise BadParameter(f"{name} must be 1 to {max_chars} characters")
        return text
    return parse


def params(request: Request, allowed: dict[str, Parser]) -> dict[str, Any]:
    """The query parameters, parsed; raises :class:`BadParameter` naming the first bad one."""
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        names = ", ".join(sorted(allowed)) or "none"
        raise BadParameter(f"unknown parameter {unknown[0][:40]!r} (this view takes: {names})")
    query: Any = request.query  # aiohttp's MultiDict
    repeated = sorted(name for name in set(query) if len(query.getall(name)) > 1)
    if repeated:
        raise BadParameter(f"parameter {repeated[0]!r} is given more than once")
    return {name: parse(name, request.query[name]) for name, parse in allowed.items()
            if name in request.query}


def _time(name: str, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadParameter(f"{name} must be an ISO 8601 time, got {text[:40]!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


FLAG_PARAMS: dict[str, Parser] = {
    "rule": _text(100), "status": _choice(*FLAG_STATUSES), "customer": _text(200),
    "since": _time, "until": _time, "limit": _limit(MAX_PAGE), "after": _text(2000)}
WINDOW_PARAMS: dict[str, Parser] = {"limit": _limit(500), "scope": _choice("local"),
                                    "raw": _choice("1")}
SERIES_PARAMS: dict[str, Parser] = {"key": _text(200), "limit": _limit(500)}


def _authorized(request: Request, token: str | None) -> bool:
    given = request.headers.get("Authorization", "")
    # a header is whatever a client sent: bytes that are no UTF-8 arrive as surrogates
    return token is not None and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                     f"Bearer {token}".encode())


def register_views(app: PaymentApp, settings: Settings, stats: IngestStats, sinks: SinkService,
                   windows: WindowState, seen: SeenIds, config: ConfigManager,
                   health: Health, telemetry: Telemetry,
                   flags: ComplianceFlags | None = None) -> Windows:
    """Attach the views to ``app``'s web server. Every view is read-only; those that
    change state (the stats reset, a flag's review) require
    ``Authorization: Bearer <WEB_ADMIN_TOKEN>``."""
    views = Windows(app, windows, config)
    admin_token = (settings.web_admin_token.get_secret_value()
                   if settings.web_admin_token is not None else None)

    class Checked(View):
        """A view whose query parameters are checked: a bad one is a 400 with a reason."""

        allowed: ClassVar[dict[str, Parser]] = {}

        def checked(self, request: Request) -> dict[str, Any]:
            return params(request, self.allowed)

    @app.page("/metrics")
    class MetricsView(Checked):
        async def get(self, request: Request) -> Response:
            """Prometheus exposition; lag and the other gauges are refreshed first."""
            self.checked(request)
            await health.probe()
            return self.bytes(generate_latest(telemetry.registry),
                              content_type=CONTENT_TYPE_LATEST.split(";")[0])

    class ProbeView(Checked):
        """200 or 503 with the verdict of one probe (``which``: 0 live, 1 ready)."""

        which: ClassVar[int] = 0

        async def get(self, request: Request) -> Response:
            self.checked(request)
            verdict = (await health.probe())[self.which]
            return self.json(verdict.to_dict(), status=200 if verdict.ok else 503)

    @app.page("/healthz")
    class HealthzView(ProbeView):
        which = 0

    @app.page("/readyz")
    class ReadyzView(ProbeView):
        which = 1

    @app.page("/payments/stats/")
    class StatsView(Checked):
        async def get(self, request: Request) -> Response:
            self.checked(request)
            assigned = sorted(f"{tp.topic}[{tp.partition}]"
                              for tp in app.assigned_partitions())
            return self.json({
                "assigned": assigned,
                "ingest": stats.snapshot(),
                "sinks": {
                    "rows_written": dict(sinks.rows_written),
                    "parquet_files": sinks.files_written,
                    "commits": sinks.commits,
                },
                # ids in memory: none when PostgreSQL's claims decide (ADR 0011)
                "dedupe": {"ids_held": seen.size(), "ids_expired": seen.purged,
                           "window_s": seen.expiry,
                           "customers_in_memory": seen.recent_times.size()},
                # RocksDB's native memory: not on the Python heap, so not in tracemalloc
                "native_memory": {
                    "tables": rocksdb_memory(table_databases(app.tables.values())),
                    "histories": seen.histories.memory() if seen.histories else None},
                "metrics": ({"definitions": len(config.active.engine.definitions),
                             "config_version": config.active.version}
                            if config.loaded else None),
            })

    @app.page("/payments/config/")
    class ConfigView(Checked):
        async def get(self, request: Request) -> Response:
            """Active version per key, reload count and duration, rejections."""
            self.checked(request)
            return self.json(config.snapshot())

    @app.page("/payments/stats/reset/")
    class StatsResetView(Checked):
        async def post(self, request: Request) -> Response:
            """Start the live stats afresh (the Prometheus counters never reset)."""
            self.checked(request)
            no = refused(self, request)
            if no is not None:
                return no
            stats.reset()
            return self.json({"reset": True})

    def refused(view: View, request: Request) -> Response | None:
        """Why a state-changing request is refused, or None when its token is right."""
        if admin_token is None:
            return view.error(403, "state-changing views are off: set WEB_ADMIN_TOKEN "
                                   "and send Authorization: Bearer <token>")
        if not _authorized(request, admin_token):
            return view.error(401, "Authorization: Bearer <WEB_ADMIN_TOKEN> required")
        return None

    @app.page("/payments/flags/")
    class FlagsView(Checked):
        allowed = FLAG_PARAMS

        async def get(self, request: Request) -> Response:
            """Compliance flags, newest event first, a page at a time (``next``: the
            ``after`` of the next page); filters: rule, status, customer, since, until."""
            query = self.checked(request)
            if flags is None:
                return self.error(404, "no database: flags are not served here")
            try:
                flt = FlagFilter(rule=query.get("rule"), status=query.get("status"),
                                 customer=query.get("customer"), since=query.get("since"),
                                 until=query.get("until"))
                rows, after = await asyncio.to_thread(
                    flags.page, flt, limit=query.get("limit", 50), after=query.get("after"))
            except FlagError as exc:
                raise BadParameter(str(exc)) from None
            return self.bytes(orjson.dumps({"flags": [to_json(r) for r in rows],
                                            "next": after}),
                              content_type="application/json")

    @app.page("/payments/flags/{transaction_id}/review/")
    class FlagReviewView(Checked):
        async def post(self, request: Request, transaction_id: str) -> Response:
            """Review one flag: a JSON body ``{"rule", "status": "cleared" | "escalated",
            "note", "by"}``."""
            self.checked(request)
            no = refused(self, request)
            if no is not None:
                return no
            if flags is None:
                return self.error(404, "no database: flags are not served here")
            try:
                body = await request.json()
            except ValueError:
                raise BadParameter("the body must be a JSON object") from None
            if not isinstance(body, dict) or not all(
                    isinstance(body.get(k), str) for k in ("rule", "status", "note", "by")):
                raise BadParameter('the body must be {"rule", "status", "note", "by"}, '
                                   "all strings")
            try:
                row = await asyncio.to_thread(flags.review, transaction_id, body["rule"],
                                              body["status"], body["note"], body["by"])
            except FlagNotFound as exc:
                return self.error(404, str(exc))
            except FlagError as exc:
                raise BadParameter(str(exc)) from None
            return self.bytes(orjson.dumps(to_json(row)), content_type="application/json")

    @app.page("/payments/tables/")
    class TablesView(Checked):
        async def get(self, request: Request) -> Response:
            self.checked(request)
            out = []
            for name, table in sorted(app.tables.items()):
                kind, size = views.kinds.get(name, ("clock" if name == CLOCK_TABLE
                                                    else "other", None))
                out.append({"name": name, "kind": kind, "window_seconds": size,
                            "help": table.help, "local_keys": len(table.data)})
            return self.json({"tables": out})

    @app.page("/payments/tables/{table}/windows/")
    class TableWindowsView(Checked):
        allowed = WINDOW_PARAMS

        async def get(self, request: Request, table: str) -> Response:
            if table not in views.kinds:
                return self.error(404, f"no window table {table[:80]!r}; see /payments/tables/")
            query = self.checked(request)
            if query.get("raw") and query.get("scope") != "local":
                raise BadParameter("raw=1 is for scope=local only (how workers ask each other)")
            if query.get("scope") == "local" and query.get("raw"):
                return self.json(views.local_raw(table))  # encoded: no bounds needed
            if views.starting:
                return self.error(503, STARTING)
            if query.get("scope") == "local":
                merged = views.local(table)
            else:
                merged = await views.merged(table)
            return self.json({"table": table, "windows": window_list(
                views, table, merged, query.get("limit", 12))})

    @app.page("/payments/tables/{table}/series/")
    class TableSeriesView(Checked):
        allowed = SERIES_PARAMS

        async def get(self, request: Request, table: str) -> Response:
            if table not in views.kinds:
                return self.error(404, f"no window table {table[:80]!r}; see /payments/tables/")
            query = self.checked(request)
            key = query.get("key")
            if not key:
                raise BadParameter("give ?key=<channel> or ?key=<metric>|<dimension>")
            if views.starting:
                return self.error(503, STARTING)
            kind, size = views.kinds[table]
            merged = await views.merged(table)
            series = []
            for start in sorted(merged, reverse=True)[:query.get("limit", 24)]:
                value = merged[start].get(key)
                if value is not None:
                    series.append({
                        "window_start": datetime.fromtimestamp(start, UTC).isoformat(),
                        "value": present(kind, {key: value})[key]})
            return self.json({"table": table, "key": key, "window_seconds": size,
                              "windows": series})

    @app.page("/payments/tables/{table}/keys/{key}/")
    class TableKeyView(Checked):
        async def get(self, request: Request, table: str, key: str) -> Response:
            if table not in app.tables:
                return self.error(404, f"no table {table[:80]!r}; see /payments/tables/")
            self.checked(request)
            if table not in views.kinds and table != CLOCK_TABLE:
                # seen-transactions holds transaction and customer ids and amounts: not
                # served over HTTP (Faust's own /table views are off for the same reason)
                return self.error(404, f"table {table!r} is not served over HTTP; the "
                                       "window tables and the stream clock are")
            try:
                partition = int(key) if table == CLOCK_TABLE else key_partition(key)
            except (ValueError, IndexError):
                raise BadParameter(f"key {key[:80]!r} names no partition") from None
            owner = _owner(app, table, partition)
            me = str(app.conf.canonical_url).rstrip("/")
            if owner is not None and owner != me:
                target = URL(owner)
                async with app.http_client.get(request.url.with_host(target.host or "127.0.0.1")
                                               .with_port(target.port),
                                               timeout=PEER_TIMEOUT) as resp:
                    return self.text(await resp.text(), content_type="application/json",
                                     status=resp.status)
            value = dict(windows.items(table)).get(key)
            if value is None:
                return self.error(404, f"key {key[:80]!r} not in {table!r}")
            return self.json({"table": table, "key": key, "value": value})

    @app.page("/payments/dashboard.json")
    class DashboardDataView(Checked):
        async def get(self, request: Request) -> Response:
            self.checked(request)
            if views.starting:
                return self.error(503, STARTING)
            return self.bytes(orjson.dumps(await dashboard_data(views, health, flags)),
                              content_type="application/json")

    @app.page("/payments/dashboard/")
    class DashboardView(Checked):
        async def get(self, request: Request) -> Response:
            self.checked(request)
            return self.html(DASHBOARD_HTML.read_text())

    return views


def _owner(app: PaymentApp, table: str, partition: int) -> str | None:
    topic = app.tables[table].changelog_topic.get_topic_name()
    try:
        hosts = app.assignor.table_metadata(topic)
    except Exception:  # noqa: BLE001
        return None
    for host, topics in hosts.items():
        if partition in topics.get(topic, ()):
            return str(host).rstrip("/")
    return None
