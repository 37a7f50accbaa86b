"""``make bench``: pipeline throughput and latency against a raw aiokafka consumer.

One run, one broker (Apache Kafka on loopback whenever there is a JVM, else
noida-db; the figures say which), one worker process:

1. produce N events (2 % invalid) to ``payments``;
2. raw: a plain aiokafka consumer reads all N (no processing): events/s;
   with ``--stock``, also a stock Faust agent that only parses each event
   (``benchmarks/stock_app.py``), the per-event path this design replaces;
3. pipeline: ``faust -A app worker`` consumes the same N with everything on
   (parse, validate, both window tables with changelogs, DLQ, PostgreSQL,
   Parquet, commits): events/s from its first batch to its last, the time
   until every offset is committed, and the worker process's CPU time (user +
   system, from /proc) per event from its first batch to the last commit;
4. latency: the simulator's events, made beforehand, are offered at a steady R
   events/s for T seconds to the caught-up worker (this process's CPU meanwhile,
   the sending and the commit polling, is printed too: it shares the cores);
   p50/p95/p99 from each event's producer timestamp to the end of its batch's
   table update, and to the commit of its offset (the
   committed offsets are polled every 20 ms: up to 20 ms is the poll's own);
   the worker's CPU per event over that phase; its peak RSS over the run;
5. metrics: the median time of 50 scrapes of ``/metrics`` on the idle worker.

    python -m benchmarks.pipeline --events 200000 --rate 5000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from devtools.services import Postgres, admin_cursor, ensure_postgres
from devtools.stack import REPO_ROOT, Stack
from simulator.generator import PaymentGenerator, load_scenario
from simulator.producer import ensure_topic, produce
from storage.broker import connection


async def raw_consume(bootstrap: str, topic: str, total: int) -> tuple[int, float]:
    """Read ``total`` records with a plain aiokafka consumer; (records, seconds)."""
    consumer = AIOKafkaConsumer(topic, **connection(bootstrap).client_kwargs(
        group_id=f"raw-{uuid.uuid4()}", auto_offset_reset="earliest",
        enable_auto_commit=False, max_poll_records=5000))
    await consumer.start()
    n, first = 0, None
    try:
        while n < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if batch and first is None:
                first = time.perf_counter()
            n += sum(len(v) for v in batch.values())
        return n, time.perf_counter() - (first or time.perf_counter())
    finally:
        await consumer.stop()


def run_until_result(cmd: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
                     result: Path, what: str, timeout: float) -> dict:
    """Run ``cmd`` until it writes ``result`` (JSON, written whole by a rename); its data."""
    from devtools.services import stop_process

    log = open(log_path, "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not result.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not finish; see {log_path}")
            time.sleep(0.5)
        return json.loads(result.read_text())
    finally:
        stop_process(proc)
        log.close()


def run_stock_agent(stack: Stack, events: int) -> float:
    """Time ``benchmarks.stock_app`` (its own consumer group) over the same events."""
    from devtools.services import free_port
    from devtools.stack import FAUST

    result = stack.workdir / "stock.json"
    (stack.workdir / "stock").mkdir(exist_ok=True)
    env = stack.worker_env("stock", APP_ID="stock-bench", BENCH_EVENTS=str(events),
                           BENCH_RESULT=str(result), WEB_PORT=str(free_port()))
    data = run_until_result([FAUST, "-A", "benchmarks.stock_app", "worker", "-l", "warn"],
                            cwd=REPO_ROOT, env=env, log_path=stack.workdir / "stock.log",
                            result=result, what="the stock agent", timeout=600)
    return data["events"] / data["seconds"]


QUIX_PYTHON = REPO_ROOT / ".venv-quix" / "bin" / "python"


def run_quix_peer(stack: Stack, events: int) -> dict[str, float]:
    """Run ``benchmarks/quix/app.py`` (Quix Streams, in ``.venv-quix``) over the same
    events with its own consumer group; its events/s and CPU us per event."""
    if not QUIX_PYTHON.exists():
        raise RuntimeError(f"{QUIX_PYTHON} is missing: `make .venv-quix/.installed` "
                           "installs the Quix Streams peer")
    result = stack.workdir / "quix.json"
    env = {**os.environ, "BOOTSTRAP": stack.broker.bootstrap, "EVENTS": str(events),
           "RESULT": str(result), "STATE_DIR": str(stack.workdir / "quix-state"),
           "SCHEMA": str(REPO_ROOT / "config" / "schemas" / "transaction-v1.json")}
    data = run_until_result([str(QUIX_PYTHON), str(REPO_ROOT / "benchmarks" / "quix" / "app.py")],
                            cwd=stack.workdir, env=env, log_path=stack.workdir / "quix.log",
                            result=result, what="the Quix peer", timeout=900)
    return {"events_per_s": data["events"] / data["seconds"],
            "cpu_us_per_event": data["cpu_seconds"] / data["events"] * 1e6}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included), from /proc."""
    return sum(cpu_times(pid))


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def tree_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process and its live descendants (PostgreSQL's
    backends, the broker's JVM), or None without a process."""
    if pid is None:
        return None
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        at = todo.pop()
        try:
            total += cpu_seconds(at)
        except OSError:
            continue
        todo += children.get(at, [])
    return total


def per_event_us(before: float | None, after: float | None, events: int) -> float | None:
    if before is None or after is None:
        return None
    return round((after - before) / events * 1e6, 1)


def admin(url: str, *statements: str, params: dict[str, object] | None = None) -> list[tuple]:
    """Run ``statements`` (each with ``params``) outside a transaction (``ALTER SYSTEM``
    needs that); the last one's rows."""
    with admin_cursor(url) as cur:
        for statement in statements:
            cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


def with_statement_stats(pg: Postgres, workdir: Path) -> Postgres:
    """This bench's embedded server again, with ``pg_stat_statements`` loaded; the
    setting is reset at once, so it holds for this start only."""
    if pg.embedded_pid is None:
        raise SystemExit("--pg-statements needs the embedded PostgreSQL (unset DATABASE_URL)")
    admin(pg.server_url, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
          "ALTER SYSTEM SET pg_stat_statements.track = 'all'")
    pg.stop()
    pg = ensure_postgres(None, workdir / "pg")
    admin(pg.server_url, "ALTER SYSTEM RESET shared_preload_libraries",
          "ALTER SYSTEM RESET pg_stat_statements.track",
          "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return pg


def top_statements(pg: Postgres, database: str, n: int = 12) -> str:
    """The statements of ``database`` that took PostgreSQL the longest since the last
    reset, nested ones (the foreign key's checks) included on their own lines."""
    statement = """
        SELECT s.total_exec_time, s.calls, s.rows,
               regexp_replace(left(s.query, 90), '\\s+', ' ', 'g')
        FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
        WHERE d.datname = %(database)s AND s.toplevel = %(toplevel)s
        ORDER BY s.total_exec_time DESC"""
    rows = admin(pg.server_url, statement, params={"database": database, "toplevel": True})
    nested = admin(pg.server_url, statement, params={"database": database, "toplevel": False})[:3]
    total = sum(r[0] for r in rows) or 1.0
    lines = [f"PostgreSQL statements by execution time ({total / 1000:.1f} s in all; "
             "nested ones are part of their statement's):"]
    lines += [f"  {100 * t / total:5.1f}%  {t / 1000:6.2f} s  {calls:>7,} calls  {nrows:>9,} rows"
              f"  {q}" for t, calls, nrows, q in rows[:n]]
    lines += [f"  nested {100 * t / total:5.1f}%  {calls:>7,} calls  {q}"
              for t, calls, _, q in nested]
    return "\n".join(lines)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class CommitWatcher:
    """Polls the group's committed offsets every ``interval`` s in a thread; keeps
    (time, offsets) whenever they move."""

    def __init__(self, stack: Stack, interval: float = 0.02) -> None:
        self.stack, self.interval = stack, interval
        self.moves: list[tuple[float, dict[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> CommitWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _run(self) -> None:
        tps = [TopicPartition("payments", p) for p in range(self.stack.partitions)]
        consumer = AIOKafkaConsumer(**connection(self.stack.broker.bootstrap).client_kwargs(
            group_id=self.stack.app_id, enable_auto_commit=False))
        await consumer.start()
        last: dict[int, int] = {}
        try:
            while not self._stop.is_set():
                now = {tp.partition: await consumer.committed(tp) or 0 for tp in tps}
                if now != last:
                    self.moves.append((time.time(), now))
                    last = now
                await asyncio.sleep(self.interval)
        finally:
            await consumer.stop()

    def committed_at(self, partition: int, offset: int) -> float | None:
        """When the committed offset of ``partition`` first passed ``offset``."""
        for at, offsets in self.moves:
            if offsets.get(partition, 0) > offset:
                return at
        return None


async def record_times(bootstrap: str, start: dict[int, int],
                       partitions: int) -> list[tuple[int, int, float]]:
    """(partition, offset, producer timestamp in s) of every record from ``start`` on."""
    consumer = AIOKafkaConsumer(**connection(bootstrap).client_kwargs(enable_auto_commit=False))
    await consumer.start()
    out = []
    try:
        tps = [TopicPartition("payments", p) for p in range(partitions)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp.partition, 0))
        remaining = {tp for tp in tps if end[tp] > start.get(tp.partition, 0)}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                out += [(tp.partition, r.offset, r.timestamp / 1000) for r in records]
                if records and records[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


def pct(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {f"p{int(q * 100)}": round(values[int(q * (len(values) - 1))] * 1000, 1)
            for q in (0.5, 0.95, 0.99)} if values else {}


def start_profiler(pid: int, path: str) -> subprocess.Popen:
    """py-spy (sampling, 200 Hz, native frames off) on the worker: the thread holding the
    GIL in each sample, so a sample is Python at work (a thread waiting on PostgreSQL or
    the network with the GIL released is not one: with it, waits looked like work)."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "-p", str(pid), "-r", "200", "-f", "raw",
                             "-o", path, "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


PROJECT = ("(agents/", "(pipeline/", "(storage/", "(tables/", "(app/", "(models/")
LIBRARIES = {"Kafka client (aiokafka)": ("aiokafka/",),
             "PostgreSQL driver (psycopg2, SQLAlchemy)": ("psycopg2", "sqlalchemy/"),
             "Parquet (pyarrow)": ("pyarrow",),
             "table stores (faust tables, rocksdict)": ("faust/tables", "faust/stores",
                                                        "rocksdict")}


def top_frames(path: Path, n: int = 25) -> str:
    """The project's frames and the main libraries by inclusive share of the worker's
    busy samples, from py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    libraries = dict.fromkeys(LIBRARIES, 0)
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples, frames = int(count), set(stack.split(";"))
        total += samples
        for frame in frames:
            if any(p in frame for p in PROJECT):
                inclusive[frame] = inclusive.get(frame, 0) + samples
        for name, patterns in LIBRARIES.items():
            if any(p in f for f in frames for p in patterns):
                libraries[name] += samples
    rows = sorted(inclusive.items(), key=lambda kv: -kv[1])[:n]
    rows += sorted(libraries.items(), key=lambda kv: -kv[1])
    return f"profile ({total} busy samples; inclusive share):\n" + "\n".join(
        f"  {100 * c / max(total, 1):5.1f}%  {frame[:110]}" for frame, c in rows)


def post(url: str, token: str) -> None:
    req = urllib.request.Request(url, data=b"", method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
    urllib.request.urlopen(req, timeout=5).read()


def scrape_ms(url: str, n: int = 50) -> float:
    """Median milliseconds of ``n`` scrapes of ``/metrics`` (the worker idle)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        urllib.request.urlopen(f"{url}/metrics", timeout=10).read()
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2] * 1000


async def partition_ends(bootstrap: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(**connection(bootstrap).client_kwargs())
    await consumer.start()
    try:
        tps = [TopicPartition("payments", p) for p in range(partitions)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--rate", type=float, default=5000, help="offered events/s for latency")
    p.add_argument("--seconds", type=float, default=20, help="length of the latency phase")
    p.add_argument("--workdir", default=str(REPO_ROOT / ".run" / "bench"))
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--stock", action="store_true", help="also time a stock Faust agent")
    p.add_argument("--peer", choices=["quix"], action="append", default=[],
                   help="also run a peer over the same events: quix = a Quix Streams app "
                        "that parses, validates and counts the same windows "
                        "(benchmarks/quix/app.py)")
    p.add_argument("--profile", metavar="FILE", help="sample the worker with py-spy during "
                   "the throughput phase; collapsed stacks to FILE, top frames printed")
    p.add_argument("--profile-latency", metavar="FILE", help="the same during the latency "
                   "phase (small batches: what a batch costs whatever its size)")
    p.add_argument("--pg-statements", action="store_true", help="load pg_stat_statements "
                   "into the embedded PostgreSQL and print where its time went in the "
                   "throughput phase and in the latency phase")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the payments "
                   "topic (one worker owns them all)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="worker setting for this run, e.g. --env PARQUET_FLUSH_SECONDS=60")
    args = p.parse_args(argv)

    # a SIGTERM (timeout, kill) unwinds through the finally below: no orphaned worker
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(args.workdir)
    pg = ensure_postgres(os.environ.get("DATABASE_URL"), workdir / "pg")
    if args.pg_statements:
        pg = with_statement_stats(pg, workdir)
    run_id = uuid.uuid4().hex[:6]
    database = f"payment_monitor_bench_{run_id}"
    stack = Stack.start(workdir / run_id, pg, database, partitions=args.partitions)
    try:
        boot = stack.broker.bootstrap
        asyncio.run(ensure_topic(boot, "payments", stack.partitions))
        events = PaymentGenerator(load_scenario(), seed=1, invalid_ratio=0.02).events(args.events)
        print(f"producing {args.events:,} events ...", flush=True)
        asyncio.run(produce(events, broker=boot, topic="payments", total=args.events,
                            progress=False))

        n, secs = asyncio.run(raw_consume(boot, "payments", args.events))
        raw_rate = n / secs
        print(f"raw aiokafka consumer: {n:,} records in {secs:.2f} s = {raw_rate:,.0f}/s",
              flush=True)

        stock_rate = None
        if args.stock:
            stock_rate = run_stock_agent(stack, args.events)
            print(f"stock Faust agent (parse only): {stock_rate:,.0f}/s", flush=True)
        quix = run_quix_peer(stack, args.events) if "quix" in args.peer else None
        if quix is not None:
            print(f"Quix Streams peer: {quix['events_per_s']:,.0f}/s, "
                  f"{quix['cpu_us_per_event']:.1f} us CPU/event", flush=True)

        started = time.monotonic()
        admin_token = uuid.uuid4().hex  # the stats reset between the phases needs it
        worker = stack.start_worker(WEB_ADMIN_TOKEN=admin_token,
                                    **dict(kv.split("=", 1) for kv in args.env))
        assert worker.proc is not None
        pid = worker.proc.pid
        # start-up (imports, recovery) is left out; the others share the two cores
        others = {"postgres": pg.embedded_pid, "broker": stack.broker.proc.pid}
        cpu_before = cpu_times(pid)
        others_before = {name: tree_cpu_seconds(p) for name, p in others.items()}
        while worker.stats()["ingest"]["consumed"] == 0:
            cpu_before = cpu_times(pid)
            others_before = {name: tree_cpu_seconds(p) for name, p in others.items()}
            time.sleep(0.02)
        if args.pg_statements:
            admin(pg.server_url, "SELECT pg_stat_statements_reset()")
        profiler = start_profiler(pid, args.profile) if args.profile else None
        stack.wait_until_committed(args.events, timeout=900)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
            print(top_frames(Path(args.profile)), flush=True)
        committed_after = time.monotonic() - started
        user, system = (after - before
                        for after, before in zip(cpu_times(pid), cpu_before, strict=True))
        cpu_throughput = user + system
        stats = worker.stats()["ingest"]
        others_us = {name: per_event_us(others_before[name], tree_cpu_seconds(p),
                                        stats["consumed"]) for name, p in others.items()}
        if args.pg_statements:
            print(top_statements(pg, database), flush=True)
        pipe_rate = stats["events_per_second"]
        cpu_us = cpu_throughput / stats["consumed"] * 1e6
        print(f"pipeline: {stats['consumed']:,} events at {pipe_rate:,.0f}/s (first to last "
              f"batch); all committed {committed_after:.1f} s after the worker started; "
              f"worker CPU {cpu_us:.1f} us/event", flush=True)

        post(f"{worker.web_url}/payments/stats/reset/", admin_token)
        total = int(args.rate * args.seconds)
        # made before the phase, as a load generator sends what it made beforehand: it
        # shares the two cores, and making a payment costs it about 35 us of CPU
        steady = list(PaymentGenerator(load_scenario(), seed=2, invalid_ratio=0.02).events(total))
        print(f"latency: offering {args.rate:,.0f} events/s for {args.seconds:.0f} s ...",
              flush=True)
        start_offsets = asyncio.run(partition_ends(boot, stack.partitions))
        latency_cpu_before = cpu_seconds(pid)
        # this process: the load generator and the commit watcher
        generator_cpu_before = cpu_seconds(os.getpid())
        others_before = {name: tree_cpu_seconds(p) for name, p in others.items()}
        profiler = start_profiler(pid, args.profile_latency) if args.profile_latency else None
        if args.pg_statements:
            admin(pg.server_url, "SELECT pg_stat_statements_reset()")
        with CommitWatcher(stack) as watcher:
            offered = asyncio.run(produce(steady, broker=boot, topic="payments", total=total,
                                          rate=args.rate, progress=False))
            stack.wait_until_committed(args.events + total, timeout=300)
            time.sleep(0.1)
        cpu_latency = (cpu_seconds(pid) - latency_cpu_before) / total * 1e6
        generator_us = (cpu_seconds(os.getpid()) - generator_cpu_before) / total * 1e6
        others_latency_us = {name: per_event_us(others_before[name], tree_cpu_seconds(p),
                                                total) for name, p in others.items()}
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
            print(top_frames(Path(args.profile_latency), n=45), flush=True)
        if args.pg_statements:
            print("latency phase: " + top_statements(pg, database), flush=True)
        metrics_scrape_ms = scrape_ms(worker.web_url)
        final = worker.stats()["ingest"]
        lat = final["latency_ms"]
        records = asyncio.run(record_times(boot, start_offsets, stack.partitions))
        to_commit = [at - ts for p, o, ts in records
                     if (at := watcher.committed_at(p, o)) is not None]
        commit = pct(to_commit)
        figures = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}",
            "broker": stack.broker.name,
            "events": args.events,
            "partitions": args.partitions,
            "raw_aiokafka_events_per_s": round(raw_rate),
            "pipeline_events_per_s": round(pipe_rate),
            "pipeline_to_raw_ratio": round(pipe_rate / raw_rate, 3),
            "stock_faust_agent_parse_only_per_s": round(stock_rate) if stock_rate else None,
            "quix_peer_events_per_s": round(quix["events_per_s"]) if quix else None,
            "quix_peer_cpu_us_per_event": round(quix["cpu_us_per_event"], 1) if quix else None,
            "all_committed_s": round(committed_after, 1),
            "worker_cpu_us_per_event": round(cpu_us, 1),
            "worker_cpu_system_share": round(system / cpu_throughput, 3),
            "postgres_cpu_us_per_event": others_us["postgres"],
            "broker_cpu_us_per_event": others_us["broker"],
            "worker_cpu_us_per_event_at_offered_rate": round(cpu_latency, 1),
            "postgres_cpu_us_per_event_at_offered_rate": others_latency_us["postgres"],
            "broker_cpu_us_per_event_at_offered_rate": others_latency_us["broker"],
            "load_generator_cpu_us_per_event_at_offered_rate": round(generator_us, 1),
            "worker_peak_rss_mb": round(peak_rss_mb(pid)),
            "latency_offered_per_s": args.rate,
            "latency_achieved_offer_per_s": round(offered.rate),
            "latency_ms_p50": lat["p50"],
            "latency_ms_p95": lat["p95"],
            "latency_ms_p99": lat["p99"],
            "of_which_until_fetched_ms_p50_p95": [final["fetch_latency_ms"]["p50"],
                                                  final["fetch_latency_ms"]["p95"]],
            "to_commit_ms_p50": commit.get("p50"),
            "to_commit_ms_p95": commit.get("p95"),
            "to_commit_ms_p99": commit.get("p99"),
            "to_commit_events_measured": len(to_commit),
            "batches_in_latency_phase": final["batches"],
            "metrics_scrape_ms_p50": round(metrics_scrape_ms, 2),
        }
        print("\n" + "\n".join(f"{k:<30} {v}" for k, v in figures.items()))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        return 0
    finally:
        stack.stop(drop_database=True)
        pg.stop()


if __name__ == "__main__":
    raise SystemExit(main())
