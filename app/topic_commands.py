"""``faust -A app topics plan|check [--json]``: the topics the worker needs.

* ``plan``   each topic with its partition count and cleanup policy, so the IaC, the
  docs and a person create exactly these (on Event Hubs the worker creates none).
  ``--json`` prints a list of ``{"name", "partitions", "compacted"}`` objects.
* ``check``  asks the broker whether every planned topic exists with its partition
  count; exit status 2 and one line naming each missing or wrong topic.
"""

from __future__ import annotations

import json

import click
from faust.cli import AppCommand, argument, option

from app.cli import fail
from runtime.faust_app import PaymentApp
from runtime.settings import Settings
from storage.broker import BrokerError, check_topics

# Event hubs per namespace by tier (docs/eventhubs.md); Basic has no Kafka endpoint.
EVENTHUBS_PER_NAMESPACE = {"Standard": 10, "Premium": 100, "Dedicated": 1000}


def register_topic_commands(app: PaymentApp, settings: Settings) -> None:
    @app.command(
        argument("action", type=click.Choice(["plan", "check"])),
        option("--json", "as_json", is_flag=True, help="plan: JSON output"),
    )
    async def topics(self: AppCommand, action: str, as_json: bool) -> None:
        """List the topics the worker needs (plan) or check them on the broker (check)."""
        plan = app.topic_plan()
        if action == "check":
            try:
                await check_topics(settings.broker, plan)
            except BrokerError as exc:
                fail(str(exc))
            click.echo(f"all {len(plan)} topics exist with the planned partition counts "
                       f"on {settings.broker.describe()}")
            return
        if as_json:
            click.echo(json.dumps([t.to_dict() for t in plan], indent=2))
            return
        width = max(len(t.name) for t in plan)
        click.echo(f"{'topic':<{width}}  partitions  cleanup")
        for t in plan:
            click.echo(f"{t.name:<{width}}  {t.partitions:>10}  "
                       f"{'compact' if t.compacted else 'delete'}")
        fits = ", ".join(f"{tier} {'fits' if len(plan) <= n else 'does NOT fit'} ({n})"
                         for tier, n in EVENTHUBS_PER_NAMESPACE.items())
        click.echo(f"{len(plan)} topics; event hubs per namespace: {fits}")
