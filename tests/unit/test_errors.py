"""Every error the project raises on purpose shares one base class."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from models.errors import PaymentMonitorError

PACKAGES = ("app", "agents", "tables", "models", "pipeline", "storage", "simulator", "devtools")
SKIP = {"app.worker"}  # builds nothing on import, but pulls in every module anyway


def _our_exceptions() -> dict[str, type]:
    found: dict[str, type] = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if info.name in SKIP or info.name.endswith("__main__"):
                continue
            for name, obj in inspect.getmembers(importlib.import_module(info.name),
                                                inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__ == info.name:
                    found[f"{info.name}.{name}"] = obj
    return found


def test_every_project_error_derives_from_the_base_class():
    errors = _our_exceptions()
    assert len(errors) >= 13  # config, storage, broker, simulator, devtools ...
    strays = sorted(name for name, cls in errors.items()
                    if not issubclass(cls, PaymentMonitorError))
    assert strays == []
