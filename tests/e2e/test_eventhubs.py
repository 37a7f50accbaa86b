"""The Event Hubs path for real: SASL_SSL PLAIN with a connection string, on the stand-in.

The broker opens a second listener with a certificate from a CA made for the
test and accepts only the username ``$ConnectionString`` with one
Event-Hubs-shaped connection string as the password. The worker, the simulator
and the config CLI get nothing but ``EVENTHUBS_CONNECTION_STRING``,
``BROKER_URL`` and ``BROKER_CA_FILE``; the topics are made from ``topics plan``
as the IaC would, since on Event Hubs the worker creates none.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devtools.services import ServiceError, call
from devtools.stack import REPO_ROOT, Stack
from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import assert_end_state

KEY = "compliance:rules:v1"
COUNT, SEED, INVALID = 6_000, 61, 0.04
START = "2026-11-01T09:00:00Z"  # pinned: the test regenerates what the simulator sent


@pytest.fixture
def hubs(pg, tmp_path) -> Stack:
    s = Stack.start(tmp_path, pg, f"pm_eh_{uuid.uuid4().hex[:8]}", eventhubs=True)
    yield s
    s.stop(drop_database=True)


async def create_from_plan(bootstrap: str, plan: list[dict]) -> None:
    """What the IaC does with ``topics plan --json`` (here through the plain listener)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(t["name"], t["partitions"], 1,
                     topic_configs={"cleanup.policy": "compact"} if t["compacted"] else {})
            for t in plan])
    finally:
        await admin.close()


def simulator(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulator", "--quiet", *args],
        env=stack.worker_env("sim", **env), cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300, stdin=subprocess.DEVNULL, check=False)


def secrets_in(paths: list[Path], texts: list[str], secrets: list[str]) -> list[str]:
    found = []
    for path in paths:
        content = path.read_text(errors="replace")
        found += [f"{path.name}: {s[:12]}..." for s in secrets if s in content]
    for i, text in enumerate(texts):
        found += [f"output {i}: {s[:12]}..." for s in secrets if s in text]
    return found


def test_worker_simulator_and_cli_over_sasl_ssl_with_a_connection_string(hubs):
    standin = hubs.broker.eventhubs
    assert standin is not None
    env = hubs.broker_env()
    assert set(env) == {"BROKER_URL", "EVENTHUBS_CONNECTION_STRING", "BROKER_CA_FILE"}
    outputs: list[str] = []

    plan_run = hubs.cli("topics", "plan", "--json")
    assert plan_run.returncode == 0, plan_run.stderr[-2000:]
    plan = json.loads(plan_run.stdout)
    assert {"payments", "payments-dlq", "payment-monitor-config-changelog"} <= \
        {t["name"] for t in plan}
    assert all(set(t) == {"name", "partitions", "compacted"} for t in plan)

    # no hubs yet: the worker names what is missing in one line and exits 2
    with pytest.raises(ServiceError, match="exited with code 2"):
        hubs.start_worker("w-missing")
    missing_log = (hubs.workdir / "w-missing.log").read_text()
    assert "payments-dlq is missing" in missing_log
    assert "Traceback" not in missing_log

    asyncio.run(create_from_plan(hubs.broker.bootstrap, plan))
    check = hubs.cli("topics", "check")
    outputs += [check.stdout, check.stderr]
    assert check.returncode == 0, check.stderr[-2000:]
    assert f"all {len(plan)} topics exist" in check.stdout
    assert "Event Hubs at 127.0.0.1" in check.stdout

    worker = hubs.start_worker("w1", PARQUET_FLUSH_SECONDS="1")
    sent = simulator(hubs, "--count", str(COUNT), "--seed", str(SEED), "--start", START,
                     "--invalid-ratio", str(INVALID))
    outputs += [sent.stdout, sent.stderr]
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert f"produced {COUNT:,} events" in sent.stdout

    pushed = hubs.cli("config", "push", KEY, "--comment", "over SASL_SSL")
    outputs += [pushed.stdout, pushed.stderr]
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    history = hubs.cli("config", "history", KEY, "--json")
    outputs += [history.stdout, history.stderr]
    assert [v["version"] for v in json.loads(history.stdout)] == [1]

    hubs.wait_until_committed(COUNT, timeout=180)
    worker.wait_for_config(lambda c: c["keys"][KEY]["version"] == 1, "v1 not applied")
    events = list(PaymentGenerator(load_scenario(), seed=SEED, invalid_ratio=INVALID,
                                   start=datetime.fromisoformat(START.replace("Z", "+00:00")))
                  .events(COUNT))
    assert_end_state(hubs, events)
    assert "Event Hubs at 127.0.0.1" in (hubs.workdir / "w1.log").read_text()
    # the lag's end offsets are asked over SASL_SSL too, on the probe's own connection
    code, text = call(f"{worker.web_url}/metrics")
    lag = [line for line in text.splitlines() if line.startswith("payment_monitor_consumer_lag{")]
    assert code == 200 and len(lag) == hubs.partitions, lag
    assert all(line.endswith(" 0.0") for line in lag), lag
    assert "did not give the end offsets" not in (hubs.workdir / "w1.log").read_text()

    # a wrong key: one clear line and a non-zero exit, from the worker and the simulator
    wrong = standin.connection_string.rsplit("=", 1)[0] + "=" + uuid.uuid4().hex
    with pytest.raises(ServiceError, match="exited with code 2"):
        hubs.start_worker("w-wrong", EVENTHUBS_CONNECTION_STRING=wrong)
    wrong_log = (hubs.workdir / "w-wrong.log").read_text()
    assert "the broker refused our credentials" in wrong_log
    refused = simulator(hubs, "--count", "10", EVENTHUBS_CONNECTION_STRING=wrong)
    outputs += [refused.stdout, refused.stderr]
    assert refused.returncode == 3
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refused our credentials" in errors[0], refused.stderr
    cli_refused = hubs.cli("config", "history", KEY, EVENTHUBS_CONNECTION_STRING=wrong)
    outputs += [cli_refused.stdout, cli_refused.stderr]
    assert cli_refused.returncode != 0

    # no secret in any log or output: the key, either connection string
    hubs.stop()
    logs = sorted(hubs.workdir.glob("*.log"))
    assert len(logs) >= 3
    secret_key = standin.connection_string.rsplit("=", 1)[1]
    leaks = secrets_in(logs, outputs, [secret_key, wrong.rsplit("=", 1)[1],
                                       standin.connection_string])
    assert not leaks, leaks
