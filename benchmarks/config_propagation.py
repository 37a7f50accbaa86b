"""Config propagation: ``python -m benchmarks.config_propagation --pushes 10``.

Starts a broker, a database and two workers sharing the partitions, keeps the
simulator sending ``--rate`` payments/s, and pushes a new version of
``compliance:rules:v1`` ``--pushes`` times (alternating large-amount thresholds) with
``faust -A app config push``. For each push it prints the time from the pushed
record's timestamp to its activation on each worker (``/payments/config/``), then the
distribution of the later of the two (the fleet's propagation time; seed target 5 s).
Also prints how long loading and compiling all three keys takes (seed target 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import yaml

from devtools.services import ensure_postgres
from devtools.stack import REPO_ROOT, Stack
from pipeline.config import ConfigManager
from simulator.generator import PaymentGenerator, load_scenario
from simulator.producer import ensure_topic, produce
from storage.config_sources import FileSource

KEY = "compliance:rules:v1"


def load_time(runs: int = 20) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        ConfigManager(FileSource()).load_all_configuration()
        out.append(time.perf_counter() - start)
    return out


def rules_file(path: Path, eur: int) -> str:
    doc = yaml.safe_load((REPO_ROOT / "config" / "compliance.yaml").read_text())
    doc["rules"][0]["thresholds_minor"]["EUR"] = eur
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.config_propagation",
                                description=__doc__)
    p.add_argument("--pushes", type=int, default=10)
    p.add_argument("--rate", type=float, default=2000, help="simulator payments/s meanwhile")
    args = p.parse_args()

    loads = sorted(load_time())
    print(f"load_all_configuration (files, 3 keys, compiled): median "
          f"{statistics.median(loads) * 1000:.1f} ms, max {loads[-1] * 1000:.1f} ms")

    workdir = Path(tempfile.mkdtemp(prefix="bench-config-", dir=REPO_ROOT / ".run"
                                    if (REPO_ROOT / ".run").exists() else None))
    pg = ensure_postgres(None, workdir / "pg")
    stack = Stack.start(workdir, pg, f"pm_bench_config_{uuid.uuid4().hex[:6]}")
    stop = threading.Event()
    try:
        workers = [stack.start_worker("w1"), stack.start_worker("w2")]
        deadline = time.monotonic() + 120
        while not all(w.stats()["assigned"] and w.get("/payments/config/")["version"]
                      for w in workers):
            if time.monotonic() > deadline:
                raise SystemExit("the workers did not both get partitions in 120 s")
            time.sleep(0.5)
        print("two workers up; sending payments at "
              f"{args.rate:,.0f}/s while pushing", flush=True)

        def traffic() -> None:
            asyncio.run(ensure_topic(stack.broker.bootstrap, "payments", stack.partitions))
            gen = PaymentGenerator(load_scenario(), seed=7)
            while not stop.is_set():
                asyncio.run(produce(list(gen.events(int(args.rate))),
                                    broker=stack.broker.bootstrap, topic="payments",
                                    total=int(args.rate), rate=args.rate, progress=False))

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        fleet = []
        for i in range(args.pushes):
            path = rules_file(workdir / f"rules-{i}.yaml", 500_000 + 1000 * i)
            done = stack.cli("config", "push", KEY, COMPLIANCE_CONFIG=path)
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            history = json.loads(stack.cli("config", "history", KEY, "--json").stdout)
            pushed = history[-1]
            pushed_at = datetime.fromisoformat(pushed["pushed_at"])
            per_worker = []
            for worker in workers:
                config = worker.wait_for_config(
                    lambda c, v=pushed["version"]: c["keys"][KEY]["version"] == v,
                    f"v{pushed['version']} not applied", timeout=30, poll=0.02)
                applied = datetime.fromisoformat(config["last_reload_at"])
                per_worker.append((applied - pushed_at).total_seconds())
            fleet.append(max(per_worker))
            print(f"  push {i + 1:>2} (v{pushed['version']}): "
                  + ", ".join(f"w{n + 1} {s * 1000:5.0f} ms" for n, s in enumerate(per_worker)),
                  flush=True)
        fleet.sort()
        print(f"propagation to both workers over {len(fleet)} pushes: min "
              f"{fleet[0] * 1000:.0f} ms, median {statistics.median(fleet) * 1000:.0f} ms, "
              f"max {fleet[-1] * 1000:.0f} ms (target < 5000 ms)")
    finally:
        stop.set()
        stack.stop(drop_database=True)


if __name__ == "__main__":
    main()
