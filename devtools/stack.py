"""A whole local deployment: broker, database, migrations and worker processes.

Used by ``make demo`` (:mod:`devtools.demo`), the end-to-end tests and the
benchmarks, so all three run the real thing the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from devtools.services import (
    Broker,
    Postgres,
    ServiceError,
    call,
    free_port,
    kill_process,
    start_broker,
    stop_process,
    wait_for_port,
)
from simulator.producer import ensure_topic, produce
from storage import migrations
from storage.broker import connection

REPO_ROOT = Path(__file__).resolve().parents[1]
FAUST = str(Path(sys.executable).with_name("faust"))


def run_migrations(database_url: str, revision: str = "head", *, down: bool = False) -> None:
    """``alembic upgrade head`` (or ``downgrade``) against ``database_url``, from the
    migrations the package ships (what ``faust -A app db upgrade`` runs)."""
    migrations.upgrade(database_url, revision, down=down)


@dataclass
class Worker:
    """One ``faust -A app worker`` process."""

    env: dict[str, str]
    web_port: int
    log_path: Path
    workdir: Path
    proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [FAUST, "-A", "app", "worker", "-l", "info", "--web-port", str(self.web_port)],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for_port(self.web_port, 60, self.proc)
        return self

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def get(self, path: str) -> Any:
        """GET one of the worker's JSON views, e.g. ``/payments/config/``."""
        with urllib.request.urlopen(f"{self.web_url}{path}", timeout=5) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        return self.get("/payments/stats/")

    def wait_for_config(self, ready: Any, what: str, timeout: float = 10.0,
                        poll: float = 0.05) -> dict[str, Any]:
        """Poll ``/payments/config/`` until ``ready(config)``; returns that config."""
        deadline = time.monotonic() + timeout
        while True:
            config = self.get("/payments/config/")
            if ready(config):
                return config
            if time.monotonic() > deadline:
                raise ServiceError(f"{what} within {timeout:.0f} s (last: {config}); "
                                   f"see {self.log_path}")
            time.sleep(poll)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30)

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye to the group."""
        if self.proc is not None:
            kill_process(self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Stack:
    """Broker + database (+ workers) under one work directory."""

    workdir: Path
    broker: Broker
    pg: Postgres
    database_url: str
    partitions: int = 4
    app_id: str = "payment-monitor"
    workers: list[Worker] = field(default_factory=list)

    @classmethod
    def start(cls, workdir: Path, pg: Postgres, database: str, *, partitions: int = 4,
              eventhubs: bool = False) -> Stack:
        """Broker (with the Event Hubs stand-in listener when ``eventhubs``: then the
        workers connect through it), a fresh migrated database."""
        workdir.mkdir(parents=True, exist_ok=True)
        broker = start_broker(workdir / "broker", sasl_ssl=eventhubs)
        url = pg.create_database(database)
        run_migrations(url)
        return cls(workdir, broker, pg, url, partitions)

    def broker_env(self) -> dict[str, str]:
        """What a worker, the simulator or a CLI needs to reach the broker."""
        hubs = self.broker.eventhubs
        if hubs is None:
            return {"BROKER_URL": self.broker.url}
        return {"BROKER_URL": f"kafka://{hubs.bootstrap}",
                "EVENTHUBS_CONNECTION_STRING": hubs.connection_string,
                "BROKER_CA_FILE": str(hubs.ca_file)}

    @property
    def raw_dir(self) -> Path:
        return self.workdir / "raw"

    def worker_env(self, name: str = "w1", **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update(self.broker_env())
        env.update({
            # a SIGKILLed worker's partitions move after this long (production: 30 s)
            "BROKER_SESSION_TIMEOUT_S": "10",
            "DATABASE_URL": self.database_url,
            "RAW_EVENTS_URL": str(self.raw_dir),
            "APP_DATADIR": str(self.workdir / name / "faust"),
            "TOPIC_PARTITIONS": str(self.partitions),
            "APP_ID": self.app_id,
        })
        env.update(extra)
        return env

    def start_worker(self, name: str = "w1", **extra: str) -> Worker:
        worker = Worker(self.worker_env(name, **extra), free_port(),
                        self.workdir / f"{name}.log", self.workdir / name)
        # a worker that exited is replaced by the one started under its name, as its
        # supervisor would; one that never ran is not watched at all
        self.workers[:] = [w for w in self.workers if w.workdir.name != name or w.alive()]
        self.workers.append(worker)
        try:
            return worker.start()
        except ServiceError:
            if not worker.alive():
                self.workers.remove(worker)
            raise

    def send(self, events: list, *, rate: float = 0.0) -> None:
        """Produce ``events`` to ``payments`` (made first if missing), at ``rate`` per
        second or as fast as it goes."""
        boot = self.broker.bootstrap
        asyncio.run(ensure_topic(boot, "payments", self.partitions))
        asyncio.run(produce(events, broker=boot, topic="payments", total=len(events),
                            rate=rate, progress=False))

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        """Run ``faust -A app <args>`` against this stack; output captured as text."""
        return subprocess.run([FAUST, "-A", "app", *args], env=self.worker_env("cli", **extra),
                              cwd=self.workdir, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)

    def restart_broker(self, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with ``kill``) and start the broker on the same
        ports and data."""
        if kill:
            self.broker.kill()
        else:
            self.broker.stop()
        self.broker = self.broker.restart()

    def committed_and_end(self, topic: str = "payments") -> tuple[int, int]:
        return asyncio.run(_committed_and_end(self.broker.bootstrap, self.app_id, topic,
                                              self.partitions))

    def wait_until_committed(self, expected: int, *, timeout: float = 300,
                             progress: Any = None) -> float:
        """Block until the group's committed offsets sum to ``expected``; returns seconds."""
        started = time.monotonic()
        last = -1
        while True:
            committed, _ = self.committed_and_end()
            if progress is not None and committed != last:
                progress(committed)
                last = committed
            if committed >= expected:
                return time.monotonic() - started
            for worker in self.workers:
                if worker.proc is not None and worker.proc.poll() not in (None, 0, -9, -15):
                    raise ServiceError(f"worker exited with {worker.proc.returncode}; "
                                       f"see {worker.log_path}")
            if time.monotonic() - started > timeout:
                raise ServiceError(f"only {committed} of {expected} offsets committed after "
                                   f"{timeout:.0f} s{self.worker_trouble()}")
            time.sleep(0.5)

    def worker_trouble(self, lines: int = 40) -> str:
        """The last warnings and errors of each worker's log, and what its probes say:
        for a failure message, so a CI log alone tells what the worker saw."""
        report = []
        for worker in self.workers:
            try:
                text = worker.log_path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            # a stall's or a stuck client's diagnosis is kept whole: it is why the line is
            trouble = [line if "gave up on them" in line or "the tasks:" in line
                       else line[:300] for line in text
                       if any(w in line for w in ("WARN", "ERROR", "CRITICAL", "Traceback"))]
            report.append(f"\n--- {worker.log_path.name}: last {lines} warnings/errors of "
                          f"{len(text)} lines")
            report.extend(trouble[-lines:])
            if worker.alive():
                for probe in ("/healthz", "/readyz"):
                    try:
                        code, body = call(f"{worker.web_url}{probe}", timeout=5)
                        report.append(f"{probe}: {code} {body[:5000]}")
                    except OSError as exc:
                        report.append(f"{probe}: {exc}")
        return "\n".join(report)

    def stop(self, *, drop_database: bool = False) -> None:
        for worker in self.workers:
            worker.stop()
        self.broker.stop()
        if drop_database:
            self.pg.drop_database(self.database_url.rsplit("/", 1)[1].split("?")[0])


async def _committed_and_end(bootstrap: str, group: str, topic: str,
                             partitions: int) -> tuple[int, int]:
    """Sum of the group's committed offsets and of the end offsets of ``topic``.

    Asks only after the topic exists: a consumer's metadata request for a
    missing topic makes the broker auto-create it with its own default
    partition count (1 on noida-db), and the worker then crash-loops with
    ``PartitionsMismatch``.
    """
    admin = AIOKafkaAdminClient(**connection(bootstrap).client_kwargs())
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return 0, 0
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(**connection(bootstrap).client_kwargs(), group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = 0
        for tp in tps:
            committed += await consumer.committed(tp) or 0
        end = sum((await consumer.end_offsets(tps)).values())
        return committed, end
    finally:
        await consumer.stop()
