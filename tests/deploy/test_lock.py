"""The Python locks: requirements.lock (what the wheel needs: the image, the VM install)
and requirements-dev.lock (with the dev tools: ``make install``, CI). Every pin has
hashes, the locks satisfy pyproject.toml and agree with each other, and a fresh install
from the lock is exactly the lock: two fresh installs resolve identically."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devtools.stack import REPO_ROOT

RUNTIME = REPO_ROOT / "requirements.lock"
DEV = REPO_ROOT / "requirements-dev.lock"
OURS = "payment-monitor"
# what a new venv has before anything is installed in it
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def pins(lock: Path) -> dict[str, str]:
    """Package -> version pinned, asserting each pin carries at least one sha256 hash."""
    text = lock.read_text()
    found: dict[str, str] = {}
    for name, version, hashes in re.findall(
            r"^([A-Za-z0-9_.\-]+)==(\S+)((?: \\\n\s+--hash=sha256:[0-9a-f]{64})+)", text, re.M):
        assert hashes.count("--hash=sha256:") >= 1
        found[canonicalize_name(name)] = version
    pinned = re.findall(r"^[A-Za-z0-9_.\-]+==", text, re.M)
    assert len(found) == len(pinned), f"{lock.name}: a pin without a hash"
    return found


def project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def test_the_locks_satisfy_pyproject_and_agree():
    runtime, dev = pins(RUNTIME), pins(DEV)
    assert len(runtime) > 50 and len(dev) > len(runtime)
    wanted = [(RUNTIME, runtime, r) for r in project()["dependencies"]] + \
        [(DEV, dev, r) for r in project()["optional-dependencies"]["dev"]]
    for lock, pinned, line in wanted:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock.name} lacks {req.name}: run make lock"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"{lock.name} pins {name}=={pinned[name]}, pyproject wants {req.specifier}"
    # the dev lock is the runtime lock plus the tools: never another version
    assert {n: v for n, v in dev.items() if n in runtime} == runtime


def distributions(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json",
                          "--disable-pip-version-check"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return {canonicalize_name(d["name"]): d["version"] for d in json.loads(out)}


def test_a_fresh_install_from_the_lock_is_exactly_the_lock(installed_venv):
    """deploy/vm/install.sh (the image's stage 2 too) made a new venv from the lock."""
    got = distributions(installed_venv / "bin" / "python")
    got.pop(OURS)
    assert {n: v for n, v in got.items() if n not in BOOTSTRAP} == \
        {n: v for n, v in pins(RUNTIME).items() if n not in BOOTSTRAP}


def test_the_dev_venv_has_every_locked_version():
    """``make install`` installed the dev lock into .venv (a fresh clone's CI run: a new
    venv, so together with the test above two fresh installs resolved identically)."""
    got = distributions(REPO_ROOT / ".venv" / "bin" / "python")
    wrong = {n: (v, got.get(n)) for n, v in pins(DEV).items()
             if n not in BOOTSTRAP and got.get(n) != v}
    assert not wrong, f"locked vs installed (run make install): {wrong}"
