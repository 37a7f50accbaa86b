"""Default configuration shipped with the worker (schemas, metric definitions, rules)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
