"""The worker: ``faust -A app worker`` imports this package and runs ``app``.

``app`` is built on first access (PEP 562 module ``__getattr__``) by
:func:`app.worker.build`, so importing a submodule such as ``runtime.settings`` does
not build the worker. docs/architecture.md is the tour of the code.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from app.worker import build
        from runtime.settings import get_settings

        built = build(get_settings())
        globals()["app"] = built
        return built
    raise AttributeError(f"module 'app' has no attribute {name!r}")
