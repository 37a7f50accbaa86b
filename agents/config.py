"""Hot reload on every worker: the ``config`` GlobalTable and the source watcher.

* Every worker reads the config topic (:mod:`storage.config_topic`) as the ``config``
  GlobalTable: one partition, kept in memory, consumed by every worker as a standby
  of all partitions (``synchronize_all_active_partitions``), so a record pushed by the
  CLI reaches every worker. :class:`ConfigSync` looks at the table's pointers every
  CONFIG_SYNC_INTERVAL_S and activates a newer version through the
  :class:`~pipeline.config.ConfigManager`; the ingest handler also syncs once before
  its first batch, so no batch runs under the source's version when the topic holds a
  pushed one.
* With CONFIG_WATCH (files, for development) or CONFIG_SOURCE=azure, the leader polls
  the source and pushes each valid change to the topic, from where it reaches every
  worker the same way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from app.faust_app import PaymentApp
from app.settings import Settings
from pipeline.config import KEYS, ConfigError, ConfigManager, ConfigVersion, compile_config
from storage.config_sources import user
from storage.config_topic import CONFIG_TABLE, ConfigTopic

log = logging.getLogger(__name__)


def declare_config_table(app: PaymentApp) -> Any:
    # partitions=1 and recovery_buffer_size=1: Faust's advice against a recovery loop with
    # several workers (faust/tables/globaltable.py); memory://: a few kB, re-read at start.
    return app.GlobalTable(CONFIG_TABLE, partitions=1, recovery_buffer_size=1,
                           synchronize_all_active_partitions=True, store="memory://",
                           help="pushed configuration versions (faust -A app config)")


class ConfigSync:
    """Activates the newest version the config table holds for each key."""

    def __init__(self, manager: ConfigManager, table: Any) -> None:
        self.manager = manager
        self.table = table
        self.synced = False
        self._rejected: set[tuple[str, int]] = set()

    def pending(self) -> dict[str, ConfigVersion]:
        active = self.manager.active.versions
        changes = {}
        for key in KEYS:
            record = self.table.get(key)
            if not record:
                continue
            version = ConfigVersion.from_record(record)
            current = active[key]
            if (version.version, version.digest) == (current.version, current.digest):
                continue
            if (key, version.version) not in self._rejected:
                changes[key] = version
        return changes

    def sync(self) -> None:
        changes = self.pending()
        if changes:
            result = self.manager.reload_configuration(changes)
            if not result.ok:
                self._rejected.update((k, v.version) for k, v in changes.items())
        self.synced = True


def register_config(app: PaymentApp, settings: Settings, manager: ConfigManager,
                    table: Any) -> ConfigSync:
    """The sync timer on every worker and, when watching, the source poll on the leader."""
    sync = ConfigSync(manager, table)

    @app.timer(settings.config_sync_interval_s)
    async def sync_config() -> None:
        if _recovered(app):
            sync.sync()

    if settings.config_watch or settings.config_source == "azure":
        topic = ConfigTopic(settings.broker_bootstrap, settings.app_id)

        @app.timer(settings.config_source_poll_s, on_leader=True)
        async def watch_source() -> None:
            if not _recovered(app):
                return
            try:
                if not await asyncio.to_thread(manager.source.changed):
                    return
                await publish_source_changes(manager, sync, topic)
            except Exception:  # the watcher must outlive a bad edit or a network error
                log.exception("configuration watcher: could not read %s", manager.source.name)

    return sync


def _recovered(app: PaymentApp) -> bool:
    return bool(app.tables.recovery.completed.is_set())  # type: ignore[attr-defined]


async def publish_source_changes(manager: ConfigManager, sync: ConfigSync,
                                 topic: ConfigTopic) -> list[ConfigVersion]:
    """Push the source's changed keys to the topic if the whole set compiles."""
    try:
        loaded = await asyncio.to_thread(manager.source.load)
    except ConfigError as exc:
        _reject(manager, exc)
        return []
    latest = {key: ConfigVersion.from_record(r) for key in KEYS if (r := sync.table.get(key))}
    base = {**manager.active.versions, **latest}
    changed = [key for key in KEYS if loaded[key].digest != base[key].digest]
    if not changed:
        return []
    try:
        await asyncio.to_thread(compile_config, {**base, **{k: loaded[k] for k in changed}},
                                manager._known_bounds)
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
