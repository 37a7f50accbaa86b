"""Hot reload on every worker: the config topic reader and the source watcher.

* Every worker reads the whole config topic (:mod:`storage.config_topic`, one
  compacted partition) with its own :class:`ConfigReader`: no consumer group, from the
  beginning, then every CONFIG_SYNC_INTERVAL_S it asks for the end offset and fetches
  only when something was appended. :class:`ConfigSync` activates a newer version
  through the :class:`~pipeline.config.ConfigManager` as soon as it arrives; the ingest
  handler waits for the first catch-up before its first batch, so no batch runs under
  the source's version when the topic holds a pushed one. (Not a Faust GlobalTable:
  ADR 0006 says why.)
* With CONFIG_WATCH (files, for development) or CONFIG_SOURCE=azure, the leader polls
  the source and pushes each valid change to the topic, from where it reaches every
  worker the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from app.faust_app import PaymentApp
from app.settings import Settings
from pipeline.config import KEYS, ConfigError, ConfigManager, ConfigVersion, compile_config
from storage.config_sources import user
from storage.config_topic import ConfigTopic

log = logging.getLogger(__name__)


class ConfigReader(Service):
    """Keeps ``records`` equal to the config topic (record key -> JSON value)."""

    def __init__(self, topic: ConfigTopic, interval: float,
                 manager: ConfigManager | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manager = manager
        self.topic = topic
        self.interval = interval
        self.records: dict[str, Any] = {}
        self.caught_up = asyncio.Event()
        self.listeners: list[Any] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def on_start(self) -> None:
        source_error: ConfigError | None = None
        if self.manager is not None and not self.manager.loaded:
            try:  # the source's documents: active until the topic says otherwise
                self.manager.load_all_configuration()
            except ConfigError as exc:
                source_error = exc
        await self.topic.ensure()
        self._consumer = AIOKafkaConsumer(**self.topic.conn.client_kwargs(
            enable_auto_commit=False, fetch_max_wait_ms=200))
        await self._consumer.start()
        tp = TopicPartition(self.topic.topic, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_beginning(tp)
        self._consumer.pause(tp)  # fetch only when the end offset moved (see _poll)
        if source_error is not None:
            await self._start_from_topic(tp, source_error)
        self.add_future(self._run(tp))

    async def _start_from_topic(self, tp: TopicPartition, source_error: ConfigError) -> None:
        """The source is invalid: start on the topic's versions if it holds every key."""
        assert self.manager is not None
        await self._poll(tp)
        pushed = {k: ConfigVersion.from_record(r) for k in KEYS if (r := self.records.get(k))}
        if len(pushed) < len(KEYS):
            log.critical("the worker cannot start: %s (and the config topic does not hold "
                         "every key to fall back on)", source_error)
            raise source_error
        try:
            self.manager.load_all_configuration(pushed)
        except ConfigError as exc:
            log.critical("the worker cannot start: %s; the config topic's versions are "
                         "invalid too: %s", source_error, exc)
            raise
        log.warning("the source's configuration is invalid (%s); running the config topic's "
                    "versions %s", source_error, self.manager.active.version)

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self, tp: TopicPartition) -> None:
        while not self.should_stop:
            try:
                if await self._poll(tp):
                    for listener in self.listeners:
                        listener()
                self.caught_up.set()
            except Exception:  # the broker may be away for a while; keep the last records
                log.exception("config topic %s: read failed, retrying", self.topic.topic)
            await self.sleep(self.interval)

    async def _poll(self, tp: TopicPartition) -> bool:
        """Read up to the current end offset; True when records arrived."""
        consumer = self._consumer
        assert consumer is not None
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


class ConfigSync:
    """Activates the newest version the config topic holds for each key."""

    def __init__(self, manager: ConfigManager, records: Mapping[str, Any],
                 ready: asyncio.Event | None = None) -> None:
        self.manager = manager
        self.records = records
        self.ready = ready  # set once the records caught up with the topic
        self.synced = False
        self._rejected: set[tuple[str, int]] = set()

    def pending(self) -> dict[str, ConfigVersion]:
        active = self.manager.active.versions
        changes = {}
        for key in KEYS:
            record = self.records.get(key)
            if not record:
                continue
            version = ConfigVersion.from_record(record)
            current = active[key]
            if (version.version, version.digest) == (current.version, current.digest):
                continue
            if (key, version.version) not in self._rejected:
                changes[key] = version
        return changes

    async def first_sync(self) -> None:
        """Before the first batch: wait for the topic's records, then activate them."""
        if self.ready is not None:
            await self.ready.wait()
        self.sync()

    def sync(self) -> None:
        changes = self.pending()
        if changes:
            result = self.manager.reload_configuration(changes)
            if not result.ok:
                self._rejected.update((k, v.version) for k, v in changes.items())
        self.synced = True


def register_config(app: PaymentApp, settings: Settings, manager: ConfigManager) -> ConfigSync:
    """The config topic reader on every worker and, when watching, the source poll on the
    leader; returns the sync the ingest handler waits on before its first batch."""
    topic = ConfigTopic(settings.broker, settings.app_id)
    reader = ConfigReader(topic, settings.config_sync_interval_s, manager)
    sync = ConfigSync(manager, reader.records, reader.caught_up)
    reader.listeners.append(sync.sync)
    app.service(reader)  # type: ignore[arg-type]  # an instance is accepted too

    if settings.config_watch or settings.config_source == "azure":

        @app.timer(settings.config_source_poll_s, on_leader=True)
        async def watch_source() -> None:
            if not reader.caught_up.is_set():
                return
            try:
                if not await asyncio.to_thread(manager.source.changed):
                    return
                await publish_source_changes(manager, sync, topic)
            except Exception:  # the watcher must outlive a bad edit or a network error
                log.exception("configuration watcher: could not read %s", manager.source.name)

    return sync


async def publish_source_changes(manager: ConfigManager, sync: ConfigSync,
                                 topic: ConfigTopic) -> list[ConfigVersion]:
    """Push the source's changed keys to the topic if the whole set compiles."""
    try:
        loaded = await asyncio.to_thread(manager.source.load)
    except ConfigError as exc:
        _reject(manager, exc)
        return []
    latest = {key: ConfigVersion.from_record(r) for key in KEYS if (r := sync.records.get(key))}
    base = {**manager.active.versions, **latest}
    changed = [key for key in KEYS if loaded[key].digest != base[key].digest]
    if not changed:
        return []
    try:
        await asyncio.to_thread(compile_config, {**base, **{k: loaded[k] for k in changed}},
                                manager.known_bounds)
    except ConfigError as exc:
        _reject(manager, exc)
        return []
    versions = [loaded[key].pushed(base[key].version + 1, f"{manager.source.name} watcher "
                                   f"({user()})", f"from {manager.source.name}")
                for key in changed]
    await topic.publish(versions)
    log.info("configuration watcher pushed %s", ", ".join(f"{v.key} {v.label}"
                                                         for v in versions))
    return versions


def _reject(manager: ConfigManager, exc: ConfigError) -> None:
    manager.stats.rejected += 1
    manager.stats.last_error = str(exc)
    log.error("configuration watcher: the source's change is rejected, nothing pushed: %s",
              exc)
