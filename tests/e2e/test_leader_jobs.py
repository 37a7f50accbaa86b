"""Periodic jobs that run on the leader worker only (``on_leader=True`` timers) do run:
the retention job deletes an expired failed item. (They never ran while the app set
``topic_disable_leader``: without the leader topic no worker is the leader.)"""

from __future__ import annotations

import time

from tests.helpers import execute, query


def test_the_leader_runs_the_retention_job(stack):
    old, fresh = ("now() - interval '200 days'", "now()")
    for offset, created in enumerate((old, fresh)):
        execute(stack.database_url, f"""
            INSERT INTO failed_items (raw_payload, error_category, error_message,
                source_topic, source_partition, source_offset, retry_count, errors,
                first_seen_at, created_at)
            VALUES ('x', 'schema', 'bad', 'payments', 0, {offset}, 0, '[]', now(),
                    {created})""")
    stack.start_worker("w1", RETENTION_INTERVAL_S="1")
    deadline = time.monotonic() + 60
    while query(stack.database_url, "SELECT source_offset FROM failed_items") != [(1,)]:
        assert time.monotonic() < deadline, "the leader's retention job did not run"
        time.sleep(0.5)
