"""Build the Faust application from :class:`~runtime.settings.Settings`."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, cast

import faust
import pyarrow
import uvloop
from faust.app.base import BootStrategy
from faust.auth import Credentials
from faust.exceptions import ConsumerNotStarted
from faust.types import TP, TopicT, TransportT
from mode import Service, ServiceT

from runtime.aiokafka_fixes import catch_closed_transport
from runtime.batching import BatchHandler, BatchPreparer, BatchTransport
from runtime.logs import logging_config, redact_secrets
from runtime.settings import Settings
from runtime.version import REVISION, VERSION
from storage.broker import (
    EVENTHUBS_CONNECTIONS_MAX_IDLE_MS,
    EVENTHUBS_METADATA_MAX_AGE_MS,
    REQUEST_TIMEOUT_MS,
    BrokerConnection,
    BrokerError,
    TopicSpec,
    check_topics,
    describe_failure,
    ensure_topics,
    wait_for_topics,
)
from storage.config_topic import config_topic
from tables.stores import store_url

log = logging.getLogger(__name__)


class DeclareBatchTopics(Service):
    """Prepares the batch path before the consumer subscribes to its topics.

    Creates every topic of :meth:`PaymentApp.topic_plan` that is missing and waits
    until the broker lists them, then declares the app's plain topics, ``payments``
    and the DLQ, to Faust too (agents do this
    for their own topics; Kafka here and Event Hubs create none on their own,
    and a DLQ record sent to a missing topic would wait for it in vain), and
    lets the producer buffer hold a batch's changelog and DLQ records: at
    Faust's default of 100 it stalls the fetch loop in ``wait_until_ebb()`` on
    every batch.
    """

    def __init__(self, app: PaymentApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app

    async def on_start(self) -> None:
        app = self.app
        app.producer.buffer.max_messages = app.settings.producer_buffer_messages
        if not app.conf.topic_allow_declare:  # Event Hubs: the preflight found them all
            return
        # Every topic, changelogs included, exists and is in the broker's metadata before
        # the consumer subscribes: a changelog Faust creates at subscription time was
        # missing from the group's metadata for a moment, and that cost a rebalance, a
        # PartitionsMismatch or a producer waiting for metadata at the first flush.
        plan = app.topic_plan()
        await ensure_topics(app.settings.broker, plan, replicas=app.settings.topic_replicas)
        await wait_for_topics(app.settings.broker, plan)
        for topic in app.plain_topics:  # payments and the DLQ: Faust's own declaration too
            await topic.maybe_declare()


class BrokerPreflight(Service):
    """The worker's first step: reach the broker, and find every topic when it may not
    create them (Event Hubs).

    A refused password, an untrusted certificate or a missing hub ends the worker
    with one line and exit status 2, before Faust's clients start retrying forever.
    """

    def __init__(self, app: PaymentApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app

    async def on_start(self) -> None:
        log.info("payment-monitor %s (revision %s)", VERSION, REVISION)
        conn = self.app.settings.broker
        # where the worker declares its topics, checking none still proves the connection
        plan = [] if self.app.conf.topic_allow_declare else self.app.topic_plan()
        try:
            await check_topics(conn, plan)
        except BrokerError as exc:
            exit_with(str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure to connect: one line, exit 2
            exit_with(await describe_failure(exc, conn))
        log.info("broker: %s", conn.describe())


def exit_with(message: str) -> NoReturn:
    """Log one line and end the process with status 2 (mode would log a traceback and
    keep the web server up)."""
    log.critical("the worker cannot start: %s", message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(2)


class PaymentBootStrategy(BootStrategy):
    """Faust's boot order, with the broker checked first and the batch topics declared
    at the agents' step."""

    def server(self) -> Iterable[ServiceT]:
        app = cast(PaymentApp, self.app)
        return [app.preflight, *super().server()]

    def agents(self) -> Iterable[ServiceT]:
        app = cast(PaymentApp, self.app)
        return [*super().agents(), app.topic_declarer]


class PaymentApp(faust.App):
    """A Faust app with a batch path for high-volume topics.

    ``@app.batch_handler(topic)`` registers a coroutine that receives each
    fetched batch of one topic-partition (see :mod:`runtime.batching`).
    """

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.batch_handlers: dict[str, BatchHandler] = {}
        self.batch_preparers: dict[str, BatchPreparer] = {}
        self.batch_topics: list[TopicT] = []
        self.topic_declarer = DeclareBatchTopics(self)
        self.preflight = BrokerPreflight(self)
        self.empty_fetch_pause = settings.empty_fetch_pause_s
        self.plain_topics: list[TopicT] = []  # declared topics that are not changelogs
        # progress of the batch path (time.monotonic()), for the liveness probe
        self.last_fetch_at: float | None = None
        self.last_batch_at: float | None = None

    def is_leader(self) -> bool:
        """The worker that owns ``payments`` partition 0 runs the leader's timers.

        Faust's own election needs a topic of its own (``<id>-__assignor-__leader``);
        an Event Hubs namespace has room for few (docs/eventhubs.md), so it is off.
        """
        return self.leader_tp in self.assigned_partitions()

    def assigned_partitions(self) -> set[TP]:
        """The consumer's assignment: empty until its thread has started. The web server
        answers before that, and a stats or probe request then must not fail."""
        try:
            return set(self.consumer.assignment())
        except ConsumerNotStarted:
            return set()

    @property
    def leader_tp(self) -> TP:
        return TP(self.batch_topics[0].get_topic_name(), 0)

    def topic_plan(self) -> list[TopicSpec]:
        """Every topic the worker uses, with its partitions and cleanup policy."""
        plan = [TopicSpec(t.get_topic_name(), t.partitions or self.conf.topic_partitions,
                          compacted=False) for t in self.plain_topics]
        for table in self.tables.values():
            changelog = table.changelog_topic
            plan.append(TopicSpec(changelog.get_topic_name(),
                                  changelog.partitions or self.conf.topic_partitions,
                                  compacted=True))
        plan.append(TopicSpec(config_topic(self.conf.id), 1, compacted=True))
        return plan

    def batch_handler(self, topic: TopicT) -> Callable[[BatchHandler], BatchHandler]:
        """Register ``fn(tp, messages)`` for every fetched batch of ``topic``.

        The topic is subscribed like an agent's: its partitions are assigned
        by the consumer group and rebalanced with every other Faust topic.
        """

        def register(fn: BatchHandler) -> BatchHandler:
            for name in topic.topics:
                self.batch_handlers[name] = fn
            self.batch_topics.append(topic)
            self.topics.add(topic)
            return fn

        return register

    def batch_preparer(self, topic: TopicT) -> Callable[[BatchPreparer], BatchPreparer]:
        """Register ``fn([(tp, messages), ...])``, awaited once per fetch with the batches
        of ``topic`` its batch handler is given next, before the first of them: work
        that pays per fetch rather than per partition (one round trip for all)."""

        def register(fn: BatchPreparer) -> BatchPreparer:
            for name in topic.topics:
                self.batch_preparers[name] = fn
            return fn

        return register

    BootStrategy = PaymentBootStrategy

    def _new_transport(self) -> TransportT:
        return BatchTransport(self.conf.broker_consumer, self)


PRODUCER_REQUEST_TIMEOUT_S = 1200.0  # Faust's default, stated


def broker_credentials(conn: BrokerConnection) -> Credentials | None:
    """Faust's credentials for the connection (the same one every raw client uses)."""
    if conn.security_protocol == "PLAINTEXT":
        return None
    context = conn.ssl_context()
    if conn.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    provider = conn.token_provider()
    if provider is not None:
        return faust.OAuthCredentials(oauth_cb=provider, ssl_context=context)
    assert conn.password is not None
    return faust.SASLCredentials(username=conn.username,
                                 password=conn.password.get_secret_value(),
                                 ssl_context=context, mechanism=conn.sasl_mechanism)


def broker_options(conn: BrokerConnection) -> dict[str, Any]:
    """Faust settings for the broker: credentials, timeouts and Event Hubs' limits."""
    options: dict[str, Any] = {
        "broker_credentials": broker_credentials(conn),
        "broker_request_timeout": REQUEST_TIMEOUT_MS / 1000,
        "broker_session_timeout": conn.session_timeout_s,
        "broker_heartbeat_interval": min(3.0, conn.session_timeout_s / 3),
        # hubs are created in advance on Event Hubs (checked at start instead)
        "topic_allow_declare": not conn.eventhubs,
        "processing_guarantee": "at_least_once",  # Event Hubs has no transactions
    }
    if conn.eventhubs:
        for client in ("consumer", "producer"):
            options[f"{client}_metadata_max_age_ms"] = EVENTHUBS_METADATA_MAX_AGE_MS
            options[f"{client}_connections_max_idle_ms"] = EVENTHUBS_CONNECTIONS_MAX_IDLE_MS
    return options


M_ARENA_MAX = -8  # glibc's mallopt parameter


def bound_native_memory() -> None:
    """Native allocators hand freed memory back: two glibc arenas (below), and Arrow's
    buffers (the lake's writes) from the C library instead of mimalloc, which kept
    45 MB of them resident in a `make soak` run (ADR 0011)."""
    limit_malloc_arenas()
    pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def trim_malloc() -> bool:
    """Return the free pages inside glibc's heap to the system (``malloc_trim``): the
    sink threads' freed batches otherwise stay resident. False where not glibc."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """At most ``arenas`` glibc malloc arenas, as ``MALLOC_ARENA_MAX`` would set them.

    glibc gives threads arenas of their own, up to 8 per core; the sink threads
    (PostgreSQL, Parquet, the claims) each fragment one, and a worker under load held
    100 MB more for it (docs/performance.md, "Memory"). Set before those threads start.
    A no-op where the C library is not glibc (returns False)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def create_app(settings: Settings) -> PaymentApp:
    """Create the worker app; nothing connects until the worker starts."""
    # uvloop: -24 % throughput without it (docs/adr/0001-batch-path.md). Set before
    # the worker creates its loop, which happens after this module is imported.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # uvloop raises RuntimeError where aiokafka expects OSError (docs/adr/0012)
    catch_closed_transport()
    # Fewer garbage collections: the hot path allocates a few hundred objects per event,
    # and at the default gen-0 threshold (700) a collection ran every few events (handler
    # alone: 8,700 events/s at 700, 15,000 at 100,000; docs/adr/0005-metrics-and-windows.md).
    gc.set_threshold(*settings.gc_thresholds)
    # The fetch loop gives the GIL up at each wait for I/O (and when the sink thread has
    # waited for it); behind the sink thread it waited up to the switch interval to take
    # it back (Python's 5 ms: p99 436-840 ms at 5,000 payments/s, against 95-154 with
    # 1 ms; docs/performance.md, "Seventh pass").
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    bound_native_memory()
    redact_secrets(settings.secrets)
    return PaymentApp(
        settings.app_id,
        settings=settings,
        broker=settings.faust_broker_url,
        store=store_url(settings.store_url),
        datadir=settings.app_datadir,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replicas,
        broker_max_poll_records=settings.max_poll_records,
        producer_linger=settings.producer_linger_s,
        # A changelog or DLQ batch fails only after this long. Its failure would not reach
        # us (Faust drops it), so COMMIT_TIMEOUT_S, which ends the worker before any
        # commit, must stay below it: settings.py caps it at half this.
        producer_request_timeout=PRODUCER_REQUEST_TIMEOUT_S,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        web_in_thread=False,
        # Faust's /table and /router views serve any table's keys and values (transaction
        # ids, customer ids, amounts) to whoever reaches the port: off. The project's own
        # views (app/web.py) serve the window tables, on any worker.
        web_router_enabled=False,
        web_tables_enabled=False,
        autodiscover=False,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        key_serializer="json",  # table keys; the payments topics declare raw bytes
        topic_disable_leader=True,  # PaymentApp.is_leader: one topic fewer
        logging_config=logging_config(settings.log_format),
        **broker_options(settings.broker),
    )
