"""The config topic: every pushed version of every key, read by all workers.

``<app id>-config-changelog``: one partition, compacted; every worker holds the
whole topic in memory and sees a new record within CONFIG_SYNC_INTERVAL_S. Two records
per push, both JSON:

* ``"<key>@<n>"`` -> version ``n`` of the key (history; never overwritten);
* ``"<key>"``     -> the same record: the key's latest version (the pointer).

The history record is written first, so the pointer never names a version the topic
does not hold; a rollback pushes an old document again as a new version.
This module is the Kafka side: :class:`ConfigTopicReader` is the one reader (the
``faust -A app config`` commands read once, every worker follows the topic with it
in ``agents/config.py``) and :meth:`ConfigTopic.publish` the one writer. What the
records mean (latest, history, the next number, the known bounds) is
:class:`pipeline.config.ConfigRecords`; what a push appends is
:func:`pipeline.config.plan_push`.
"""

from __future__ import annotations

import json
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.config import ConfigRecords, ConfigVersion, history_key
from storage.broker import BrokerConnection, TopicSpec, connection, ensure_topics

CONFIG_TABLE = "config"


def config_topic(app_id: str) -> str:
    return f"{app_id}-{CONFIG_TABLE}-changelog"


def encode(record_key: str, version: ConfigVersion) -> tuple[bytes, bytes]:
    """Key and value bytes as Faust's json serializers write them for the table."""
    return json.dumps(record_key).encode(), json.dumps(version.to_record()).encode()


class ConfigTopicReader:
    """Follows the config topic from its beginning: ``records`` (record key -> JSON value,
    tombstones removed) equals the topic up to the end offset of the last :meth:`poll`.

    The one reader of the topic: the CLI reads it to the end once
    (:meth:`ConfigTopic.read`), every worker keeps following it
    (:class:`agents.config.ConfigReader`). No consumer group: it assigns the one
    partition, and is paused between polls, so it fetches only what was appended.
    """

    def __init__(self, conn: BrokerConnection, topic: str, *, timeout_ms: int = 15_000,
                 ) -> None:
        self.conn = conn
        self.topic = topic
        self.timeout_ms = timeout_ms
        self.records: dict[str, Any] = {}
        self._tp = TopicPartition(topic, 0)  # one partition by design (topics plan)
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> bool:
        """Connect; False (and nothing to read) when the topic does not exist."""
        consumer = AIOKafkaConsumer(**self.conn.client_kwargs(
            enable_auto_commit=False, fetch_max_wait_ms=200,
            request_timeout_ms=self.timeout_ms))
        await consumer.start()
        self._consumer = consumer
        # topics() fetches the metadata; partitions_for_topic() would still say None here
        if self.topic not in await consumer.topics():
            return False
        consumer.assign([self._tp])
        await consumer.seek_to_beginning(self._tp)
        consumer.pause(self._tp)  # fetch only when the end offset moved (see poll)
        return True

    async def poll(self) -> bool:
        """Read up to the current end offset; True when records arrived."""
        consumer, tp = self._consumer, self._tp
        assert consumer is not None, "start() first"
        end = (await consumer.end_offsets([tp]))[tp]
        if await consumer.position(tp) >= end:
            return False
        consumer.resume(tp)
        try:
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for message in batch.get(tp, ()):
                    if message.key:
                        key = json.loads(message.key)
                        if message.value:
                            self.records[key] = json.loads(message.value)
                        else:
                            self.records.pop(key, None)
        finally:
            consumer.pause(tp)
        return True

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def snapshot(self) -> ConfigRecords:
        return ConfigRecords(self.records)


class ConfigTopic:
    """Reads and appends the config topic with plain aiokafka clients."""

    def __init__(self, broker: str | BrokerConnection, app_id: str, *,
                 timeout_s: float = 15.0) -> None:
        self.conn = connection(broker)
        self.topic = config_topic(app_id)
        self.timeout_ms = int(timeout_s * 1000)

    async def ensure(self) -> None:
        """Create the topic (one partition, compacted) if no worker has yet; on Event Hubs
        it must exist (created from ``faust -A app topics plan``)."""
        await ensure_topics(self.conn, [TopicSpec(self.topic, 1, compacted=True)],
                            timeout_ms=self.timeout_ms)

    def reader(self) -> ConfigTopicReader:
        return ConfigTopicReader(self.conn, self.topic, timeout_ms=self.timeout_ms)

    async def read(self) -> ConfigRecords:
        """Every record from the beginning to the current end (empty without the topic)."""
        reader = self.reader()
        try:
            if await reader.start():
                await reader.poll()
        finally:
            await reader.stop()
        return reader.snapshot()

    async def publish(self, versions: list[ConfigVersion]) -> None:
        """Append each version (history record, then the pointer); waits for the acks."""
        await self.ensure()
        producer = AIOKafkaProducer(**self.conn.client_kwargs(
            acks="all", request_timeout_ms=self.timeout_ms))
        await producer.start()
        try:
            for version in versions:
                for record_key in (history_key(version.key, version.version), version.key):
                    key, value = encode(record_key, version)
                    await producer.send_and_wait(self.topic, value, key=key, partition=0)
        finally:
            await producer.stop()
