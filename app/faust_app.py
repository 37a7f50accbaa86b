"""Build the Faust application from :class:`~app.settings.Settings`."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterable
from typing import Any, cast

import faust
import uvloop
from faust.app.base import BootStrategy
from faust.types import TopicT, TransportT
from mode import Service, ServiceT

from app.batching import BatchHandler, BatchTransport
from app.settings import Settings


class DeclareBatchTopics(Service):
    """Prepares the batch path before the consumer subscribes to its topics.

    Declares the batch topics (agents do this for their own topics; without
    it the broker would auto-create ``payments`` with its default partition
    count on subscribe), and lets the producer buffer hold a batch's
    changelog and DLQ records: at Faust's default of 100 it stalls the
    fetch loop in ``wait_until_ebb()`` on every batch.
    """

    def __init__(self, app: PaymentApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app

    async def on_start(self) -> None:
        self.app.producer.buffer.max_messages = self.app.settings.producer_buffer_messages
        for topic in self.app.batch_topics:
            await topic.maybe_declare()


class PaymentBootStrategy(BootStrategy):
    """Faust's boot order, with the batch topics declared at the agents' step."""

    def agents(self) -> Iterable[ServiceT]:
        app = cast(PaymentApp, self.app)
        return [*super().agents(), app.topic_declarer]


class PaymentApp(faust.App):
    """A Faust app with a batch path for high-volume topics.

    ``@app.batch_handler(topic)`` registers a coroutine that receives each
    fetched batch of one topic-partition (see :mod:`app.batching`).
    """

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.batch_handlers: dict[str, BatchHandler] = {}
        self.batch_topics: list[TopicT] = []
        self.topic_declarer = DeclareBatchTopics(self)
        self.empty_fetch_pause = settings.empty_fetch_pause_s

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

    BootStrategy = PaymentBootStrategy

    def _new_transport(self) -> TransportT:
        return BatchTransport(self.conf.broker_consumer, self)


def create_app(settings: Settings) -> PaymentApp:
    """Create the worker app; nothing connects until the worker starts."""
    # uvloop: -24 % throughput without it (docs/adr/0001-batch-path.md). Set before
    # the worker creates its loop, which happens after this module is imported.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # Fewer garbage collections: the hot path allocates a few hundred objects per event,
    # and at the default gen-0 threshold (700) a collection ran every few events (handler
    # alone: 8,700 events/s at 700, 15,000 at 100,000; docs/adr/0005-metrics-and-windows.md).
    gc.set_threshold(*settings.gc_thresholds)
    return PaymentApp(
        settings.app_id,
        settings=settings,
        broker=settings.broker_url,
        store=settings.store_url,
        datadir=settings.app_datadir,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replicas,
        topic_allow_declare=True,
        broker_max_poll_records=settings.max_poll_records,
        producer_linger=settings.producer_linger_s,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        web_in_thread=False,
        autodiscover=False,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        key_serializer="json",  # table keys; the payments topics declare raw bytes
    )
