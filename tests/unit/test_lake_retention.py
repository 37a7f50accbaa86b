"""Lake retention drops whole day folders older than the retention, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime

import fsspec

from storage.retention import purge_lake

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def make_lake(root):
    for day in ("2026-08-23", "2026-08-24", "2026-08-25", "2026-11-22"):
        folder = root / f"date={day}" / "hour=10"
        folder.mkdir(parents=True)
        (folder / "payments-0-0-9.parquet").write_bytes(b"x")
    (root / "_inflight").mkdir()
    (root / "date=garbage").mkdir()


def test_day_folders_older_than_the_retention_are_deleted(tmp_path):
    make_lake(tmp_path)
    fs = fsspec.filesystem("file")
    removed = purge_lake(fs, str(tmp_path), 90, now=NOW)  # cutoff day: 2026-08-24
    assert [p.rsplit("/", 1)[1] for p in removed] == ["date=2026-08-23"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["_inflight", "date=2026-08-24", "date=2026-08-25", "date=2026-11-22",
                    "date=garbage"]
    assert purge_lake(fs, str(tmp_path), 90, now=NOW) == []


def test_a_missing_lake_is_not_an_error(tmp_path):
    assert purge_lake(fsspec.filesystem("file"), str(tmp_path / "none"), 90) == []


def test_the_azure_lifecycle_policy_deletes_at_the_lake_retention():
    import json
    from pathlib import Path

    from app.settings import Settings

    policy = json.loads(Path("deploy/azure/lake-lifecycle-policy.json").read_text())
    (rule,) = policy["rules"]
    actions = rule["definition"]["actions"]
    days = Settings().lake_retention_days
    assert actions["baseBlob"]["delete"]["daysAfterModificationGreaterThan"] == days
    assert actions["snapshot"]["delete"]["daysAfterCreationGreaterThan"] == days
    assert actions["version"]["delete"]["daysAfterCreationGreaterThan"] == days
    assert actions["baseBlob"]["tierToCool"]["daysAfterModificationGreaterThan"] < days
