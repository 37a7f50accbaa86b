"""Before/after: the same records through two versions of the worker give the same outputs.

    python -m benchmarks.identity --against 5d69bea --events 200000

One broker, one ``payments`` topic, the events produced once (the simulator's default
scenario with 2 % bad messages, re-sent ids, disorder and late events). Then a worker of
the commit ``--against`` (a git worktree, run with its own code first on the path) and a
worker of this checkout each read every record, with consumer groups, databases and lakes
of their own. Each run's outputs are dumped in a canonical order and compared:

- PostgreSQL: ``normalized_transactions``, ``dynamic_metrics`` (the JSON as stored),
  ``failed_items``, ``compliance_flags``, ``payment_window_partials``,
  ``payment_metrics_5m``, ``histogram_partials``, ``aggregate_histograms``;
- the lake: every row of the Delta table;

minus the columns that say when a row was written (``ingested_at``, ``flagged_at``, the
lake's ``arrival_time``, ...).

Everything must be equal, byte for byte, but two things that depend on how the records
were fetched and written, in any version: the evidence of a flag of a rule over a
customer's payments (velocity, structuring) lists the payments PostgreSQL held when it
was judged, which depends on how the partitions' writes interleaved (the flags
themselves must be equal); and the float sums of the windowed metrics
(``histogram_partials.sum``, ``aggregate_histograms`` sum and quantiles): a worker adds a
batch's values, then the batch's sum to the window's, so where the fetches split a
window's payments decides how the float additions group. Those are compared to 1e-9,
relative; the report says how many differ at all. Prints one line per table.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from devtools.services import ensure_postgres, query
from devtools.stack import REPO_ROOT, Stack, run_migrations
from simulator.generator import PaymentGenerator, load_scenario
from simulator.producer import ensure_topic, produce
from storage.lake import RawEventLake

# when a row was written, by the database's clock or the worker's: not the data
WRITTEN_AT = {"created_at", "updated_at", "ingested_at", "flagged_at", "claimed_at",
              "rebuilt_at", "arrival_time"}
FLOAT_SUMS = {"histogram_partials": {"sum"}, "aggregate_histograms": {"sum", "p50", "p95",
                                                                     "p99"}}
TABLES = ("normalized_transactions", "dynamic_metrics", "failed_items", "compliance_flags",
          "payment_window_partials", "payment_metrics_5m", "histogram_partials",
          "aggregate_histograms")


def dump(url: str, table: str) -> tuple[list[str], list[tuple]]:
    """The table's columns (minus write times and serial ids) and rows, sorted."""
    columns = [r[0] for r in query(url, "SELECT column_name FROM information_schema.columns "
                                        "WHERE table_name = %s ORDER BY ordinal_position",
                                   (table,))]
    keep = [c for c in columns if c not in WRITTEN_AT and c != "id"]
    text = ", ".join(f'"{c}"::text' for c in keep)
    return keep, sorted(query(url, f'SELECT {text} FROM "{table}"'))  # noqa: S608 - names


def lake_rows(root: Path) -> tuple[list[str], list[tuple]]:
    dataset = RawEventLake(str(root)).table.dataset()
    if dataset is None:
        return [], []
    table = dataset.to_table()
    names = [n for n in table.column_names if n not in WRITTEN_AT]
    columns = [table.column(n).to_pylist() for n in names]
    return names, sorted(zip(*columns, strict=True), key=repr)


def compare(name: str, a: tuple[list[str], list[tuple]], b: tuple[list[str], list[tuple]],
            floats: set[str]) -> tuple[bool, str]:
    (cols_a, rows_a), (cols_b, rows_b) = a, b
    if cols_a != cols_b or len(rows_a) != len(rows_b):
        return False, f"columns {cols_a} vs {cols_b}, rows {len(rows_a)} vs {len(rows_b)}"
    if name == "compliance_flags":  # a customer rule's evidence: what was stored by then
        rule, evidence = cols_a.index("rule"), cols_a.index("evidence")
        rows_a, rows_b, moved = _customer_evidence(rows_a, rows_b, rule, evidence)
        if moved is None:
            return False, "the flags (all but the customer rules' evidence) differ"
    loose = [i for i, c in enumerate(cols_a) if c in floats]
    exact = [i for i in range(len(cols_a)) if i not in loose]
    key_a = [tuple(r[i] for i in exact) for r in rows_a]
    key_b = [tuple(r[i] for i in exact) for r in rows_b]
    if key_a != key_b:
        at = next(k for k, (x, y) in enumerate(zip(key_a, key_b, strict=True)) if x != y)
        cols = [cols_a[i] for i, x, y in zip(exact, key_a[at], key_b[at], strict=True)
                if x != y]
        return False, f"{len(rows_a):,} rows; row {at} differs in {cols}"
    digest = hashlib.sha256(repr(key_a).encode()).hexdigest()[:16]
    note = f"{len(rows_a):,} rows, sha256 {digest}"
    if name == "compliance_flags":
        note += (f"; the customer rules' evidence (the payments stored by the time of "
                 f"judging) differs in {moved} flags")
    if not loose:
        return True, note
    close = 0
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for i in loose:
            x, y = ra[i], rb[i]
            if x == y:
                continue
            if x is None or y is None or not math.isclose(float(x), float(y), rel_tol=1e-9):
                return False, f"{cols_a[i]}: {x} vs {y}"
            close += 1
    return True, (f"{note} but {sorted(floats)}; those equal to 1e-9, {close} values "
                  f"not bit for bit")


CUSTOMER_RULES = {"velocity", "structuring"}


def _customer_evidence(rows_a: list[tuple], rows_b: list[tuple], rule: int, evidence: int,
                       ) -> tuple[list[tuple], list[tuple], int | None]:
    """The flags with a customer rule's evidence set aside, and how many such differ
    (None: the flags differ beyond that)."""
    def strip(rows: list[tuple]) -> list[tuple]:
        return [r[:evidence] + ("",) + r[evidence + 1:] if r[rule] in CUSTOMER_RULES else r
                for r in rows]

    if strip(rows_a) != strip(rows_b):
        return rows_a, rows_b, None
    moved = sum(x != y for x, y in zip(rows_a, rows_b, strict=True))
    return strip(rows_a), strip(rows_b), moved


def worktree(ref: str, where: Path) -> Path:
    if where.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=REPO_ROOT,
                       check=False, capture_output=True)
        shutil.rmtree(where, ignore_errors=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=REPO_ROOT,
                   check=True, capture_output=True)
    version = REPO_ROOT / "runtime" / "_version.py"
    if version.exists():
        shutil.copy(version, where / "runtime" / "_version.py")
    return where


def run(stack: Stack, name: str, events: int, code: Path | None, lake: Path) -> None:
    extra: dict[str, str] = {"RAW_EVENTS_URL": str(lake)}
    if code is not None:  # the other version's packages first on the path
        extra["PYTHONPATH"] = str(code)
    started = time.monotonic()
    worker = stack.start_worker(name, **extra)
    try:
        stack.wait_until_committed(events, timeout=1800)
    finally:
        worker.stop()
    print(f"  {name}: every offset committed in {time.monotonic() - started:.0f} s",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.identity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", required=True, help="the commit to compare with")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--workdir", default=str(REPO_ROOT / ".run" / "identity"))
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    other = worktree(args.against, workdir / "worktree")
    pg = ensure_postgres(os.environ.get("DATABASE_URL"), workdir / "pg")
    run_id = uuid.uuid4().hex[:6]
    before = Stack.start(workdir / run_id, pg, f"pm_identity_{run_id}_before")
    name = f"pm_identity_{run_id}_after"
    after_url = pg.create_database(name)
    run_migrations(after_url)
    after = Stack(workdir / run_id / "after", before.broker, pg, after_url,
                  before.partitions, app_id=f"pm-identity-after-{run_id}")
    try:
        boot = before.broker.bootstrap
        asyncio.run(ensure_topic(boot, "payments", before.partitions))
        events = PaymentGenerator(load_scenario(), seed=7, invalid_ratio=0.02).events(
            args.events)
        print(f"producing {args.events:,} events ...", flush=True)
        asyncio.run(produce(events, broker=boot, topic="payments", total=args.events,
                            progress=False))
        print(f"the worker of {args.against} ({other}), then this checkout's:", flush=True)
        run(before, "before", args.events, other, workdir / run_id / "lake-before")
        run(after, "after", args.events, None, workdir / run_id / "lake-after")
        ok = True
        for table in TABLES:
            same, note = compare(table, dump(before.database_url, table),
                                 dump(after_url, table), FLOAT_SUMS.get(table, set()))
            ok &= same
            print(f"{'same' if same else 'DIFFERENT':>9}  {table}: {note}", flush=True)
        same, note = compare("lake", lake_rows(workdir / run_id / "lake-before"),
                             lake_rows(workdir / run_id / "lake-after"), set())
        ok &= same
        print(f"{'same' if same else 'DIFFERENT':>9}  lake: {note}", flush=True)
        return 0 if ok else 1
    finally:
        after.stop()
        before.stop(drop_database=True)
        pg.drop_database(name)
        pg.stop()
        subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=REPO_ROOT,
                       check=False, capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
