"""Lake retention: a Delta ``delete`` of the dates older than the retention, then a
``vacuum``; the Azure lifecycle policy no longer deletes the table's live files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from deltalake import DeltaTable

from runtime.settings import Settings
from simulator.generator import PaymentGenerator, load_scenario
from storage.delta import RawTable
from storage.parquet import RawEventWriter
from storage.retention import purge_lake
from tests.helpers import batch_of, read_lake

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def fill(root: Path) -> None:
    """A day of payments at each of 2026-08-23, -24 and 11-22 (one partition each)."""
    w = RawEventWriter(str(root))
    for partition, day in enumerate(("2026-08-23", "2026-08-24", "2026-11-22")):
        start = datetime.fromisoformat(f"{day}T10:00:00+00:00")
        events = list(PaymentGenerator(load_scenario(), seed=partition, start=start)
                      .events(50))
        w.append(batch_of(events, partition, 0, start.timestamp()))
        w.flush("payments", partition)


def test_dates_older_than_the_retention_are_deleted_and_vacuumed(tmp_path):
    fill(tmp_path)
    table = RawTable(str(tmp_path))
    deleted, removed = purge_lake(table, 90, now=NOW)  # cutoff day: 2026-08-24
    assert deleted == 50
    assert sorted(set(read_lake(tmp_path)["date"].to_pylist())) == ["2026-08-24",
                                                                    "2026-11-22"]
    assert read_lake(tmp_path).num_rows == 100
    # the deleted date's files are vacuumed at once only with no hours to keep
    assert removed == 0 and any("2026-08-23" in str(p) for p in tmp_path.rglob("*.parquet"))
    assert purge_lake(table, 90, now=NOW) == (0, 0)
    table.purge(90, now=NOW, vacuum_hours=0)
    assert not any("2026-08-23" in str(p) for p in tmp_path.rglob("*.parquet"))
    assert DeltaTable(str(tmp_path)).transaction_version("payments-0") == 49, \
        "a replay of the purged offsets is still recognised"


def test_a_missing_lake_is_not_an_error(tmp_path):
    assert purge_lake(RawTable(str(tmp_path / "none")), 90) == (0, 0)


def test_the_azure_lifecycle_policy_no_longer_deletes_live_files():
    policy = json.loads(Path("deploy/azure/lake-lifecycle-policy.json").read_text())
    (rule,) = policy["rules"]
    actions = rule["definition"]["actions"]
    assert "delete" not in actions["baseBlob"], "the Delta log decides which files live"
    days = Settings().lake_retention_days
    assert actions["snapshot"]["delete"]["daysAfterCreationGreaterThan"] == days
    assert actions["version"]["delete"]["daysAfterCreationGreaterThan"] == days
