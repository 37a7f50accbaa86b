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
import logging
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientTimeout
from faust.web import Request, Response, View
from yarl import URL

from agents.ingest import IngestStats
from agents.sinks import SinkService
from app.faust_app import PaymentApp
from models.events import STATUSES, approval_rate, authorization_rate
from pipeline.config import ConfigManager
from pipeline.windows import WindowCounts, WindowMetrics
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

log = logging.getLogger(__name__)
DASHBOARD_HTML = Path(__file__).with_name("dashboard.html")
PEER_TIMEOUT = ClientTimeout(total=5)  # another worker's answer to a merged view
DASHBOARD_CHANNELS = ("ecommerce", "pos", "mobile", "moto", "recurring")


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


async def dashboard_data(windows: Windows) -> dict[str, Any]:
    """Current windows per channel for the dashboard: counts, approval, latency, amounts;
    and this worker's configuration versions and reload counters."""
    out: dict[str, Any] = {"generated_at": datetime.now(UTC).isoformat(), "windows": [],
                           "config": windows.config.snapshot() if windows.config else None}
    for size in windows.sizes:
        counts = await windows.merged(counts_table(size))
        metrics = await windows.merged(metrics_table(size))
        if not counts and not metrics:
            continue
        start = max(list(counts) + list(metrics))
        slot_c = present("counts", counts.get(start, {}))
        slot_m = metrics.get(start, {})
        channels = {}
        for channel in sorted(set(slot_c) | set(DASHBOARD_CHANNELS)):
            c = slot_c.get(channel, {})
            latency = slot_m.get(f"processing_ms|channel={channel}")
            channels[channel] = {
                "tx_count": c.get("tx_count", 0),
                **{s: c.get(s, 0) for s in STATUSES},
                "approval_rate": c.get("approval_rate"),
                "latency_ms": {q: latency.quantile(v) if latency else None
                               for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
            }
        amounts = {key.split("=", 1)[1]: h.to_dict() for key, h in slot_m.items()
                   if key.startswith("amount_minor|currency=") and "," not in key}
        late = slot_m.get("late_events|")
        out["windows"].append({
            "window_seconds": size,
            "window_start": datetime.fromtimestamp(start, UTC).isoformat(),
            "channels": channels,
            "amount_minor_by_currency": amounts,
            "late_events": late.count if late else 0,
        })
    return out


def register_views(app: PaymentApp, stats: IngestStats, sinks: SinkService, windows: WindowState,
                   seen: SeenIds, config: ConfigManager) -> Windows:
    """Attach the views to ``app``'s web server."""
    views = Windows(app, windows, config)

    @app.page("/payments/stats/")
    class StatsView(View):
        async def get(self, request: Request) -> Response:
            assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in app.consumer.assignment())
            return self.json({
                "assigned": assigned,
                "ingest": stats.snapshot(),
                "sinks": {
                    "rows_written": dict(sinks.rows_written),
                    "parquet_files": sinks.files_written,
                    "commits": sinks.commits,
                },
                "dedupe": {"ids_held": seen.size(), "ids_expired": seen.purged,
                           "window_s": seen.expiry},
                "metrics": ({"definitions": len(config.active.engine.definitions),
                             "config_version": config.active.version}
                            if config.loaded else None),
            })

    @app.page("/payments/config/")
    class ConfigView(View):
        async def get(self, request: Request) -> Response:
            """Active version per key, reload count and duration, rejections."""
            return self.json(config.snapshot())

    @app.page("/payments/stats/reset/")
    class StatsResetView(View):
        async def post(self, request: Request) -> Response:
            stats.reset()
            return self.json({"reset": True})

    @app.page("/payments/tables/")
    class TablesView(View):
        async def get(self, request: Request) -> Response:
            out = []
            for name, table in sorted(app.tables.items()):
                kind, size = views.kinds.get(name, ("clock" if name == CLOCK_TABLE
                                                    else "other", None))
                out.append({"name": name, "kind": kind, "window_seconds": size,
                            "help": table.help, "local_keys": len(table.data)})
            return self.json({"tables": out})

    @app.page("/payments/tables/{table}/windows/")
    class TableWindowsView(View):
        async def get(self, request: Request, table: str) -> Response:
            if table not in views.kinds:
                return self.error(404, f"no window table {table!r}; see /payments/tables/")
            if request.query.get("scope") == "local" and request.query.get("raw"):
                return self.json(views.local_raw(table))  # encoded: no bounds needed
            if views.starting:
                return self.error(503, STARTING)
            if request.query.get("scope") == "local":
                merged = views.local(table)
            else:
                merged = await views.merged(table)
            limit = _int(request.query.get("limit"), 12)
            return self.json({"table": table, "windows": window_list(views, table, merged,
                                                                      limit)})

    @app.page("/payments/tables/{table}/series/")
    class TableSeriesView(View):
        async def get(self, request: Request, table: str) -> Response:
            if table not in views.kinds:
                return self.error(404, f"no window table {table!r}; see /payments/tables/")
            key = request.query.get("key", "")
            if not key:
                return self.error(400, "give ?key=<channel> or ?key=<metric>|<dimension>")
            if views.starting:
                return self.error(503, STARTING)
            kind, size = views.kinds[table]
            merged = await views.merged(table)
            series = []
            for start in sorted(merged, reverse=True)[:_int(request.query.get("limit"), 24)]:
                value = merged[start].get(key)
                if value is not None:
                    series.append({
                        "window_start": datetime.fromtimestamp(start, UTC).isoformat(),
                        "value": present(kind, {key: value})[key]})
            return self.json({"table": table, "key": key, "window_seconds": size,
                              "windows": series})

    @app.page("/payments/tables/{table}/keys/{key}/")
    class TableKeyView(View):
        async def get(self, request: Request, table: str, key: str) -> Response:
            if table not in app.tables:
                return self.error(404, f"no table {table!r}; see /payments/tables/")
            try:
                partition = int(key) if table == CLOCK_TABLE else key_partition(key)
            except ValueError:
                return self.error(400, f"key {key!r} names no partition")
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
                return self.error(404, f"key {key!r} not in {table!r}")
            return self.json({"table": table, "key": key, "value": value})

    @app.page("/payments/dashboard.json")
    class DashboardDataView(View):
        async def get(self, request: Request) -> Response:
            if views.starting:
                return self.error(503, STARTING)
            return self.bytes(orjson.dumps(await dashboard_data(views)),
                              content_type="application/json")

    @app.page("/payments/dashboard/")
    class DashboardView(View):
        async def get(self, request: Request) -> Response:
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


def _int(text: str | None, default: int) -> int:
    try:
        return max(1, int(text)) if text else default
    except ValueError:
        return default
