"""What the ``faust -A app`` commands share: the one-line failure and the active config."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

from app.settings import Settings
from pipeline.config import ActiveConfig, ConfigManager, compile_config
from storage.config_topic import ConfigTopic


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2; Faust's command runner would print a traceback
    for an exception."""
    click.echo(f"error: {message}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)  # SystemExit would be caught and logged by the mode worker running us


async def active_config(settings: Settings, manager: ConfigManager) -> ActiveConfig:
    """What the workers run: the topic's latest versions over the source's documents."""
    records = await ConfigTopic(settings.broker, settings.app_id).read()
    source = manager.source.load()
    return compile_config(records.latest_over(source), records.known_bounds())
