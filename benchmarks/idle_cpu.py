"""CPU of an idle worker and its broker: ``python -m benchmarks.idle_cpu``.

Starts the stack (broker, database, one worker), sends nothing, waits until the worker
is assigned its partitions, then reads both processes' CPU time over ``--seconds``.
On noida-db, which answers an empty fetch at once instead of parking it for
``fetch.max.wait.ms`` as Kafka does, aiokafka's background fetcher re-fetches in a loop.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path

from devtools.services import ensure_postgres
from devtools.stack import REPO_ROOT, Stack


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.idle_cpu", description=__doc__)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="worker setting for this run, e.g. --env FETCH_MAX_WAIT_MS=1500")
    args = p.parse_args()
    run = uuid.uuid4().hex[:6]
    workdir = REPO_ROOT / ".run" / "idle" / run
    pg = ensure_postgres(os.environ.get("DATABASE_URL"), workdir / "pg")
    stack = Stack.start(workdir, pg, f"payment_monitor_idle_{run}")
    try:
        worker = stack.start_worker(**dict(kv.split("=", 1) for kv in args.env))
        time.sleep(12)  # joined, assigned, recovered
        assert worker.proc is not None
        pids = {"worker": worker.proc.pid, "broker": stack.broker.proc.pid}
        before = {k: cpu_seconds(v) for k, v in pids.items()}
        time.sleep(args.seconds)
        used = {k: (cpu_seconds(v) - before[k]) / args.seconds for k, v in pids.items()}
        print(f"idle for {args.seconds:.0f} s: worker {used['worker']:.1%} of a core, "
              f"broker {used['broker']:.1%}")
    finally:
        stack.stop(drop_database=True)
        pg.stop()


if __name__ == "__main__":
    main()
