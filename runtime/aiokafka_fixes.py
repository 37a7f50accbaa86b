"""A fix to aiokafka for the worker's event loops (uvloop): a write to a connection the
broker closed raises ``RuntimeError``, where aiokafka expects ``OSError``.

The cause of the hang across a broker restart (README, "Known limits"; docs/adr/0012):
``AIOKafkaConnection.send`` writes to its transport and turns only ``OSError`` into
``KafkaConnectionError``. Under uvloop, writing to a TCP transport that is already
closed raises ``RuntimeError("unable to perform operation on <TCPTransport
closed=True ...>; the handler is closed")`` instead (asyncio's own transports log and
drop the write). After a broker restart a connection aiokafka still holds can be in that
state; the error then escapes from the client's metadata task, which dies, so every later
metadata update (the coordinator lookup before an offset commit, the producer's leader
lookup) waits forever. aio-libs/aiokafka issue 1038 reports the same, open in 0.14.0.

:func:`catch_closed_transport` makes ``send`` and the SASL token send close the
connection and raise ``KafkaConnectionError`` for that error too, as they do for
``OSError``, so aiokafka's own retries take over.
"""

from __future__ import annotations

import functools
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.conn import AIOKafkaConnection, CloseReason

_PATCHED = "_payment_monitor_catches_closed_transport"


def catch_closed_transport() -> bool:
    """Patch ``AIOKafkaConnection.send`` and ``_send_sasl_token`` (once per process);
    False when already patched."""
    if getattr(AIOKafkaConnection, _PATCHED, False):
        return False
    for name in ("send", "_send_sasl_token"):
        setattr(AIOKafkaConnection, name, _closed_is_broken(getattr(AIOKafkaConnection, name)))
    setattr(AIOKafkaConnection, _PATCHED, True)
    return True


def _closed_is_broken(method: Any) -> Any:
    @functools.wraps(method)
    def wrapper(self: AIOKafkaConnection, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as err:
            if not _closed_transport(self, err):
                raise
            host, port = self.host, self.port
            self.close(reason=CloseReason.CONNECTION_BROKEN)
            raise kafka_errors.KafkaConnectionError(
                f"Connection at {host}:{port} broken: {err}") from err
    return wrapper


def _closed_transport(conn: AIOKafkaConnection, err: RuntimeError) -> bool:
    """uvloop's error for a closed handle, or a transport that says it is closing."""
    if "handler is closed" in str(err):
        return True
    writer = getattr(conn, "_writer", None)
    transport = getattr(writer, "transport", None)
    return bool(transport is not None and transport.is_closing())
