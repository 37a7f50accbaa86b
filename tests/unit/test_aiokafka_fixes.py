"""aiokafka on uvloop: a write to a connection whose transport is closed (the broker
restarted) must surface as KafkaConnectionError, which aiokafka retries, not as the
RuntimeError uvloop raises, which killed the client's metadata task and hung every
later commit (runtime.aiokafka_fixes, docs/adr/0012)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

from runtime import aiokafka_fixes


async def send_on_a_closed_transport() -> tuple[BaseException, bool]:
    """A connection whose uvloop transport is already closed while aiokafka still holds
    its writer (a broker restart, before the reader task notices), then a request sent on
    it. The transport is a real uvloop one, closed for real; aiokafka's connection is
    real, given that writer as its reader task would not yet have dropped it."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.close()
        # uvloop closes the handle on a later turn, then tells the protocol: EOF
        assert await reader.read() == b""
        conn = AIOKafkaConnection("127.0.0.1", port)
        conn._reader, conn._writer = reader, writer
        conn._read_task = asyncio.create_task(asyncio.sleep(3600))  # the one not yet woken
        conn._versions = {MetadataRequest.API_KEY: (0, 5)}  # as the handshake set them
        try:
            await conn.send(MetadataRequest([]))
        except BaseException as err:  # noqa: BLE001 - which one is the point
            return err, conn.connected()
        raise AssertionError("the send did not fail")
    finally:
        server.close()


def test_unpatched_aiokafka_on_uvloop_raises_runtime_error(monkeypatch):
    """What happened before the fix: the uvloop error escapes aiokafka as is."""
    for name in ("send", "_send_sasl_token"):
        monkeypatch.setattr(AIOKafkaConnection, name,
                            getattr(AIOKafkaConnection, name).__wrapped__
                            if hasattr(getattr(AIOKafkaConnection, name), "__wrapped__")
                            else getattr(AIOKafkaConnection, name))
    error, _ = uvloop.run(send_on_a_closed_transport())
    assert isinstance(error, RuntimeError) and "handler is closed" in str(error)


def test_patched_it_is_a_broken_connection_aiokafka_retries():
    aiokafka_fixes.catch_closed_transport()
    assert aiokafka_fixes.catch_closed_transport() is False  # once per process
    error, connected = uvloop.run(send_on_a_closed_transport())
    assert isinstance(error, KafkaConnectionError), repr(error)
    assert "broken" in str(error) and not connected  # closed: the client reconnects


def test_other_runtime_errors_still_raise():
    aiokafka_fixes.catch_closed_transport()

    class Conn:
        host, port = "h", 1
        _writer = None

        def close(self, reason=None):
            raise AssertionError("not a closed transport: nothing to close")

    def send(self, request):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        aiokafka_fixes._closed_is_broken(send)(Conn(), None)
