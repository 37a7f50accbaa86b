"""The worker's Prometheus metrics, rendered and parsed back."""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from models.events import ErrorCategory
from runtime.telemetry import LATENCY_BUCKETS, Telemetry


def samples(t: Telemetry) -> dict:
    out: dict = {}
    for family in text_string_to_metric_families(generate_latest(t.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_batches_are_counted_and_latencies_bucketed_like_prometheus():
    t = Telemetry()
    latencies = [0.004, 0.005, 0.0051, 0.049, 0.05, 0.3, 45.0]
    t.record_batch(10, ["schema", "schema", "duplicate"], 2, 0.02, latencies)
    t.record_batch(5, [], 0, 0.01, [0.01])
    t.watch_flags(lambda: {"compliance_velocity": 4},
                  lambda: ["compliance_velocity", "compliance_large_amount"])
    got = samples(t)
    assert got[("payment_monitor_payments_accepted_total", ())] == 12
    assert got[("payment_monitor_payments_failed_total", (("category", "schema"),))] == 2
    assert got[("payment_monitor_payments_failed_total", (("category", "duplicate"),))] == 1
    for category in ErrorCategory:  # every category is there, at 0 if nothing failed
        assert ("payment_monitor_payments_failed_total",
                (("category", category.value),)) in got
    assert got[("payment_monitor_late_events_total", ())] == 2
    assert got[("payment_monitor_batch_size_count", ())] == 2
    values = [*latencies, 0.01]
    for bound in LATENCY_BUCKETS:  # le is inclusive, cumulative
        want = sum(1 for v in values if bisect_left([bound], v) == 0)
        key = ("payment_monitor_event_latency_seconds_bucket", (("le", str(bound)),))
        assert got[key] == want, bound
    assert got[("payment_monitor_event_latency_seconds_count", ())] == len(values)
    assert got[("payment_monitor_compliance_flags_total",
                (("rule", "compliance_velocity"),))] == 4
    assert got[("payment_monitor_compliance_flags_total",
                (("rule", "compliance_large_amount"),))] == 0


def test_lag_series_of_a_revoked_partition_go_away():
    t = Telemetry()
    t.lag.labels("payments", "0").set(5)
    t.lag.labels("payments", "1").set(7)
    t.lag.clear()  # what Health._refresh does before setting the owned partitions
    t.lag.labels("payments", "1").set(2)
    lag = {k: v for k, v in samples(t).items() if k[0] == "payment_monitor_consumer_lag"}
    assert lag == {("payment_monitor_consumer_lag",
                    (("partition", "1"), ("topic", "payments"))): 2}


def test_the_build_the_process_and_the_collector_are_exported():
    from runtime.version import REVISION, VERSION

    got = samples(Telemetry())
    assert got[("payment_monitor_build_info",
                (("revision", REVISION), ("version", VERSION)))] == 1
    assert VERSION and REVISION  # never empty, "unknown" at worst
    assert got[("process_resident_memory_bytes", ())] > 0
    assert got[("process_cpu_seconds_total", ())] >= 0
    assert any(name == "python_gc_collections_total" for name, _ in got)
