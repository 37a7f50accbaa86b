"""``make soak``: does a worker stay flat under sustained load, and lose nothing?

One broker (Apache Kafka on loopback whenever there is a JVM), PostgreSQL (embedded,
or ``DATABASE_URL``), ``W`` workers. The simulator offers ``R`` payments/s (2 %
invalid, re-sent ids included) for ``M`` minutes. Every 5 s the run samples each
worker's RSS and CPU time, the events consumed and the lag (end offsets minus
committed); every 30 s it prints a progress line. At the end it waits until every
offset is committed and checks that every event was stored exactly once: each valid
payment once in ``normalized_transactions``, each other message once in
``failed_items``, each (partition, offset) once in the lake. It writes the samples
to a JSON file and plots RSS, lag and throughput over time to a PNG.

    python -m benchmarks.soak --rate 8000 --minutes 30 --workers 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds

from benchmarks.pipeline import cpu_seconds, peak_rss_mb
from devtools.services import ensure_postgres, query
from devtools.stack import REPO_ROOT, Stack, Worker
from simulator.generator import PaymentGenerator, load_scenario
from simulator.producer import RunSummary, ensure_topic, produce

SAMPLE_S = 5.0
PROGRESS_S = 30.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Producer(threading.Thread):
    """The simulator at a steady rate in a thread of its own; ``summary`` when done."""

    def __init__(self, stack: Stack, rate: float, total: int) -> None:
        super().__init__(daemon=True)
        self.stack, self.rate, self.total = stack, rate, total
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        # event time advances at the offered rate, as in production (the scenario's own
        # 200/s would put an hour of event time into every 25 s of this run), and so does
        # the customer base: the scenario's 50,000 customers, made for 200/s, would each
        # pay about 100 times in ten minutes at 8,000/s, so that velocity flagged 83 % of
        # the payments, each with 50 payments of evidence (the soak of 615d833: 1.2 M such
        # flags in its first 1.5 M payments, the sink waiting 2 s on each judgement).
        # Scaled, a customer pays about 2.4 times in ten minutes, as at the scenario's 200/s.
        base = load_scenario()
        customers = max(int(base["customers"]), int(base["customers"] * self.rate / float(
            base["events_per_second"])))
        scenario = {**base, "events_per_second": self.rate, "customers": customers}
        events = PaymentGenerator(scenario, seed=7, invalid_ratio=0.02).events(self.total)
        try:
            self.summary = asyncio.run(produce(events, broker=self.stack.broker.bootstrap,
                                               topic="payments", total=self.total,
                                               rate=self.rate, progress=False))
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def sample(stack: Stack, workers: list[Worker], started: float,
           cpu_start: dict[int, float]) -> dict:
    committed, end = stack.committed_and_end()
    row: dict = {"t": round(time.monotonic() - started, 1), "end": end,
                 "committed": committed, "lag": end - committed, "workers": []}
    for w in workers:
        pid = w.proc.pid if w.proc is not None else 0
        try:
            stats = w.stats()
            native = stats.get("native_memory") or {}
            rocksdb = sum(v for part in native.values() if part
                          for k, v in part.items() if k != "databases")
            row["workers"].append({"pid": pid, "rss_mb": round(rss_mb(pid), 1),
                                   "cpu_s": round(cpu_seconds(pid) - cpu_start[pid], 2),
                                   "consumed": stats["ingest"]["consumed"],
                                   "rocksdb_mb": round(rocksdb / 2**20, 1),
                                   "native_memory": native})
        except OSError:
            row["workers"].append({"pid": pid, "rss_mb": None, "cpu_s": None, "consumed": None})
    return row


def progress_line(row: dict, previous: dict | None) -> str:
    span = row["t"] - (previous["t"] if previous else 0.0)
    done = row["committed"] - (previous["committed"] if previous else 0)
    parts = [f"{row['t'] / 60:5.1f} min", f"produced {row['end']:,}",
             f"committed {row['committed']:,} ({done / max(span, 1e-9):,.0f}/s)",
             f"lag {row['lag']:,}"]
    for i, w in enumerate(row["workers"]):
        if w["rss_mb"] is None:
            parts.append(f"w{i + 1} down")
            continue
        cpu_us = w["cpu_s"] / w["consumed"] * 1e6 if w["consumed"] else float("nan")
        parts.append(f"w{i + 1} RSS {w['rss_mb']:.0f} MB (RocksDB {w['rocksdb_mb']:.0f}), "
                     f"{cpu_us:.1f} us CPU/event")
    return " | ".join(parts)


def check_stored_once(stack: Stack, kinds: Counter[str]) -> dict:
    """Every produced event stored exactly once; raises AssertionError if not."""
    url = stack.database_url
    produced = sum(kinds.values())
    valid = kinds["valid"]
    (rows, distinct), = query(url, "SELECT count(*), count(DISTINCT transaction_id) "
                                   "FROM normalized_transactions")
    (failed, failed_coords), = query(url, "SELECT count(*), count(DISTINCT (source_partition, "
                                          "source_offset)) FROM failed_items")
    lake = ds.dataset(stack.raw_dir, format="parquet", partitioning="hive").to_table(
        columns=["partition", "offset"])
    coords = len(set(zip(lake["partition"].to_pylist(), lake["offset"].to_pylist(),
                         strict=True)))
    result = {"produced": produced, "valid": valid, "normalized_rows": rows,
              "normalized_distinct_ids": distinct, "failed_items": failed,
              "failed_items_distinct_offsets": failed_coords, "lake_rows": lake.num_rows,
              "lake_distinct_offsets": coords}
    problems = [name for name, ok in (
        ("each valid payment once in normalized_transactions", rows == distinct == valid),
        ("each other message once in failed_items",
         failed == failed_coords == produced - valid),
        ("each offset once in the lake", lake.num_rows == coords == produced),
    ) if not ok]
    result["exact"] = not problems
    if problems:
        raise AssertionError(f"not stored exactly once ({'; '.join(problems)}): {result}")
    return result


def plot(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t"] / 60 for s in samples]
    fig, (ax_rss, ax_lag, ax_rate) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    n_workers = len(samples[0]["workers"]) if samples else 0
    for i in range(n_workers):
        ax_rss.plot(minutes, [s["workers"][i]["rss_mb"] for s in samples], label=f"worker {i + 1}")
    ax_rss.axhline(400, color="red", linestyle="--", linewidth=1, label="400 MB target")
    ax_rss.set_ylabel("RSS (MB)")
    ax_rss.set_ylim(bottom=0)
    ax_rss.legend(loc="lower right")
    ax_lag.plot(minutes, [s["lag"] for s in samples], color="tab:orange")
    ax_lag.set_ylabel("lag (records)")
    ax_lag.set_ylim(bottom=0)
    rates = [0.0] + [(b["committed"] - a["committed"]) / max(b["t"] - a["t"], 1e-9)
                     for a, b in zip(samples, samples[1:], strict=False)]
    ax_rate.plot(minutes, rates, color="tab:green")
    ax_rate.set_ylabel("committed events/s")
    ax_rate.set_xlabel("minutes")
    ax_rate.set_ylim(bottom=0)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=8000, help="offered payments/s")
    p.add_argument("--minutes", type=float, default=30, help="how long to offer them")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--workdir", default=str(REPO_ROOT / ".run" / "soak"))
    p.add_argument("--json", default=str(REPO_ROOT / ".run" / "soak.json"))
    p.add_argument("--plot", default=str(REPO_ROOT / ".run" / "soak.png"))
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="worker setting for this run, e.g. --env DEDUPE_WINDOW_S=86400")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.minutes <= 0 or args.workers < 1:
        p.error("--rate and --minutes must be positive, --workers at least 1")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(args.workdir).resolve()  # the workers run in directories of their own
    pg = ensure_postgres(os.environ.get("DATABASE_URL"), workdir / "pg")
    run_id = uuid.uuid4().hex[:6]
    stack = Stack.start(workdir / run_id, pg, f"payment_monitor_soak_{run_id}",
                        partitions=args.partitions)
    total = int(args.rate * args.minutes * 60)
    env = dict(kv.split("=", 1) for kv in args.env)
    try:
        asyncio.run(ensure_topic(stack.broker.bootstrap, "payments", stack.partitions))
        workers = [stack.start_worker(f"w{i + 1}", **env) for i in range(args.workers)]
        cpu_start = {w.proc.pid: cpu_seconds(w.proc.pid) for w in workers if w.proc}
        print(f"soak: {args.rate:,.0f} payments/s for {args.minutes:g} min ({total:,} events) "
              f"into {args.workers} worker(s), {stack.partitions} partitions, "
              f"broker {stack.broker.name}", flush=True)
        producer = Producer(stack, args.rate, total)
        started = time.monotonic()
        producer.start()
        samples: list[dict] = []
        printed: dict | None = None
        next_print = started + PROGRESS_S
        while True:
            time.sleep(SAMPLE_S)
            row = sample(stack, workers, started, cpu_start)
            samples.append(row)
            if time.monotonic() >= next_print:
                print(progress_line(row, printed), flush=True)
                printed, next_print = row, next_print + PROGRESS_S
            if producer.error is not None:
                raise RuntimeError(f"the simulator failed: {producer.error!r}")
            if not producer.is_alive() and row["lag"] == 0 and row["end"] >= total:
                break
            for w in workers:
                if not w.alive():
                    raise RuntimeError(f"a worker exited; see {w.log_path}"
                                       f"{stack.worker_trouble()}")
        assert producer.summary is not None
        print(f"every offset committed {samples[-1]['t'] / 60:.1f} min after the start; "
              f"offered {producer.summary.rate:,.0f}/s; checking the stores ...", flush=True)
        stored = check_stored_once(stack, producer.summary.kinds)
        rss = [[s["workers"][i]["rss_mb"] for s in samples] for i in range(args.workers)]
        half = len(samples) // 2
        growth = [round(100 * (max(r[half:]) - r[half]) / r[half], 1) for r in rss]
        last = samples[-1]["workers"]
        figures = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}",
            "broker": stack.broker.name,
            "rate_offered": args.rate, "rate_achieved": round(producer.summary.rate),
            "minutes": args.minutes, "workers": args.workers, "partitions": stack.partitions,
            "env": env,
            "peak_rss_mb": [round(peak_rss_mb(w.proc.pid)) for w in workers if w.proc],
            "rss_growth_second_half_pct": growth,
            "max_lag": max(s["lag"] for s in samples),
            "cpu_us_per_event": [round(w["cpu_s"] / w["consumed"] * 1e6, 1)
                                 for w in last if w["consumed"]],
            "stored": stored,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"figures": figures, "samples": samples},
                                              indent=1))
        plot(samples, Path(args.plot),
             f"soak: {args.rate:,.0f}/s offered for {args.minutes:g} min, "
             f"{args.workers} worker(s), {stack.broker.name}")
        print("\n" + "\n".join(f"{k:<28} {v}" for k, v in figures.items()))
        print(f"\nsamples: {args.json}\nplot:    {args.plot}")
        return 0
    finally:
        stack.stop(drop_database=True)
        pg.stop()


if __name__ == "__main__":
    raise SystemExit(main())
