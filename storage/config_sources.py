"""Where configuration documents come from: local files or Azure App Configuration.

Both give the same three keys (:data:`pipeline.config.KEYS`) as
:class:`~pipeline.config.ConfigVersion` documents, and a cheap ``changed()`` poll:
file modification times, or the ETag of App Configuration's sentinel key (the
pattern Microsoft documents: bump the sentinel after editing the other keys, so a
poll costs one conditional request that answers 304 when nothing changed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from config import CONFIG_DIR
from pipeline.config import (
    COMPLIANCE_KEY,
    KEYS,
    METRICS_KEY,
    TRANSACTION_KEY,
    ActiveConfig,
    ConfigError,
    ConfigVersion,
    compile_config,
    load_yaml,
)

DEFAULT_FILES = {
    TRANSACTION_KEY: CONFIG_DIR / "validation.yaml",
    METRICS_KEY: CONFIG_DIR / "metrics.yaml",
    COMPLIANCE_KEY: CONFIG_DIR / "compliance.yaml",
}


def _read(key: str, path: Path) -> Any:
    try:
        return load_yaml(path.read_text())
    except OSError as exc:
        raise ConfigError(key, "", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(key, "", f"{path} is not valid YAML: {exc}") from None


class FileSource:
    """The YAML files under ``config/`` (or those the settings name).

    ``schemas:transaction:v1`` is ``validation.yaml`` with its ``schema:`` file
    (a path relative to the YAML) inlined, so the document is self-contained.
    """

    name = "files"

    def __init__(self, paths: Mapping[str, Path] | None = None) -> None:
        self.paths = {**DEFAULT_FILES, **(paths or {})}
        self._stamp: tuple[Any, ...] | None = None

    def _files(self) -> list[Path]:
        files = list(self.paths.values())
        doc = _read(TRANSACTION_KEY, self.paths[TRANSACTION_KEY])
        if isinstance(doc, dict) and isinstance(doc.get("schema"), str):
            files.append(self.paths[TRANSACTION_KEY].parent / doc["schema"])
        return files

    def _stat(self) -> tuple[Any, ...]:
        stamp: list[tuple[str, int | None, int | None]] = []
        for path in self._files():
            try:
                st = path.stat()
                stamp.append((str(path), st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append((str(path), None, None))
        return tuple(stamp)

    def load(self) -> dict[str, ConfigVersion]:
        stamp = self._stat()
        out = {}
        for key in KEYS:
            document = _read(key, self.paths[key])
            if key == TRANSACTION_KEY and isinstance(document, dict) and isinstance(
                    document.get("schema"), str):
                schema_path = self.paths[key].parent / document["schema"]
                try:
                    document["schema"] = json.loads(schema_path.read_text())
                except OSError as exc:
                    raise ConfigError(key, "schema", f"cannot read {schema_path}: "
                                      f"{exc.strerror}") from None
                except ValueError as exc:
                    raise ConfigError(key, "schema", f"{schema_path} is not JSON: {exc}"
                                      ) from None
            out[key] = ConfigVersion(key, document, source="files")
        self._stamp = stamp
        return out

    def changed(self) -> bool:
        try:
            return self._stat() != self._stamp
        except ConfigError:
            return True  # unreadable now: load() will say why


class AppConfigurationSource:
    """Azure App Configuration: one setting per key (JSON or YAML value), one label.

    ``client`` is an ``azure.appconfiguration.AzureAppConfigurationClient``.
    """

    name = "azure"

    def __init__(self, client: Any, label: str | None = None,
                 sentinel_key: str = "payment-monitor:sentinel") -> None:
        self.client = client
        self.label = label or None
        self.sentinel_key = sentinel_key
        self._sentinel_etag: str | None = None

    def _where(self) -> str:
        return f"App Configuration (label {self.label!r})" if self.label else \
            "App Configuration (no label)"

    def load(self) -> dict[str, ConfigVersion]:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        sentinel = self._get(self.sentinel_key, optional=True)
        out = {}
        for key in KEYS:
            try:
                setting = self.client.get_configuration_setting(key=key, label=self.label)
            except ResourceNotFoundError:
                raise ConfigError(key, "", f"not found in {self._where()}") from None
            except AzureError as exc:
                raise ConfigError(key, "", f"cannot read it from {self._where()}: "
                                  f"{type(exc).__name__}: {_first_line(exc)}") from None
            try:
                document = load_yaml(setting.value or "")  # YAML reads JSON too
            except yaml.YAMLError as exc:
                raise ConfigError(key, "", f"the value in {self._where()} is neither JSON nor "
                                  f"YAML: {exc}") from None
            out[key] = ConfigVersion(key, document, source="azure",
                                     comment=f"etag {setting.etag}")
        self._sentinel_etag = sentinel.etag if sentinel is not None else None
        return out

    def _get(self, key: str, optional: bool = False) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.client.get_configuration_setting(key=key, label=self.label)
        except ResourceNotFoundError:
            if optional:
                return None
            raise

    def changed(self) -> bool:
        """One conditional GET of the sentinel: 304 (None) when it is unchanged."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceNotFoundError

        if self._sentinel_etag is None:
            try:
                return self._get(self.sentinel_key) is not None
            except ResourceNotFoundError:
                return False
        try:
            setting = self.client.get_configuration_setting(
                key=self.sentinel_key, label=self.label, etag=self._sentinel_etag,
                match_condition=MatchConditions.IfModified)
        except ResourceNotFoundError:
            return True  # the sentinel was deleted: a change all the same
        return setting is not None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def compile_files(paths: Mapping[str, Path] | None = None) -> ActiveConfig:
    """The configuration files compiled exactly as a worker compiles them (for tests,
    benchmarks and tools that have no config topic to read)."""
    return compile_config(FileSource(paths).load())


def user() -> str:
    """Who pushes a version: the login name and host, for the history."""
    try:
        name = os.getlogin()
    except OSError:
        name = os.environ.get("USER", "unknown")
    return f"{name}@{os.uname().nodename}"
