"""What an operator reads: /metrics, /healthz, /readyz, JSON logs, and the web port's
guard rails, against a running worker."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from devtools.services import call
from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import alert_rules, dashboard_exprs, promql_names, query, send
from tests.proxy import proxy_database

TOKEN = "admin-token-8c1f5e"  # a test value; the redaction must hide it in every log line


def scrape(worker) -> dict[str, list]:
    code, text = call(f"{worker.web_url}/metrics")
    assert code == 200
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def events(n: int, seed: int) -> list:
    return list(PaymentGenerator(load_scenario(), seed=seed, invalid_ratio=0.05,
                                 start=datetime(2026, 11, 1, 9, 0, tzinfo=UTC)).events(n))


def test_metrics_probes_logs_and_guard_rails(stack):
    worker = stack.start_worker("w1", LOG_FORMAT="json", WEB_ADMIN_TOKEN=TOKEN,
                                PARQUET_FLUSH_SECONDS="1")
    sent = events(6000, seed=91)
    send(stack, sent)
    stack.wait_until_committed(len(sent), timeout=180)

    # every name the dashboard and the alert rules use is in a real scrape (but `up`,
    # the series Prometheus itself writes for each scrape)
    samples = scrape(worker)
    wanted = set().union(*(promql_names(e) for e in dashboard_exprs()),
                         *(promql_names(r["expr"]) for r in alert_rules()))
    assert "up" in wanted
    assert sorted(wanted - set(samples) - {"up"}) == []
    failed = {s.labels["category"]: s.value for s in samples[
        "payment_monitor_payments_failed_total"]}
    invalid = [e for e in sent if e.kind != "valid"]
    assert sum(failed.values()) == len(invalid)
    assert samples["payment_monitor_payments_accepted_total"][0].value == len(sent) - len(invalid)
    # caught up and idle: lag 0 for each owned partition, one series each
    lag = wait_for(lambda: [s for s in scrape(worker)["payment_monitor_consumer_lag"]
                            if s.value == 0] or None, 30, "lag 0")
    assert sorted(int(s.labels["partition"]) for s in lag) == list(range(stack.partitions))

    code, body = call(f"{worker.web_url}/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"
    code, body = call(f"{worker.web_url}/readyz")
    assert code == 200 and json.loads(body)["checks"]["config_synced"] is True

    # the web port's guard rails: bad parameters, keys and methods on every route
    base = worker.web_url
    routes = ["/metrics", "/healthz", "/readyz", "/payments/stats/", "/payments/config/",
              "/payments/tables/", "/payments/tables/window-counts-5m/windows/",
              "/payments/tables/window-counts-5m/series/?key=pos",
              "/payments/tables/stream-clock/keys/0/", "/payments/dashboard.json",
              "/payments/dashboard/", "/payments/flags/"]
    for route in routes:
        path, _, params = route.partition("?")
        joiner = "&" if params else "?"
        code, body = call(f"{base}{route}{joiner}nonsense=1")
        assert code == 400 and "nonsense" in json.loads(body)["error"], route
        code, _ = call(f"{base}{path}", method="DELETE")
        assert code == 405, route
    bad = {
        "/payments/tables/window-counts-5m/windows/?limit=0": "limit",
        "/payments/tables/window-counts-5m/windows/?limit=x": "limit",
        "/payments/tables/window-counts-5m/windows/?limit=100000": "limit",
        "/payments/tables/window-counts-5m/windows/?scope=everyone": "scope",
        "/payments/tables/window-counts-5m/windows/?raw=1": "raw",
        "/payments/tables/window-counts-5m/windows/?limit=3&limit=4": "more than once",
        "/payments/tables/window-counts-5m/series/": "key",
        "/payments/tables/window-counts-5m/keys/no-partition/": "names no partition",
        "/payments/flags/?status=closed": "status",
        "/payments/flags/?since=yesterday": "since",
        "/payments/flags/?limit=0": "limit",
        "/payments/flags/?after=garbage": "page cursor",
    }
    for route, word in bad.items():
        code, body = call(base + route)
        assert code == 400 and word in json.loads(body)["error"], (route, body)
    assert call(f"{base}/payments/tables/nope/windows/")[0] == 404
    assert call(f"{base}/payments/stats/reset/", method="POST")[0] == 401
    assert call(f"{base}/payments/stats/reset/", method="POST",
                headers={"Authorization": "Bearer wrong"})[0] == 401
    code, _ = call(f"{base}/payments/stats/reset/", method="POST",
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 200 and worker.stats()["ingest"]["consumed"] == 0
    # the Prometheus counters never reset
    assert scrape(worker)["payment_monitor_payments_accepted_total"][0].value > 0

    # the compliance flags, page by page, are the table's rows; a review needs the token
    stored = {(r[0], r[1]) for r in query(stack.database_url,
                                          "SELECT transaction_id, rule FROM compliance_flags")}
    assert stored, "the simulator's traffic trips some rule"
    paged, after = [], None
    while True:
        code, body = call(f"{base}/payments/flags/?limit=7" + (f"&after={after}" if after else ""))
        assert code == 200, body
        page = json.loads(body)
        paged += [(f["transaction_id"], f["rule"]) for f in page["flags"]]
        after = page["next"]
        if after is None:
            break
    assert len(paged) == len(stored) and set(paged) == stored
    tx_id, rule = sorted(stored)[0]
    review = f"{base}/payments/flags/{tx_id}/review/"
    verdict = json.dumps({"rule": rule, "status": "cleared", "note": "known merchant",
                          "by": "ana"}).encode()
    assert call(review, method="POST", data=verdict)[0] == 401
    code, body = call(review, method="POST", data=b"[1]",
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 400 and "body" in json.loads(body)["error"]
    code, body = call(f"{base}/payments/flags/tx-none/review/", method="POST", data=verdict,
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 404
    code, body = call(review, method="POST", data=verdict,
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 200 and json.loads(body)["status"] == "cleared", body
    code, body = call(f"{base}/payments/flags/?status=cleared")
    assert [(f["transaction_id"], f["rule"], f["reviewed_by"]) for f in
            json.loads(body)["flags"]] == [(tx_id, rule, "ana")]

    worker.stop()
    lines = worker.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    others = [line for line in lines if not line.startswith("{")]
    assert len(records) > 20
    assert all(line[:1] in "+|" for line in others), others[:3]  # only Faust's start banner
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r.get("config_version") for r in records)
    assert TOKEN not in worker.log_path.read_text()


def test_readyz_follows_postgres_and_healthz_catches_a_stall(stack):
    proxy, proxied_url = proxy_database(stack.database_url)
    try:
        worker = stack.start_worker("w1", DATABASE_URL=proxied_url, PARQUET_FLUSH_SECONDS="1",
                                    DB_RETRY_SECONDS="300", HEALTH_STALL_S="6",
                                    SINK_QUEUE_EVENTS="2000", SINK_STUCK_S="5")
        first = events(3000, seed=92)
        send(stack, first)
        stack.wait_until_committed(len(first), timeout=120)
        wait_for(lambda: call(f"{worker.web_url}/readyz")[0] == 200, 30, "ready")

        # PostgreSQL cut: connections refused, the sink retries: not ready, still alive
        proxy.cut()
        send(stack, events(2000, seed=93)[:2000])
        code, body = wait_for(lambda: (r := call(f"{worker.web_url}/readyz"))[0] == 503 and r,
                              60, "/readyz 503")
        assert "PostgreSQL" in json.loads(body)["reason"]
        assert call(f"{worker.web_url}/healthz")[0] == 200  # waiting, explained
        retrying = scrape(worker)["payment_monitor_database_retrying"][0].value
        assert retrying == 1
        proxy.restore()
        wait_for(lambda: call(f"{worker.web_url}/readyz")[0] == 200, 90, "ready again")
        stack.wait_until_committed(5000, timeout=120)

        # PostgreSQL hangs (bytes held, nothing closed): the sink never returns, the queue
        # fills, the fetch loop stops while messages wait: /healthz fails
        proxy.freeze()
        send(stack, events(8000, seed=94))
        code, body = wait_for(lambda: (r := call(f"{worker.web_url}/healthz"))[0] == 503 and r,
                              90, "/healthz 503")
        assert json.loads(body)["reason"].startswith("stalled")
        assert call(f"{worker.web_url}/readyz")[0] == 503
        assert scrape(worker)["payment_monitor_healthy"][0].value == 0
        # the lag keeps growing while the worker is held up: the consumer no longer
        # fetches these partitions, so its fetch state alone would have frozen the figure
        send(stack, events(8000, seed=95))
        committed, end = stack.committed_and_end()
        lag = sum(s.value for s in scrape(worker)["payment_monitor_consumer_lag"])
        assert (lag, end) == (end - committed, 21000)
        proxy.thaw()
        wait_for(lambda: call(f"{worker.web_url}/healthz")[0] == 200, 120, "alive again")
        stack.wait_until_committed(21000, timeout=180)
    finally:
        proxy.close()


def lag_partitions(worker) -> dict[int, float]:
    """The partitions of this worker's lag series, and their lag."""
    return {int(s.labels["partition"]): s.value
            for s in scrape(worker).get("payment_monitor_consumer_lag", ())}


def owned(worker) -> set[int]:
    return {int(tp[len("payments["):-1]) for tp in worker.stats()["assigned"]
            if tp.startswith("payments[")}


def test_lag_series_follow_the_partitions_through_rebalances(stack):
    """Each worker reports lag only for the partitions it owns now: after a second worker
    joins, and after it leaves, no stale series is left behind (faust-streaming issue 72),
    and an idle, caught-up group shows lag 0 on every partition exactly once."""
    everything = set(range(stack.partitions))
    first = stack.start_worker("w1", PARQUET_FLUSH_SECONDS="1")
    sent = events(3000, seed=93)
    send(stack, sent)
    stack.wait_until_committed(len(sent), timeout=180)
    wait_for(lambda: lag_partitions(first) == dict.fromkeys(everything, 0), 30,
             "w1's lag 0 on every partition")

    second = stack.start_worker("w2", PARQUET_FLUSH_SECONDS="1")

    def shared() -> bool:
        mine, theirs = owned(first), owned(second)
        return bool(mine and theirs) and mine | theirs == everything \
            and set(lag_partitions(first)) == mine and set(lag_partitions(second)) == theirs
    wait_for(shared, 120, "the two workers' lag series to split the partitions")
    assert not owned(first) & owned(second)
    more = events(3000, seed=94)
    send(stack, more)
    stack.wait_until_committed(len(sent) + len(more), timeout=180)
    wait_for(lambda: set(lag_partitions(first).values()) == {0}
             and set(lag_partitions(second).values()) == {0}, 30, "lag 0 on both workers")

    second.stop()  # a clean leave: its partitions move back at once
    wait_for(lambda: lag_partitions(first) == dict.fromkeys(everything, 0), 120,
             "w1's lag series to cover every partition again, at 0")
    assert owned(first) == everything
