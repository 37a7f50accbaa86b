"""A memory probe for a running worker, loaded by Python at start-up from ``PYTHONPATH``.

Not part of the app: a soak or benchmark starts its worker with it to see where the
resident memory is (docs/performance.md, "Where the memory is")::

    # absolute paths: a worker runs in its own directory, where a relative one finds
    # nothing (and the signals below would then end the worker)
    python -m benchmarks.soak --rate 8000 --minutes 3 \\
        --env PYTHONPATH=$PWD/benchmarks/memprobe:$PWD
    kill -s RTMIN+3 <worker pid>   # Python's allocator: sys._debugmallocstats()
    kill -s RTMIN+4 <worker pid>   # objects the garbage collector tracks, by type
    kill -s RTMIN+5 <worker pid>   # a full collection, and what it freed

Each writes to ``$MEMPROBE_DIR`` (default ``/tmp``), one file per kind and process,
headed by the process's RSS. Read ``/proc/<pid>/smaps`` beside it for the native side.
"""

from __future__ import annotations

import collections
import gc
import os
import signal
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("MEMPROBE_DIR", "/tmp"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _out(kind: str) -> Path:
    return OUT / f"memprobe-{kind}-{os.getpid()}.txt"


def _allocator(*_: object) -> None:
    """sys._debugmallocstats() writes to the C stderr: point it at the file meanwhile."""
    with _out("allocator").open("a") as f:
        f.write(f"==== {time.strftime('%H:%M:%S')} rss {_rss_mb():.0f} MB\n")
        f.flush()
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _census(*_: object) -> None:
    count: collections.Counter[str] = collections.Counter()
    size: collections.Counter[str] = collections.Counter()
    objects = gc.get_objects()
    for obj in objects:
        t = type(obj)
        name = f"{getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', t)}"
        count[name] += 1
        size[name] += sys.getsizeof(obj)
    with _out("census").open("a") as f:
        f.write(f"==== {time.strftime('%H:%M:%S')} rss {_rss_mb():.0f} MB, "
                f"{len(objects)} tracked objects\n")
        for name, total in size.most_common(40):
            f.write(f"{total / 2**20:8.2f} MB {count[name]:9d} {name}\n")


def _collect(*_: object) -> None:
    before, started = _rss_mb(), time.perf_counter()
    found = gc.collect()
    with _out("gc").open("a") as f:
        f.write(f"{time.strftime('%H:%M:%S')} collected {found} objects in "
                f"{time.perf_counter() - started:.2f} s; rss {before:.0f} -> {_rss_mb():.0f} MB; "
                f"{gc.get_stats()}\n")


for offset, handler in ((3, _allocator), (4, _census), (5, _collect)):
    signal.signal(signal.SIGRTMIN + offset, handler)
