"""A real single-node Apache Kafka broker (KRaft, no ZooKeeper) for local runs.

``make install`` copies the broker's jars from Maven Central into
:data:`KAFKA_LIBS` (``devtools/kafka/pom.xml``). :func:`start_kafka` writes a
``server.properties`` into its data directory, formats the storage once, starts
``kafka.Kafka`` on free loopback ports and waits until the broker says it has
started. It is configured like Event Hubs wherever that shows: no automatic
topic creation and a 1 MiB message limit (docs/adr/0007-kafka-broker.md).

With ``sasl_ssl=True`` it also opens the local Event Hubs stand-in: a SASL_SSL
listener with a certificate from a CA made here, accepting PLAIN with the
username ``$ConnectionString`` and an Event-Hubs-shaped connection string as
the password (docs/eventhubs.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from models.errors import PaymentMonitorError

REPO_ROOT = Path(__file__).resolve().parents[1]
# KAFKA_LIBS=<dir> runs other jars (the ADR's Kafka 4 trial); make install fills this one
KAFKA_LIBS = Path(os.environ.get("KAFKA_LIBS") or REPO_ROOT / ".kafka" / "libs")
KAFKA_STARTED = "Kafka Server started"
EVENTHUBS_NAMESPACE = "payments-local"  # the stand-in's namespace name in its strings


class KafkaError(PaymentMonitorError, RuntimeError):
    """The local Kafka broker could not be started."""


def java_binary() -> str | None:
    """``$JAVA_HOME/bin/java``, else ``java`` on PATH, else None (no JVM here)."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def kafka_installed() -> bool:
    return any(KAFKA_LIBS.glob("kafka_2.13-*.jar"))


@dataclass(frozen=True)
class EventHubsStandIn:
    """The SASL_SSL listener that plays Event Hubs' Kafka endpoint."""

    port: int
    ca_file: Path
    connection_string: str  # the password the listener accepts (a secret in real life)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def eventhubs_connection_string(namespace: str = EVENTHUBS_NAMESPACE,
                                key: str | None = None) -> str:
    """A connection string shaped like the ones the Azure portal hands out."""
    key = key or uuid.uuid4().hex + uuid.uuid4().hex
    return (f"Endpoint=sb://{namespace}.servicebus.windows.net/;"
            f"SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={key}")


def server_properties(data_dir: Path, port: int, controller_port: int,
                      standin: EventHubsStandIn | None) -> str:
    listeners = [f"PLAINTEXT://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{controller_port}"]
    advertised = [f"PLAINTEXT://127.0.0.1:{port}"]
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map":
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
        "log.dirs": str(data_dir / "logs"),
        # like Event Hubs: hubs are made in advance, and a message is at most 1 MiB
        "auto.create.topics.enable": "false",
        "message.max.bytes": str(1024 * 1024),
        "num.partitions": "1",
        # one node: internal topics with one replica, few offsets partitions
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "5",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        # a lone first member need not wait 3 s for others (tests start many groups)
        "group.initial.rebalance.delay.ms": "0",
        "log.segment.bytes": str(64 * 1024 * 1024),
    }
    if standin is not None:  # its server.pem lies beside its CA file (make_tls)
        listeners.append(f"SASL_SSL://127.0.0.1:{standin.port}")
        advertised.append(f"SASL_SSL://127.0.0.1:{standin.port}")
        jaas = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'user_$ConnectionString="{standin.connection_string}";')
        props.update({
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(standin.ca_file.with_name("server.pem")),
        })
    props["listeners"] = ",".join(listeners)
    props["advertised.listeners"] = ",".join(advertised)
    return "".join(f"{k}={v}\n" for k, v in props.items())


LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.log=WARN
log4j.logger.org.apache.kafka.storage=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
log4j.logger.org.apache.kafka.image=WARN
log4j.logger.org.apache.kafka.metadata=WARN
log4j.logger.kafka.server.metadata=WARN
"""

LOG4J2 = """\
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
"""  # Kafka 4 logs through log4j2


def make_tls(tls_dir: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1/localhost; returns the CA's PEM file.

    The server's key and chain go into ``server.pem`` (unencrypted PKCS#8, which
    Kafka's PEM keystore reads); they never leave the broker's data directory.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    tls_dir.mkdir(parents=True, exist_ok=True)
    ca_file = tls_dir / "ca.pem"
    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key, issuer: str, issuer_key, *, ca: bool):  # noqa: ANN001, ANN202
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("payment-monitor local CA", ca_key, "payment-monitor local CA", ca_key,
                   ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    server_cert = cert("localhost", key, "payment-monitor local CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    ca_file.write_bytes(ca_cert.public_bytes(pem))
    (tls_dir / "server.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
        + server_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    return ca_file


# The client compiler only (C1). A fresh broker's optimizing compiler (C2) took 0.2-0.5
# of a core for the first minutes, on the two cores the worker, PostgreSQL and the load
# share in tests and benchmarks; a broker that runs for weeks has that behind it, and
# this one lives for one run. KAFKA_JVM_OPTS adds flags (the last of a flag wins:
# -XX:TieredStopAtLevel=4 brings C2 back). docs/performance.md has the figures.
JIT_OPTIONS = ("-XX:TieredStopAtLevel=1",)


def start_kafka(data_dir: Path, port: int, controller_port: int, *,
                standin: EventHubsStandIn | None = None,
                timeout: float = 60) -> tuple[subprocess.Popen, Path]:
    """Start the broker; format ``data_dir`` first if it is new. Returns (process, log)."""
    java = java_binary()
    if java is None:
        raise KafkaError("no Java runtime (java on PATH or JAVA_HOME)")
    if not kafka_installed():
        raise KafkaError(f"Kafka's jars are not in {KAFKA_LIBS}: run `make install` "
                         "(Maven fetches them)")
    data_dir.mkdir(parents=True, exist_ok=True)
    props = data_dir / "server.properties"
    props.write_text(server_properties(data_dir, port, controller_port, standin))
    (data_dir / "log4j.properties").write_text(LOG4J)
    (data_dir / "log4j2.properties").write_text(LOG4J2)
    classpath = f"{KAFKA_LIBS}/*"
    jvm = [java, "-Xms128m", "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
           *JIT_OPTIONS, *os.environ.get("KAFKA_JVM_OPTS", "").split(),
           "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{data_dir}/log4j.properties",
           f"-Dlog4j2.configurationFile={data_dir}/log4j2.properties", "-cp", classpath]
    if not (data_dir / "logs" / "meta.properties").exists():
        formatted = subprocess.run(
            # --cluster-id=: a random id may start with "-", which argparse would take
            # for an option
            [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}",
             "-c", str(props), "--ignore-formatted"],
            capture_output=True, text=True, timeout=120, check=False)
        if formatted.returncode != 0:
            raise KafkaError(f"formatting {data_dir} failed: {formatted.stderr.strip()[-500:]}")
    log_path = data_dir / "broker.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
    proc = subprocess.Popen([*jvm, "kafka.Kafka", str(props)], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while KAFKA_STARTED not in _read_from(log_path, offset):
        if proc.poll() is not None:
            raise KafkaError(f"Kafka exited with code {proc.returncode} while starting; "
                             f"see {log_path}")
        if time.monotonic() > deadline:
            proc.kill()
            raise KafkaError(f"Kafka did not start within {timeout:.0f} s; see {log_path}")
        time.sleep(0.1)
    return proc, log_path


def _cluster_id() -> str:
    """A random cluster id in Kafka's form: 16 bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
