"""The worker's Prometheus metrics, served at ``GET /metrics`` on its web port.

The batch path bypasses Faust's per-message machinery, so Faust's own sensor would
count nothing; the handlers and sinks count here instead. One registry per app (not
the global one), so tests can build several apps in one process.

Every series sums across workers in PromQL: counters and histograms are per worker,
and ``payment_monitor_consumer_lag`` carries only the partitions a worker owns (a
revoked partition's series is removed at the next scrape, not left stale). The names
are a contract: the Grafana dashboard, the alert rules (``deploy/prometheus/``) and
the tests rely on them; docs/operations.md lists them all.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from models.events import ErrorCategory
from pipeline.histogram import Histogram as MergeableHistogram
from runtime.version import REVISION, VERSION

PREFIX = "payment_monitor"
SINKS = ("postgres", "parquet", "windows", "commit")

# Seconds; the 50 ms latency objective falls on a bucket edge.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                         1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
SINK_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                        30.0, 60.0)


class Telemetry:
    """The metric objects; the ingest handler and the sinks update them as they work,
    the web view refreshes the point-in-time gauges at each scrape (:mod:`app.health`)."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: half the scrape, nothing read them
        r = self.registry = CollectorRegistry(auto_describe=True)
        # process_* (CPU seconds, resident memory, open fds) and python_gc_*, as the
        # default registry has them; this one is the app's own
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        Gauge(f"{PREFIX}_build_info", "1, labelled with the running build's version and "
              "git revision", ["version", "revision"], registry=r).labels(
                  VERSION, REVISION).set(1)
        self.accepted = Counter(f"{PREFIX}_payments_accepted", "payments accepted",
                                registry=r)
        self.failed = Counter(f"{PREFIX}_payments_failed",
                              "messages that failed, by error category (each one went to "
                              "the dead-letter topic)", ["category"], registry=r)
        for category in ErrorCategory:  # every category from the start, at 0
            self.failed.labels(category.value)
        self.late = Counter(f"{PREFIX}_late_events",
                            "accepted payments too late for their window (counted only "
                            "in late_events)", registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "messages per handled batch",
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram(f"{PREFIX}_batch_seconds",
                                       "seconds to parse, validate, extract and count one "
                                       "batch", buckets=BATCH_SECONDS_BUCKETS, registry=r)
        # every event is observed: in bulk (bisect per value, 0.1 us) rather than through
        # Histogram.observe (0.7 us, a lock per call), then rendered at each scrape
        self.event_latency = BulkHistogram(f"{PREFIX}_event_latency_seconds",
                                           "seconds from a message's producer timestamp to "
                                           "the table update of its batch", LATENCY_BUCKETS)
        r.register(self.event_latency)
        self.sink_seconds = Histogram(f"{PREFIX}_sink_seconds",
                                      "seconds per sink step: postgres (a transaction), "
                                      "parquet (a flush), windows (histogram rows), commit",
                                      ["sink"], buckets=SINK_SECONDS_BUCKETS, registry=r)
        for sink in SINKS:
            self.sink_seconds.labels(sink)
        self.lag = Gauge(f"{PREFIX}_consumer_lag",
                         "log-end offset minus committed offset, per partition this worker "
                         "owns", ["topic", "partition"], registry=r)
        self.committed_offset = Gauge(f"{PREFIX}_committed_offset",
                                      "the committed offset (next to read), per partition "
                                      "this worker owns", ["topic", "partition"], registry=r)
        self.last_commit = Gauge(f"{PREFIX}_last_commit_timestamp_seconds",
                                 "when this worker last committed the partition's offset (or "
                                 "was assigned it), Unix time", ["topic", "partition"],
                                 registry=r)
        self.rebalances = Counter(f"{PREFIX}_rebalances",
                                  "rebalances this worker took part in (assignments received)",
                                  registry=r)
        self.db_retrying = Gauge(f"{PREFIX}_database_retrying",
                                 "1 while a sink write is retrying PostgreSQL", registry=r)
        self.db_retry_seconds = Gauge(f"{PREFIX}_database_retry_seconds",
                                      "how long the current PostgreSQL retry has lasted",
                                      registry=r)
        self.config = Info(f"{PREFIX}_config", "the active configuration versions",
                           registry=r)
        self.newest_window_age = Gauge(f"{PREFIX}_newest_window_age_seconds",
                                       "seconds since the newest event time counted in "
                                       "this worker's windows", registry=r)
        self.recovering = Gauge(f"{PREFIX}_changelog_recovering",
                                "1 while tables are recovering from their changelogs",
                                registry=r)
        self.assigned = Gauge(f"{PREFIX}_assigned_partitions",
                              "payments partitions this worker owns", registry=r)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when /readyz answers 200", registry=r)
        self.healthy = Gauge(f"{PREFIX}_healthy", "1 when /healthz answers 200", registry=r)

    def watch_flags(self, counts: Callable[[], Mapping[str, int]],
                    rules: Callable[[], Iterable[str]]) -> None:
        """Serve ``payment_monitor_compliance_flags_total{rule}`` from ``counts()`` (the
        sink's, which counts a payment when it is first stored), with every rule of
        ``rules()`` present from the start."""
        self.registry.register(_FlagCollector(counts, rules))

    def watch_config(self, stats: Callable[[], Any]) -> None:
        """Serve ``payment_monitor_config_reloads_total`` and
        ``payment_monitor_config_rejected_total`` from ``stats()`` (the configuration
        manager's counters: versions applied, and versions refused, pushed or from the
        watched source)."""
        self.registry.register(_ConfigCollector(stats))

    def record_batch(self, n: int, failed_categories: list[str], late: int, seconds: float,
                     latencies: list[float]) -> None:
        """One handled batch: ``n`` messages, the categories of those that failed."""
        self.accepted.inc(n - len(failed_categories))
        for category, count in Tally(failed_categories).items():  # a label lookup each
            self.failed.labels(category).inc(count)
        if late:
            self.late.inc(late)
        self.batch_size.observe(n)
        self.batch_seconds.observe(seconds)
        self.event_latency.observe_many(latencies)


class BulkHistogram(Collector):
    """A Prometheus histogram fed a batch of values at a time (one per event)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.values = MergeableHistogram(buckets)

    def observe_many(self, values: Sequence[float]) -> None:
        self.values.observe_many(values)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        h = self.values
        cumulative, running = [], 0
        for bound, n in zip([*h.bounds, float("inf")], h.counts, strict=True):
            running += n
            cumulative.append((floatToGoString(bound), running))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative,
                                    sum_value=float(h.sum))


class _FlagCollector(Collector):
    def __init__(self, counts: Callable[[], Mapping[str, int]],
                 rules: Callable[[], Iterable[str]]) -> None:
        self.counts = counts
        self.rules = rules

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(f"{PREFIX}_compliance_flags", FLAGS_HELP, labels=["rule"])]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(f"{PREFIX}_compliance_flags", FLAGS_HELP, labels=["rule"])
        counts = {rule: 0 for rule in self.rules()}
        counts.update(self.counts())
        for rule, n in sorted(counts.items()):
            family.add_metric([rule], n)
        yield family


class _ConfigCollector(Collector):
    def __init__(self, stats: Callable[[], Any]) -> None:
        self.stats = stats

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily]:
        return (CounterMetricFamily(f"{PREFIX}_config_reloads",
                                    "configuration versions this worker applied"),
                CounterMetricFamily(f"{PREFIX}_config_rejected",
                                    "configuration versions this worker refused (a push "
                                    "or a watched source that does not compile or check)"))

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        reloads, rejected = self._families()
        reloads.add_metric([], stats.reloads)
        rejected.add_metric([], stats.rejected)
        yield reloads
        yield rejected


FLAGS_HELP = ("payments a compliance rule flagged, by rule (counted once, when the payment "
              "is first stored)")
