"""What one scrape of ``/metrics`` costs: lines, samples and the median time of 50
scrapes of an idle worker that has taken 20,000 payments.

    python -m benchmarks.metrics_scrape

Starts its own broker and PostgreSQL (the embedded one, or ``DATABASE_URL``'s server)
and stops them after.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from devtools.services import ensure_postgres
from devtools.stack import Stack
from simulator.generator import PaymentGenerator, load_scenario

EVENTS = 20_000
SCRAPES = 50


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="metrics-scrape-"))
    pg = ensure_postgres(None, work / "pg")
    stack = Stack.start(work, pg, "pm_metrics_scrape")
    try:
        worker = stack.start_worker("w1")
        events = list(PaymentGenerator(load_scenario(), seed=5, invalid_ratio=0.02)
                      .events(EVENTS))
        print(f"sending {EVENTS:,} payments ...", flush=True)
        stack.send(events)
        stack.wait_until_committed(len(events), timeout=300)
        time.sleep(2)  # idle
        times, body = [], ""
        for _ in range(SCRAPES):
            started = time.perf_counter()
            with urllib.request.urlopen(f"{worker.web_url}/metrics", timeout=10) as resp:
                body = resp.read().decode()
            times.append((time.perf_counter() - started) * 1000)
        lines = body.splitlines()
        samples = [line for line in lines if line and not line.startswith("#")]
        print(f"/metrics: {len(lines)} lines, {len(samples)} samples; median "
              f"{statistics.median(times):.2f} ms over {SCRAPES} scrapes")
    finally:
        stack.stop(drop_database=True)
        pg.stop()


if __name__ == "__main__":
    main()
