"""How every Kafka client of the project connects: one description, one builder.

:class:`BrokerConnection` holds the bootstrap address, TLS, SASL (PLAIN or
OAUTHBEARER through azure-identity) and whether the broker is Azure Event Hubs'
Kafka endpoint. The worker's Faust app, the simulator, the config CLI and
reader, the failed-item replay and the benchmarks all build their clients from
:meth:`BrokerConnection.client_kwargs`, so a setting added here reaches them all.

On Event Hubs its limits apply (docs/eventhubs.md): metadata refreshed and idle
connections closed before its 240 s idle cut, a 60 s request timeout and a
30 s session timeout, no transactions and no topic creation (the hubs are made
in advance; :func:`check_topics` says which one is missing or wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from pydantic import SecretStr

from models.errors import PaymentMonitorError

EVENTHUBS_PORT = 9093
EVENTHUBS_SUFFIX = ".servicebus.windows.net"
EVENTHUBS_USERNAME = "$ConnectionString"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "OAUTHBEARER")
# Event Hubs closes a connection idle for 240 s; stay under it (docs/eventhubs.md).
EVENTHUBS_METADATA_MAX_AGE_MS = 180_000
EVENTHUBS_CONNECTIONS_MAX_IDLE_MS = 180_000
REQUEST_TIMEOUT_MS = 60_000


class BrokerError(PaymentMonitorError, RuntimeError):
    """The broker cannot be reached, refuses our credentials, or lacks a topic."""


def eventhubs_endpoint(connection_string: str) -> str:
    """``<namespace>.servicebus.windows.net:9093`` from a connection string's ``Endpoint``.

    The string itself is a secret: errors name only what is missing.
    """
    parts = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    endpoint = parts.get("Endpoint", "").strip()
    if not endpoint.startswith("sb://"):
        raise ValueError("EVENTHUBS_CONNECTION_STRING has no Endpoint=sb://<namespace>"
                         f"{EVENTHUBS_SUFFIX}/ part")
    host = endpoint.removeprefix("sb://").split("/", 1)[0].split(":", 1)[0]
    if not host:
        raise ValueError("EVENTHUBS_CONNECTION_STRING's Endpoint names no host")
    if "SharedAccessKey" not in parts and "SharedAccessSignature" not in parts:
        raise ValueError("EVENTHUBS_CONNECTION_STRING has no SharedAccessKey")
    return f"{host}:{EVENTHUBS_PORT}"


class TokenCredential(Protocol):
    """azure-identity's credentials (``DefaultAzureCredential`` and friends)."""

    def get_token(self, *scopes: str) -> Any: ...


class AzureTokenProvider(AbstractTokenProvider):
    """OAUTHBEARER tokens for Event Hubs from azure-identity (managed or workload identity).

    The scope is the namespace, ``https://<namespace>.servicebus.windows.net/.default``.
    A token is reused until five minutes before it expires; the blocking
    credential runs in a thread.
    """

    refresh_before_s = 300

    def __init__(self, scope: str, credential: TokenCredential | None = None) -> None:
        self.scope = scope
        self._credential = credential
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = asyncio.Lock()

    def _get(self) -> tuple[str, float]:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        access = self._credential.get_token(self.scope)
        return access.token, float(access.expires_on)

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or time.time() > self._expires_on - self.refresh_before_s:
                self._token, self._expires_on = await asyncio.get_running_loop().run_in_executor(
                    None, self._get)
            assert self._token is not None
            return self._token


@dataclass(frozen=True)
class BrokerConnection:
    """Where the broker is and how to authenticate; secrets stay out of ``repr``."""

    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    username: str = ""
    password: SecretStr | None = field(default=None, repr=False)
    ca_file: str = ""
    eventhubs: bool = False
    session_timeout_s: float = 30.0
    credential: TokenCredential | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ca_file and not os.path.isfile(self.ca_file):
            raise ValueError(f"BROKER_CA_FILE {self.ca_file!r} is not a readable file")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"BROKER_SECURITY_PROTOCOL must be one of "
                             f"{', '.join(SECURITY_PROTOCOLS)}, not {self.security_protocol!r}")
        if self.security_protocol == "SASL_SSL":
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(f"BROKER_SASL_MECHANISM must be one of "
                                 f"{', '.join(SASL_MECHANISMS)}, not {self.sasl_mechanism!r}")
            if self.sasl_mechanism == "PLAIN" and (not self.username or self.password is None):
                raise ValueError("SASL PLAIN needs BROKER_SASL_USERNAME and BROKER_SASL_PASSWORD "
                                 "(or EVENTHUBS_CONNECTION_STRING)")

    @property
    def hosts(self) -> list[str]:
        return [h.strip() for h in self.bootstrap.split(",") if h.strip()]

    @property
    def oauth_scope(self) -> str:
        """The token scope: the namespace of the first bootstrap host."""
        host = self.hosts[0].rsplit(":", 1)[0]
        return f"https://{host}/.default"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The system's CAs, or only ``BROKER_CA_FILE`` when it is set."""
        if self.security_protocol == "PLAINTEXT":
            return None
        return create_ssl_context(cafile=self.ca_file or None)

    def token_provider(self) -> AzureTokenProvider | None:
        if self.security_protocol == "SASL_SSL" and self.sasl_mechanism == "OAUTHBEARER":
            return AzureTokenProvider(self.oauth_scope, self.credential)
        return None

    def auth_kwargs(self) -> dict[str, Any]:
        """Security arguments of any aiokafka client."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol == "PLAINTEXT":
            return kwargs
        kwargs["ssl_context"] = self.ssl_context()
        if self.security_protocol == "SASL_SSL":
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism == "PLAIN":
                assert self.password is not None
                kwargs["sasl_plain_username"] = self.username
                kwargs["sasl_plain_password"] = self.password.get_secret_value()
            else:
                kwargs["sasl_oauth_token_provider"] = self.token_provider()
        return kwargs

    def client_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Arguments for ``AIOKafkaConsumer``, ``AIOKafkaProducer`` or ``AIOKafkaAdminClient``."""
        kwargs: dict[str, Any] = {"bootstrap_servers": self.bootstrap,
                                  "request_timeout_ms": REQUEST_TIMEOUT_MS, **self.auth_kwargs()}
        if self.eventhubs:
            kwargs["metadata_max_age_ms"] = EVENTHUBS_METADATA_MAX_AGE_MS
            kwargs["connections_max_idle_ms"] = EVENTHUBS_CONNECTIONS_MAX_IDLE_MS
        kwargs.update(overrides)
        return kwargs

    @property
    def auth(self) -> str:
        """``PLAINTEXT``, ``SSL`` or ``SASL_SSL/<mechanism>``."""
        if self.security_protocol == "SASL_SSL":
            return f"SASL_SSL/{self.sasl_mechanism}"
        return self.security_protocol

    @property
    def kind(self) -> str:
        return "Event Hubs" if self.eventhubs else "Kafka"

    def describe(self) -> str:
        """One line for logs: never a secret."""
        return f"{self.kind} at {self.bootstrap} ({self.auth})"


def connection(broker: str | BrokerConnection) -> BrokerConnection:
    """``host:port`` means a plain connection; a :class:`BrokerConnection` is itself."""
    return broker if isinstance(broker, BrokerConnection) else BrokerConnection(broker)


def explain(exc: BaseException, conn: BrokerConnection) -> str:
    """One line saying why the broker could not be used, with no secret in it."""
    text = f"{type(exc).__name__}: {exc}"
    if "SaslAuthentication" in text or "Authentication failed" in text:
        return (f"the broker refused our credentials ({conn.describe()}): check "
                "EVENTHUBS_CONNECTION_STRING or BROKER_SASL_USERNAME/BROKER_SASL_PASSWORD")
    if isinstance(exc, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"TLS to {conn.describe()} failed ({exc}): check BROKER_CA_FILE")
    if isinstance(exc, KafkaConnectionError | OSError | asyncio.TimeoutError):
        return f"cannot reach the broker at {conn.bootstrap} ({conn.kind}, {conn.auth}): {exc}"
    return f"{conn.describe()}: {text}"


async def describe_failure(exc: BaseException, conn: BrokerConnection) -> str:
    """:func:`explain`, after finding the cause aiokafka's bootstrap only logs.

    A refused password or an untrusted certificate reaches the caller as
    ``KafkaConnectionError: Unable to bootstrap``; one direct connection to the
    first bootstrap host brings the real error back.
    """
    if isinstance(exc, KafkaConnectionError):
        from aiokafka.conn import create_conn

        host, port = conn.hosts[0].rsplit(":", 1)
        try:
            probe = await create_conn(host, int(port), request_timeout_ms=10_000,
                                      **conn.auth_kwargs())
        except Exception as cause:  # noqa: BLE001 - any cause is the answer here
            return explain(cause, conn)
        probe.close()
    return explain(exc, conn)


@dataclass(frozen=True)
class TopicSpec:
    """A topic the app needs: ``faust -A app topics plan`` prints these."""

    name: str
    partitions: int
    compacted: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "partitions": self.partitions, "compacted": self.compacted}


async def existing_partitions(broker: str | BrokerConnection,
                              names: Iterable[str]) -> dict[str, int]:
    """Partition count of each named topic that exists (missing ones are left out)."""
    from aiokafka.admin import AIOKafkaAdminClient

    conn = connection(broker)
    admin = AIOKafkaAdminClient(**conn.client_kwargs())
    try:
        await admin.start()
        wanted = set(names)
        found: dict[str, int] = {}
        for topic in await admin.describe_topics(sorted(wanted)):
            if topic.get("error_code", 0) == 0 and topic["topic"] in wanted:
                found[topic["topic"]] = len(topic["partitions"])
        return found
    except (KafkaError, OSError) as exc:
        raise BrokerError(await describe_failure(exc, conn)) from exc
    finally:
        await admin.close()


async def ensure_topics(broker: str | BrokerConnection, specs: list[TopicSpec], *,
                        timeout_ms: int = 10_000, replicas: int = 1) -> None:
    """Create each missing topic of ``specs`` (never let a broker pick its partitions);
    on Event Hubs, where the hubs are made in advance, check them instead."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    conn = connection(broker)
    if conn.eventhubs:
        await check_topics(conn, specs)
        return
    admin = AIOKafkaAdminClient(**conn.client_kwargs(request_timeout_ms=timeout_ms))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [NewTopic(s.name, s.partitions, replicas,
                            topic_configs={"cleanup.policy": "compact"} if s.compacted else {})
                   for s in specs if s.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another client was quicker
                await admin.create_topics(missing)
    except (KafkaError, OSError) as exc:
        raise BrokerError(await describe_failure(exc, conn)) from exc
    finally:
        await admin.close()


async def check_topics(conn: BrokerConnection, plan: list[TopicSpec]) -> None:
    """Raise :class:`BrokerError` naming every missing topic or wrong partition count."""
    found = await existing_partitions(conn, [t.name for t in plan])
    problems = []
    for spec in plan:
        have = found.get(spec.name)
        if have is None:
            problems.append(f"{spec.name} is missing (needs {_partitions(spec.partitions)})")
        elif have != spec.partitions:
            problems.append(f"{spec.name} has {_partitions(have)}, needs {spec.partitions}")
    if problems:
        raise BrokerError(f"topics do not match `faust -A app topics plan` on "
                          f"{conn.describe()}: {'; '.join(problems)}")


async def wait_for_topics(conn: BrokerConnection, plan: list[TopicSpec], *,
                          timeout_s: float = 30.0) -> None:
    """Wait until the broker's metadata lists every topic of ``plan`` with its partitions
    (a topic just created takes a moment to appear); raises :class:`BrokerError` after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await check_topics(conn, plan)
            return
        except BrokerError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _partitions(n: int) -> str:
    return f"{n} partition" + ("" if n == 1 else "s")


class EndOffsets:
    """Log-end offsets asked of the broker (ListOffsets) on a connection of this object's
    own, outside any consumer group, in the caller's event loop.

    A worker's lag cannot come from its own consumer's fetch state alone: aiokafka does
    not fetch a partition again while records it fetched wait to be taken, so when the
    worker is held up (a slow or hung sink, the sink queue full) the high watermark it
    last saw stops moving and the lag would seem to stop growing exactly then.
    """

    def __init__(self, conn: BrokerConnection, *, timeout_s: float) -> None:
        self.conn = conn
        self.timeout_s = timeout_s
        self._consumer: Any = None
        self._lock = asyncio.Lock()

    async def __call__(self, partitions: Iterable[Any]) -> dict[Any, int]:
        """``{partition: end offset}`` for ``partitions`` (any ``(topic, partition)``
        tuples); raises when the broker has not answered within ``timeout_s``."""
        wanted = list(partitions)
        return await asyncio.wait_for(self._ask(wanted), self.timeout_s)

    async def _ask(self, wanted: list[Any]) -> dict[Any, int]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        async with self._lock:
            if self._consumer is None:
                consumer = AIOKafkaConsumer(**self.conn.client_kwargs(enable_auto_commit=False))
                try:
                    await consumer.start()
                except BaseException:
                    await consumer.stop()
                    raise
                self._consumer = consumer
            ends = await self._consumer.end_offsets(
                [TopicPartition(tp.topic, tp.partition) for tp in wanted])
        return {tp: ends[TopicPartition(tp.topic, tp.partition)] for tp in wanted}

    async def close(self) -> None:
        async with self._lock:
            if self._consumer is not None:
                consumer, self._consumer = self._consumer, None
                await consumer.stop()
