"""The Azure App Configuration source, through the SDK's own transport hook.

There is no App Configuration emulator: the real ``AzureAppConfigurationClient`` runs
its whole pipeline (auth signing, request building, response parsing, 304 and 404
handling), and only the HTTP transport is replaced by one that answers like the
service's REST API (GET /kv/{key}?label=...; If-None-Match gives 304).
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from azure.appconfiguration import AzureAppConfigurationClient
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl import HttpResponseImpl

from pipeline.config import COMPLIANCE_KEY, KEYS, METRICS_KEY, ConfigError, ConfigManager
from storage.config_sources import AppConfigurationSource, FileSource

CONNECTION = ("Endpoint=https://monitor.azconfig.io;Id=test-id;"
              f"Secret={base64.b64encode(b'not-a-real-secret').decode()}")


class Response(HttpResponseImpl):
    def __init__(self, request: HttpRequest, status: int, body: dict | None,
                 headers: dict[str, str]) -> None:
        content = json.dumps(body).encode() if body is not None else b""
        super().__init__(request=request, internal_response=None, status_code=status,
                         headers=headers, reason="OK" if status < 300 else "Error",
                         content_type=headers.get("Content-Type"),
                         stream_download_generator=None)
        self._content = content
        self._is_closed = True
        self._is_stream_consumed = True


class FakeService(HttpTransport):
    """Key-values by (key, label), with ETags, as the REST API serves them."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str | None], tuple[str, str]] = {}
        self.requests: list[tuple[str, str | None, str | None]] = []
        self._etag = 0

    def put(self, key: str, value: str, label: str | None = None) -> None:
        self._etag += 1
        self.values[(key, label)] = (value, f"etag-{self._etag}")

    def send(self, request: HttpRequest, **kwargs: Any) -> Response:  # type: ignore[override]
        url = urlsplit(request.url)
        assert url.path.startswith("/kv/"), url.path
        assert "Authorization" in request.headers  # the SDK signed it (HMAC)
        key = unquote(url.path[len("/kv/"):])
        label = parse_qs(url.query).get("label", [None])[0]
        label = None if label in (None, "\0") else label
        condition = request.headers.get("If-None-Match")
        self.requests.append((key, label, condition))
        found = self.values.get((key, label))
        if found is None:
            return Response(request, 404, {"title": "Not Found"},
                            {"Content-Type": "application/problem+json"})
        value, etag = found
        if condition == f'"{etag}"' or condition == etag:
            return Response(request, 304, None, {"ETag": f'"{etag}"'})
        body = {"key": key, "label": label, "value": value, "etag": etag,
                "content_type": "application/json", "last_modified": "2026-11-22T10:00:00Z",
                "locked": False, "tags": {}}
        return Response(request, 200, body, {"Content-Type": "application/vnd.microsoft."
                                             "appconfig.kv+json", "ETag": f'"{etag}"'})

    def open(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> FakeService:
        return self

    def __exit__(self, *args: Any) -> None: ...


@pytest.fixture
def service() -> FakeService:
    svc = FakeService()
    for key, version in FileSource().load().items():
        # JSON for the metrics, YAML for the others: both are accepted
        text = (json.dumps(dict(version.document)) if key == METRICS_KEY
                else yaml.safe_dump(dict(version.document)))
        svc.put(key, text, label="prod")
    svc.put("payment-monitor:sentinel", "1", label="prod")
    return svc


def source(service: FakeService, label: str | None = "prod") -> AppConfigurationSource:
    client = AzureAppConfigurationClient.from_connection_string(CONNECTION, transport=service)
    return AppConfigurationSource(client, label)


def test_loads_the_three_keys_of_the_label_and_compiles_them(service):
    manager = ConfigManager(source(service))
    active = manager.load_all_configuration()
    files = FileSource().load()
    for key in KEYS:  # the same documents as the files, read over the SDK
        assert active.versions[key].digest == files[key].digest
        assert active.versions[key].source == "azure"
    assert {(k, lbl) for k, lbl, _ in service.requests} == {
        *((k, "prod") for k in KEYS), ("payment-monitor:sentinel", "prod")}


def test_sentinel_poll_is_one_conditional_request_until_it_changes(service):
    src = source(service)
    manager = ConfigManager(src)
    manager.load_all_configuration()
    service.requests.clear()
    assert not src.changed()
    assert service.requests == [("payment-monitor:sentinel", "prod", '"etag-4"')]
    compliance = yaml.safe_load(service.values[(COMPLIANCE_KEY, "prod")][0])
    compliance["rules"][0]["thresholds_minor"]["EUR"] = 250_000
    service.put(COMPLIANCE_KEY, yaml.safe_dump(compliance), label="prod")
    assert not src.changed()  # edits count once the sentinel is bumped
    service.put("payment-monitor:sentinel", "2", label="prod")
    assert src.changed()
    result = manager.reload_configuration()
    assert result.ok and result.changed == (COMPLIANCE_KEY,)
    assert not src.changed()  # the new sentinel ETag is remembered by load()


def test_a_missing_key_or_label_is_a_clear_error(service):
    with pytest.raises(ConfigError, match=r"^schemas:transaction:v1: not found in App "
                                          r"Configuration \(label 'staging'\)"):
        source(service, "staging").load()


def test_a_value_that_is_not_json_or_yaml_is_rejected_naming_the_key(service):
    service.put(METRICS_KEY, "extractors: [unclosed", label="prod")
    with pytest.raises(ConfigError, match=r"^metrics:definitions:v1: the value in App "
                                          r"Configuration .* neither JSON nor YAML"):
        source(service).load()


def test_an_invalid_value_is_rejected_and_the_previous_version_stays(service):
    src = source(service)
    manager = ConfigManager(src)
    before = manager.load_all_configuration()
    metrics = json.loads(service.values[(METRICS_KEY, "prod")][0])
    metrics["extractors"][0]["extractor"] = "horoscope"
    service.put(METRICS_KEY, json.dumps(metrics), label="prod")
    result = manager.reload_configuration()
    assert not result.ok and result.error.key == METRICS_KEY
    assert "horoscope" in str(result.error) and manager.active is before
