"""Which build runs: the version from the git tag (``vX.Y.Z``; between tags
``X.Y.(Z+1).devN+g<commit>``) and the commit it was built from.

setuptools-scm writes both into ``runtime/_version.py`` when the package is built or installed
(pyproject.toml); the image's build stage, which has no git, is given them as build
arguments (Dockerfile). ``faust -A app version``, the ``payment_monitor_build_info``
gauge and the worker's first log line show them.
"""

from __future__ import annotations

from typing import Any


def _built() -> tuple[str, str | None]:
    built: Any
    try:
        from runtime import _version as built
    except ImportError:  # a tree that was never installed
        return "0.0.0+unknown", None
    return built.version, built.revision


VERSION, _REVISION = _built()
REVISION: str = (_REVISION or "unknown").removeprefix("g")  # git's node is g<sha>
