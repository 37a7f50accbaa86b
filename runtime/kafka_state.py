"""What the Kafka clients are doing, for the log line of a worker that gives up on them.

A Kafka request that never completes ends the worker after ``COMMIT_TIMEOUT_S``. Such
hangs are rare, so the exit carries what would explain one: the producer's sender task
and what it waits for, the batches it holds, the metadata update, every connection, and
where each task of both event loops (Faust runs the consumer on a thread of its own) and
each thread is waiting. It found the cause of the hang across a broker restart
(docs/adr/0012-aiokafka-on-uvloop.md).

Everything here reads private attributes of aiokafka 0.14 and faust-streaming 0.15,
defensively: a missing attribute gives a missing entry, never an error on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from typing import Any

STACK_FRAMES = 4  # innermost frames shown per task or thread


def client_state(app: Any) -> dict[str, Any]:
    """The producer's and the consumer's state, and where every task and thread waits."""
    state: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        producer = getattr(app.producer, "_producer", None)
        if producer is not None:
            state["producer"] = _producer(producer)
    thread = None
    with contextlib.suppress(Exception):
        thread = getattr(app.consumer, "_thread", None)
        consumer = getattr(thread, "_consumer", None)
        if consumer is not None:
            state["consumer"] = _consumer(consumer)
    tasks: dict[str, list[str]] = {}
    with contextlib.suppress(RuntimeError):
        tasks["main loop"] = _tasks(asyncio.get_running_loop())
    thread_loop = getattr(thread, "thread_loop", None)
    if thread_loop is not None:
        tasks["consumer thread loop"] = _tasks(thread_loop)
    state["tasks"] = tasks
    state["threads"] = _threads()
    return state


def _producer(producer: Any) -> dict[str, Any]:
    sender = getattr(producer, "_sender", None)
    accumulator = getattr(producer, "_message_accumulator", None)
    batches = getattr(accumulator, "_batches", {}) or {}
    return {
        "sender_task": _task_outcome(getattr(sender, "_sender_task", None)),
        "in_flight_nodes": sorted(str(n) for n in getattr(sender, "_in_flight", ()) or ()),
        "muted_partitions": sorted(str(tp) for tp in getattr(sender, "_muted_partitions", ())
                                   or ()),
        "pending_batches": {str(tp): len(queue) for tp, queue in batches.items() if queue},
        "client": _client(getattr(producer, "client", None)),
    }


def _consumer(consumer: Any) -> dict[str, Any]:
    coordinator = getattr(consumer, "_coordinator", None)
    fetcher = getattr(consumer, "_fetcher", None)
    return {
        "coordinator_id": getattr(coordinator, "coordinator_id", None),
        "generation": getattr(coordinator, "generation", None),
        "coordination_task": _task_outcome(getattr(coordinator, "_coordination_task", None)),
        "fetch_task": _task_outcome(getattr(fetcher, "_fetch_task", None)),
        "fetched_partitions": sorted(str(tp) for tp in getattr(fetcher, "_records", {}) or {}),
        "client": _client(getattr(consumer, "_client", None)),
    }


def _client(client: Any) -> dict[str, Any]:
    if client is None:
        return {}
    update = getattr(client, "_md_update_fut", None)
    conns = getattr(client, "_conns", {}) or {}
    return {
        "metadata_sync_task": _task_outcome(getattr(client, "_sync_task", None)),
        "metadata_update_waiting": update is not None and not update.done(),
        "connections": {f"{key[0]}/{getattr(key[1], 'name', key[1])}"
                        if isinstance(key, tuple) else str(key): _connected(conn)
                        for key, conn in conns.items()},
    }


def _connected(conn: Any) -> bool | None:
    try:
        return bool(conn.connected())
    except Exception:
        return None


def _task_outcome(task: Any) -> str | None:
    if task is None:
        return None
    if not task.done():
        return "running"
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return f"failed: {error!r}" if error is not None else "finished"


def _tasks(loop: asyncio.AbstractEventLoop) -> list[str]:
    """One line per task: its coroutine and where it waits (innermost frame last)."""
    for _ in range(3):  # another thread's loop may add a task meanwhile
        try:
            tasks = list(asyncio.all_tasks(loop))
            break
        except RuntimeError:
            continue
    else:
        return ["(the loop's tasks changed while being listed)"]
    lines = []
    for task in tasks:
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", repr(coro))
        lines.append(f"{name}: {' > '.join(_awaiting(coro)[-STACK_FRAMES:])}")
    return sorted(lines)


def _awaiting(coro: Any) -> list[str]:
    """The chain of coroutines ``coro`` awaits, outermost first: where it really waits
    (a task's own stack shows only its outermost frame)."""
    chain: list[str] = []
    while coro is not None and len(chain) < 50:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_name}@{_short(frame.f_code.co_filename)}:"
                         f"{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain


def _threads() -> dict[str, str]:
    names = {t.ident: t.name for t in threading.enumerate()}
    out = {}
    for ident, frame in sys._current_frames().items():
        frames: list[str] = []
        f: Any = frame
        while f is not None and len(frames) < STACK_FRAMES:
            frames.append(f"{f.f_code.co_name}@{_short(f.f_code.co_filename)}:{f.f_lineno}")
            f = f.f_back
        out[names.get(ident, str(ident))] = " < ".join(frames)
    return out


def _short(path: str) -> str:
    """The path from the package on: site-packages/aiokafka/conn.py -> aiokafka/conn.py."""
    for marker in ("site-packages/", "/lib/python"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] if "/" in path else path
