"""Read-only web views on the worker's Faust web server.

- ``/payments/stats/``: this worker's assigned partitions, ingest and sink counters,
  latency percentiles
  (``POST /payments/stats/reset/`` starts them afresh).
- ``/payments/windows/``: the windows this worker holds, per window size and channel
  (the partitions it owns, added up).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from faust.web import Request, Response, View

from tables.payments import split_key


def window_summary(cache: Any, *, limit: int = 12) -> dict[str, Any]:
    """The newest ``limit`` windows of each size, channels summed over partitions."""
    out: dict[str, Any] = {}
    for size in cache.tables:
        merged: dict[int, dict[str, dict[str, int]]] = defaultdict(dict)
        for key, value in cache.items(size):
            start, channel, _partition = split_key(key)
            slot = merged[start].setdefault(channel, defaultdict(int))
            slot["tx_count"] += value["tx_count"]
            slot["amount_minor_sum"] += value["amount_minor_sum"]
            for status, n in value["by_status"].items():
                slot[status] += n
        newest = sorted(merged, reverse=True)[:limit]
        out[f"{size}s"] = [
            {
                "window_start": datetime.fromtimestamp(start, UTC).isoformat(),
                "channels": {ch: dict(v) for ch, v in sorted(merged[start].items())},
            }
            for start in newest
        ]
    return out


def register_views(app: Any, stats: Any, sinks: Any, cache: Any, seen: Any) -> None:
    """Attach the views to ``app``'s web server."""

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
            })

    @app.page("/payments/stats/reset/")
    class StatsResetView(View):
        async def post(self, request: Request) -> Response:
            stats.reset()
            return self.json({"reset": True})

    @app.page("/payments/windows/")
    class WindowsView(View):
        async def get(self, request: Request) -> Response:
            limit = int(request.query.get("limit", "12"))
            return self.json(window_summary(cache, limit=limit))
