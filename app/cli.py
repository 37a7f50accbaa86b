"""What the ``faust -A app`` commands share: the one-line failure and the active config."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

import click
from sqlalchemy.exc import InterfaceError, OperationalError

from pipeline.config import ActiveConfig, ConfigManager, compile_config
from runtime.settings import Settings
from storage.config_topic import ConfigTopic


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2; Faust's command runner would print a traceback
    for an exception."""
    click.echo(f"error: {message}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)  # SystemExit would be caught and logged by the mode worker running us


def database_errors(exc: Exception, settings: Settings) -> NoReturn:
    """One line for a database that cannot be reached; any other error is raised again."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        fail(f"cannot reach the database at {settings.safe_database_url}: {reason}")
    raise exc


async def active_config(settings: Settings, manager: ConfigManager) -> ActiveConfig:
    """What the workers run: the topic's latest versions over the source's documents."""
    return (await active_config_and_bounds(settings, manager))[0]


async def active_config_and_bounds(settings: Settings, manager: ConfigManager,
                                   ) -> tuple[ActiveConfig, dict[str, tuple[float, ...]]]:
    """:func:`active_config`, and the bucket bounds of every metric any pushed version
    defined (stored windows may hold metrics the active version dropped)."""
    records = await ConfigTopic(settings.broker, settings.app_id).read()
    source = manager.source.load()
    known = records.known_bounds()
    return compile_config(records.latest_over(source), known), known


def output_target(path: Path) -> Path:
    """A temporary file beside ``path`` to write into, then :func:`finish_output` renames
    it over ``path``. Refuses a target that exists and is not a regular file: a symlink
    or a device node (``--output /dev/null`` as root) must not become a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(mode):
            raise OSError(f"{path} exists and is not a regular file (a symlink, a device or "
                          "a directory); give a new path or a regular file to replace")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def finish_output(tmp: Path, path: Path) -> None:
    """Rename the finished temporary file over ``path`` (checked again just before)."""
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        tmp.unlink(missing_ok=True)
        raise OSError(f"{path} became something other than a regular file; not replaced")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is 0600: give it a new file's mode
    tmp.replace(path)


@contextlib.contextmanager
def written_output(output: Path | None, *, binary: bool = False) -> Iterator[IO[Any]]:
    """A file object to stream an export into: ``output`` written under a temporary name
    and renamed over it once complete (removed if the export fails), or stdout when no
    ``output`` is given. A half-written export never looks finished."""
    if output is None:
        yield sys.stdout
        return
    tmp = output_target(output)
    sink = open(tmp, "wb") if binary else open(tmp, "w", newline="")  # noqa: SIM115
    try:
        yield sink
    except BaseException:
        sink.close()
        tmp.unlink(missing_ok=True)
        raise
    sink.close()
    finish_output(tmp, output)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# C0 and C1 control characters, DEL, and the bidirectional overrides: a payload's escape
# sequences must not reach the operator's terminal as they are
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``text`` for a terminal: control characters shown escaped (``\\x1b``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"),
                        str(text))
