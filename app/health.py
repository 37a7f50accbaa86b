"""The probes (``GET /healthz``, ``GET /readyz``) and the gauges refreshed at each scrape.

Faust's ``/`` answers OK even when the worker has stalled (faust-streaming issues 175
and 640), so these probes look at the batch path itself:

* **Liveness** (``/healthz``): the fetch loop is running and either a batch was handled
  within HEALTH_STALL_S, or nothing is waiting (no lag). A sink that is retrying
  PostgreSQL counts as alive: that wait is explained, and bounded by DB_RETRY_SECONDS,
  after which the worker exits by itself. A restart cures what is left: a hung
  connection, a deadlock, a fetcher that stopped.
* **Readiness** (``/readyz``): partitions are assigned and no rebalance is running,
  the tables have recovered from their changelogs, the configuration topic has been
  read, the sink is neither retrying PostgreSQL nor stuck in one step for
  SINK_STUCK_S, nor is the duplicate check (``transaction_claims``), and the worker is
  live (a stalled worker takes no traffic either).

Each answers 200 or 503 with ``{"status": "ok"|"fail", "reason": ..., "checks": ...}``.
Lag is the log-end offset minus the committed offset, for the ``payments`` partitions
this worker owns now. The log-end offset is asked of the broker at each probe or scrape
(:class:`storage.broker.EndOffsets`, a connection outside the consumer group), and the
newer of that and the high watermark of the consumer's latest fetch is used. The fetch
state alone goes stale exactly when lag matters: aiokafka stops fetching a partition
while fetched records wait, so a held-up worker's lag would seem to stop growing. When
the broker does not answer within END_OFFSETS_TIMEOUT_S, the fetch state stands in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agents.config import ConfigSync
from agents.sinks import SinkService
from pipeline.config import ConfigManager
from runtime.faust_app import PaymentApp
from runtime.kafka_state import client_state
from runtime.settings import Settings
from runtime.telemetry import Telemetry
from runtime.topics import PAYMENTS
from storage.broker import EndOffsets
from tables.payments import CLOCK_TABLE, WindowState

log = logging.getLogger(__name__)
_NEVER = object()
END_OFFSETS_TIMEOUT_S = 2.0  # under the probes' 5 s timeout (the Helm chart)


@dataclass
class Verdict:
    ok: bool
    reason: str
    checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "fail", "reason": self.reason,
                "checks": self.checks}


class Health:
    """Answers the probes and refreshes the point-in-time gauges of :class:`Telemetry`."""

    def __init__(self, app: PaymentApp, settings: Settings, telemetry: Telemetry,
                 sinks: SinkService, config: ConfigManager, config_sync: ConfigSync,
                 windows: WindowState, end_offsets: EndOffsets) -> None:
        self.app = app
        self.end_offsets = end_offsets
        self._end_offsets_failing = False
        self.settings = settings
        self.telemetry = telemetry
        self.sinks = sinks
        self.config = config
        self.config_sync = config_sync
        self.windows = windows
        self.started_at = time.monotonic()
        self._stall_logged: object = _NEVER  # last_batch_at of the stall last logged

    # -- what the probes look at --------------------------------------------------------

    def _assigned(self) -> list[Any]:
        try:
            assignment = self.app.consumer.assignment()
        except Exception:  # noqa: BLE001 - the consumer is not up yet
            return []
        return sorted((tp for tp in assignment if tp.topic == PAYMENTS),
                      key=lambda tp: tp.partition)

    async def lag(self) -> dict[Any, int] | None:
        """Lag per owned ``payments`` partition; None when a partition's end is unknown
        (the broker did not answer and the consumer has not fetched it yet)."""
        assigned = self._assigned()
        if not assigned:
            return {}
        consumer: Any = self.app.consumer
        ends: dict[Any, int] = {}
        for tp in assigned:  # the high watermark of the consumer's latest fetch response
            with contextlib.suppress(Exception):  # not fetched yet
                if (fetched := consumer.highwater(tp)) is not None:
                    ends[tp] = int(fetched)
        try:
            for tp, end in (await self.end_offsets(assigned)).items():
                ends[tp] = max(ends.get(tp, 0), int(end))
        except Exception as exc:  # noqa: BLE001 - a probe must answer anyway
            if not self._end_offsets_failing:  # once per outage, not at every probe
                log.warning("the broker did not give the end offsets (%s); the lag comes "
                            "from the consumer's last fetch until it does",
                            type(exc).__name__ if isinstance(exc, TimeoutError) else exc)
            self._end_offsets_failing = True
        else:
            if self._end_offsets_failing:
                log.info("the broker gives the end offsets again")
            self._end_offsets_failing = False
        if len(ends) < len(assigned):
            return None
        committed = getattr(consumer, "_committed_offset", {})
        return {tp: max(0, end - int(committed.get(tp) or 0)) for tp, end in ends.items()}

    def _recovering(self) -> bool:
        tables: Any = self.app.tables
        return bool(tables.recovery.in_recovery)

    def _recovered(self) -> bool:
        tables: Any = self.app.tables
        return bool(tables.recovery.completed.is_set())

    def liveness(self, lag: dict[Any, int] | None, now: float) -> Verdict:
        app, stall = self.app, self.settings.health_stall_s
        waiting = None if lag is None else sum(lag.values())
        checks: dict[str, Any] = {
            "lag": waiting,
            "last_batch_s_ago": _ago(app.last_batch_at, now),
            "last_fetch_s_ago": _ago(app.last_fetch_at, now),
            "database_retry_s": round(self.sinks.db.retry.seconds(now), 1),
        }
        if app.last_fetch_at is None or self._recovering():
            return Verdict(True, "starting: partitions are being assigned or tables "
                                 "recovered", checks)
        if self.sinks.db.retry.since is not None:
            return Verdict(True, f"waiting for PostgreSQL (retrying for "
                                 f"{checks['database_retry_s']:.0f} s; the worker exits after "
                                 f"DB_RETRY_SECONDS={self.settings.db_retry_seconds:.0f})",
                           checks)
        fetch_ago = now - app.last_fetch_at
        if fetch_ago > stall:
            return Verdict(False, f"stalled: the fetch loop has not run for {fetch_ago:.0f} s",
                           checks)
        if waiting == 0:
            return Verdict(True, "idle: nothing to consume", checks)
        batch_ago = now - (app.last_batch_at or self.started_at)
        if batch_ago <= stall:
            return Verdict(True, f"consuming: last batch {batch_ago:.1f} s ago", checks)
        lag_text = "unknown (the broker did not answer)" if waiting is None else str(waiting)
        state = getattr(app.consumer, "fetch_state", None)
        if state is not None:  # why nothing reached the handler (ADR 0010)
            checks["fetch_state"] = state()
        reason = f"stalled: no batch handled for {batch_ago:.0f} s while lag is {lag_text}"
        if self._stall_logged != app.last_batch_at:  # once per stall, for its diagnosis:
            self._stall_logged = app.last_batch_at  # where every task of both loops waits
            log.warning("%s; the fetch loop: %s; the Kafka clients and the tasks: %s", reason,
                        json.dumps(checks.get("fetch_state"), default=str),
                        json.dumps(client_state(app), default=str))
        return Verdict(False, reason, checks)

    def readiness(self, now: float) -> Verdict:
        assigned = self._assigned()
        busy = self.sinks.busy_since
        checks: dict[str, Any] = {
            "assigned_partitions": [tp.partition for tp in assigned],
            "rebalancing": bool(self.app.rebalancing),
            "tables_recovered": self._recovered(),
            "config_synced": self.config_sync.synced,
            "database_retry_s": round(self.sinks.db.retry.seconds(now), 1),
            "sink_step_s": round(now - busy, 1) if busy is not None else 0.0,
            "duplicate_check_s": round(now - claiming, 1) if (
                claiming := self.sinks.db.claiming_since) is not None else 0.0,
        }
        if checks["rebalancing"]:
            return Verdict(False, "a rebalance is in progress", checks)
        if not assigned:
            return Verdict(False, "no payments partition assigned (starting, or more "
                                  "workers than partitions)", checks)
        if not checks["tables_recovered"]:
            return Verdict(False, "tables are recovering from their changelogs", checks)
        if not checks["config_synced"]:
            return Verdict(False, "the configuration topic has not been read yet", checks)
        if self.sinks.db.retry.since is not None:
            return Verdict(False, f"the sink is retrying PostgreSQL "
                                  f"({checks['database_retry_s']:.0f} s so far)", checks)
        if checks["sink_step_s"] > self.settings.sink_stuck_s:
            return Verdict(False, f"a sink step has run for {checks['sink_step_s']:.0f} s",
                           checks)
        if checks["duplicate_check_s"] > self.settings.sink_stuck_s:
            return Verdict(False, "the duplicate check in PostgreSQL has run for "
                                  f"{checks['duplicate_check_s']:.0f} s", checks)
        return Verdict(True, f"consuming {len(assigned)} partition(s)", checks)

    # -- probes and scrapes ------------------------------------------------------------

    async def probe(self) -> tuple[Verdict, Verdict]:
        """Both verdicts, with the gauges brought up to date."""
        lag = await self.lag()
        now = time.monotonic()
        live, ready = self.liveness(lag, now), self.readiness(now)
        if ready.ok and not live.ok:  # a stalled worker takes no traffic either
            ready = Verdict(False, f"not live: {live.reason}", ready.checks)
        self._refresh(lag, now, live, ready)
        return live, ready

    def _refresh(self, lag: dict[Any, int] | None, now: float, live: Verdict,
                 ready: Verdict) -> None:
        t = self.telemetry
        if lag is not None:  # unknown: keep the last values rather than report 0
            t.lag.clear()  # a revoked partition's series goes with it
            for tp, n in lag.items():
                t.lag.labels(tp.topic, str(tp.partition)).set(n)
        assigned = self._assigned()
        t.assigned.set(len(assigned))
        # commits per owned partition: a revoked partition's series go with it
        committed = getattr(self.app.consumer, "_committed_offset", {})
        t.committed_offset.clear()
        t.last_commit.clear()
        for tp in assigned:
            labels = (tp.topic, str(tp.partition))
            offset = committed.get(tp)
            if offset is not None:
                t.committed_offset.labels(*labels).set(offset)
            at = self.sinks.last_commit_at.get(tp.partition)
            if at is not None:
                t.last_commit.labels(*labels).set(at)
        t.db_retrying.set(1 if self.sinks.db.retry.since is not None else 0)
        t.db_retry_seconds.set(self.sinks.db.retry.seconds(now))
        t.recovering.set(1 if self._recovering() else 0)
        t.ready.set(1 if ready.ok else 0)
        t.healthy.set(1 if live.ok else 0)
        if self.config.loaded:
            active = self.config.active
            t.config.info({"version": active.version,
                           **{k.split(":")[0]: v.label for k, v in active.versions.items()}})
        newest = self._newest_event_time()
        if newest is not None:
            t.newest_window_age.set(max(0.0, time.time() - newest))

    def _newest_event_time(self) -> float | None:
        owned = {str(tp.partition) for tp in self._assigned()}
        times = [value["stream_time"] for key, value in self.windows.items(CLOCK_TABLE)
                 if str(key) in owned and value and value.get("stream_time") is not None]
        return max(times) if times else None


def _ago(stamp: float | None, now: float) -> float | None:
    return None if stamp is None else round(now - stamp, 1)
