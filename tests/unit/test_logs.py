"""Log records never carry a secret the settings hold, in either format."""

from __future__ import annotations

import io
import json
import logging

import pytest
from pythonjsonlogger.json import JsonFormatter

from runtime.logs import JSON_FIELDS, RENAMED, logging_config, redact_secrets


@pytest.fixture
def captured():
    factory = logging.getLogRecordFactory()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, handler, stream
    logger.removeHandler(handler)
    logging.setLogRecordFactory(factory)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_secret_in_a_message_or_its_arguments_is_masked(captured, fmt):
    logger, handler, stream = captured
    if fmt == "json":
        handler.setFormatter(JsonFormatter(JSON_FIELDS, rename_fields=RENAMED,
                                           timestamp="time"))
    redact_secrets(["s3cr3t-password", "Endpoint=sb://ns/;SharedAccessKey=abc123xyz"])
    logger.info("connecting with %s", "s3cr3t-password")
    logger.info("bad string Endpoint=sb://ns/;SharedAccessKey=abc123xyz in config",
                extra={"partition": 3})
    logger.info("nothing to hide")
    out = stream.getvalue()
    assert "s3cr3t" not in out and "abc123xyz" not in out
    assert out.count("***") == 2 and "nothing to hide" in out
    if fmt == "json":
        records = [json.loads(line) for line in out.splitlines()]
        assert records[1]["partition"] == 3 and records[1]["level"] == "INFO"


def test_json_is_merged_into_fausts_logging_and_text_is_left_alone():
    assert logging_config("text") is None
    config = logging_config("json")
    assert config is not None and config["merge"] is True
    assert config["handlers"]["default"]["formatter"] == "json"
