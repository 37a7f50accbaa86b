"""Hot reload on every worker: the config topic reader and the source watcher.

* Every worker follows the whole config topic (:mod:`storage.config_topic`, one
  compacted partition) with :class:`ConfigReader`: no consumer group, from the
  beginning, then every CONFIG_SYNC_INTERVAL_S it asks for the end offset and fetches
  only when something was appended. Each time, the bucket bounds of every version in
  the topic's history are learned first, so stored windows of any of them decode.
  :class:`ConfigSync` activates a newer version through the
  :class:`~pipeline.config.ConfigManager` as soon as it arrives; the ingest handler
  waits for the first catch-up before its first batch, so no batch runs under the
  source's version when the topic holds a pushed one. (Not a Faust GlobalTable:
  ADR 0006 says why.)
* With CONFIG_WATCH (files, for development) or CONFIG_SOURCE=azure, the leader polls
  the source and pushes each valid change to the topic
  (:func:`pipeline.config.plan_push`, as ``faust -A app config push`` does), from where
  it reaches every worker the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from mode import Service

from pipeline.config import (
    KEYS,
    ConfigError,
    ConfigManager,
    ConfigRecords,
    ConfigVersion,
    plan_push,
)
from runtime.faust_app import PaymentApp
from runtime.settings import Settings
from storage.config_sources import user
from storage.config_topic import ConfigTopic

log = logging.getLogger(__name__)


class ConfigReader(Service):
    """Keeps ``records`` equal to the config topic (record key -> JSON value), through
    the one reader of the topic (:class:`storage.config_topic.ConfigTopicReader`)."""

    def __init__(self, topic: ConfigTopic, interval: float,
                 manager: ConfigManager | None = None,
                 on_records: Callable[[], None] = lambda: None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manager = manager
        self.topic = topic
        self.interval = interval
        self.reader = topic.reader()
        self.records = self.reader.records  # the same dict, updated in place
        self.caught_up = asyncio.Event()
        self.on_records = on_records  # called after each poll that brought records

    async def on_start(self) -> None:
        source_error: ConfigError | None = None
        if self.manager is not None and not self.manager.loaded:
            try:  # the source's documents: active until the topic says otherwise
                self.manager.load_all_configuration()
            except ConfigError as exc:
                source_error = exc
        await self.topic.ensure()
        await self.reader.start()
        if source_error is not None:
            await self._start_from_topic(source_error)
        self.add_future(self._run())

    async def _start_from_topic(self, source_error: ConfigError) -> None:
        """The source is invalid: start on the topic's versions if it holds every key."""
        assert self.manager is not None
        await self.reader.poll()
        records = self.reader.snapshot()
        pushed = {k: v for k in KEYS if (v := records.latest(k))}
        if len(pushed) < len(KEYS):
            log.critical("the worker cannot start: %s (and the config topic does not hold "
                         "every key to fall back on)", source_error)
            raise source_error
        self.manager.learn_bounds(records.known_bounds())
        try:
            self.manager.load_all_configuration(pushed)
        except ConfigError as exc:
            log.critical("the worker cannot start: %s; the config topic's versions are "
                         "invalid too: %s", source_error, exc)
            raise
        log.warning("the source's configuration is invalid (%s); running the config topic's "
                    "versions %s", source_error, self.manager.active.version)

    async def on_stop(self) -> None:
        await self.reader.stop()

    async def _run(self) -> None:
        while not self.should_stop:
            try:
                # The first poll counts even when the topic is empty: the worker has then
                # read its configuration topic, and an idle worker becomes ready.
                if await self.reader.poll() or not self.caught_up.is_set():
                    self.on_records()
                self.caught_up.set()
            except Exception:  # the broker may be away for a while; keep the last records
                log.exception("config topic %s: read failed, retrying", self.topic.topic)
            await self.sleep(self.interval)


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
        """Learn the bounds of the topic's whole history, then activate its newest
        versions (a rejected version is not tried again)."""
        self.manager.learn_bounds(ConfigRecords(self.records).known_bounds())
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
    reader.on_records = sync.sync
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
    records = ConfigRecords(sync.records)
    running = {**manager.active.versions,
               **{key: v for key in KEYS if (v := records.latest(key))}}
    changed = {key: loaded[key] for key in KEYS if loaded[key].digest != running[key].digest}
    if not changed:
        return []
    try:
        versions = await asyncio.to_thread(
            plan_push, records, changed, running, by=f"{manager.source.name} watcher ({user()})",
            comment=f"from {manager.source.name}", known_bounds=manager.known_bounds)
    except ConfigError as exc:
        _reject(manager, exc)
        return []
    await topic.publish(versions)
    log.info("configuration watcher pushed %s", ", ".join(f"{v.key} {v.label}"
                                                         for v in versions))
    return versions


def _reject(manager: ConfigManager, exc: ConfigError) -> None:
    manager.stats.rejected += 1
    manager.stats.last_error = str(exc)
    log.error("configuration watcher: the source's change is rejected, nothing pushed: %s",
              exc)
