"""The config topic: every pushed version of every key, read by all workers.

It is the changelog of the ``config`` GlobalTable (``<app id>-config-changelog``, one
partition, compacted), so every worker holds the whole topic in memory and sees a new
record within its fetch wait. Two records per push, both JSON:

* ``"<key>@<n>"`` -> version ``n`` of the key (history; never overwritten);
* ``"<key>"``     -> the same record: the key's latest version (the pointer).

The history record is written first, so the pointer never names a version the topic
does not hold; a rollback pushes an old document again as a new version.
This module is the raw-Kafka side (the ``faust -A app config`` commands and the
leader's watcher); each worker reads the same records with its own reader
(``agents/config.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.config import ConfigVersion
from storage.broker import BrokerConnection, TopicSpec, connection, ensure_topics

CONFIG_TABLE = "config"


def config_topic(app_id: str) -> str:
    return f"{app_id}-{CONFIG_TABLE}-changelog"


def history_key(key: str, version: int) -> str:
    return f"{key}@{version}"


def encode(record_key: str, version: ConfigVersion) -> tuple[bytes, bytes]:
    """Key and value bytes as Faust's json serializers write them for the table."""
    return json.dumps(record_key).encode(), json.dumps(version.to_record()).encode()


class ConfigRecords:
    """A snapshot of the topic: latest version and history per key."""

    def __init__(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        self.records = dict(records)

    def latest(self, key: str) -> ConfigVersion | None:
        record = self.records.get(key)
        return ConfigVersion.from_record(record) if record else None

    def history(self, key: str) -> list[ConfigVersion]:
        prefix = f"{key}@"
        found = [ConfigVersion.from_record(v) for k, v in self.records.items()
                 if k.startswith(prefix) and v]
        return sorted(found, key=lambda v: v.version)

    def version(self, key: str, number: int) -> ConfigVersion | None:
        record = self.records.get(history_key(key, number))
        return ConfigVersion.from_record(record) if record else None

    def next_number(self, key: str) -> int:
        history = self.history(key)
        latest = self.latest(key)
        return max([0, *(v.version for v in history), latest.version if latest else 0]) + 1


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

    async def read(self) -> ConfigRecords:
        """Every record from the beginning to the current end."""
        consumer = AIOKafkaConsumer(**self.conn.client_kwargs(
            enable_auto_commit=False, request_timeout_ms=self.timeout_ms))
        await consumer.start()
        records: dict[str, Any] = {}
        try:
            if self.topic not in await consumer.topics():  # fetches the metadata
                return ConfigRecords({})
            # one partition by design (topics plan); topics() does not fill the client's
            # own metadata, so partitions_for_topic() would still say None here
            tps = [TopicPartition(self.topic, 0)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            remaining = {tp for tp in tps if end[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, messages in batch.items():
                    for m in messages:
                        if m.key:
                            records[json.loads(m.key)] = json.loads(m.value) if m.value else None
                        if m.offset + 1 >= end[tp]:
                            remaining.discard(tp)
                if not batch:  # nothing came: check the position (compacted tail)
                    for tp in list(remaining):
                        if await consumer.position(tp) >= end[tp]:
                            remaining.discard(tp)
        finally:
            await consumer.stop()
        return ConfigRecords({k: v for k, v in records.items() if v is not None})

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
