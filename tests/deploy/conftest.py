"""The deployment artefacts, checked offline: the image's install, the Helm chart,
Terraform, the VM install and the workflows (ADR 0008)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.stack import REPO_ROOT


def checkout(into: Path) -> Path:
    """The working tree's files that git would see (tracked, or new and not ignored),
    copied into ``into``: what a clean checkout builds. In the tree, setuptools reuses
    build/ and the egg-info's file list, so a file copied there once reaches the wheel
    and hides what a fresh clone's wheel lacks."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():  # not one deleted in the tree
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The project's wheel installed by deploy/vm/install.sh under a temporary root: a
    clean venv with the wheel and its dependencies, as the image's second stage does."""
    wheels = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(wheels), str(checkout(tmp_path_factory.mktemp("src")))],
                   check=True, timeout=300,
                   capture_output=True)
    wheel = next(wheels.glob("payment_monitor-*.whl"))
    root = tmp_path_factory.mktemp("root")
    conf = root.parent / "settings.conf"
    conf.write_text("TOPIC_PARTITIONS=8\nWEB_HOST=10.1.0.4\nEVENTHUBS_NAMESPACE=pm-dev-ehns\n"
                    "POSTGRES_HOST=pm-dev-pg.postgres.database.azure.com\n"
                    "LAKE_ACCOUNT=pmdevlake\nAPPCONFIG_NAME=pm-dev-appconfig\n"
                    "AZURE_CLIENT_ID=00000000-0000-0000-0000-00000000d001\n"
                    "KEY_VAULT=pm-dev-kv\n")
    out = subprocess.run(["bash", str(REPO_ROOT / "deploy" / "vm" / "install.sh"), str(wheel),
                          str(conf)], env={"PATH": "/usr/bin:/bin", "PREFIX": str(root),
                                           "PYTHON": sys.executable},
                         capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    yield root


@pytest.fixture(scope="session")
def installed_venv(installed: Path) -> Path:
    """The venv deploy/vm/install.sh made under ``installed``."""
    return installed / "opt" / "payment-monitor" / "venv"
