"""A forwarder that a test can cut and restore: a database outage on demand.

It forwards TCP (a server on 127.0.0.1) or a Unix socket (the embedded PostgreSQL
listens only on one); :func:`proxy_database` picks the kind from a database URL.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading

from sqlalchemy.engine import make_url

Address = tuple[str, int] | str  # (host, port) for TCP, a path for a Unix socket


class TcpProxy:
    """Forwards a listening address to ``target``; ``cut`` drops every connection and
    refuses new ones until ``restore``. ``listen`` is a Unix socket path, or None for
    a free TCP port on 127.0.0.1 (``port``)."""

    def __init__(self, target: int | Address, listen: str | None = None) -> None:
        self.target: Address = ("127.0.0.1", target) if isinstance(target, int) else target
        self.listen = listen
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self.port = 0
        self.restore()

    def freeze(self) -> None:
        """Hold every byte from now on without closing anything: a hung connection, the
        kind no error ever reports."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def restore(self) -> None:
        if self.listen is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.listen)
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            self.port = listener.getsockname()[1]
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    close = cut

    def _connect(self) -> socket.socket:
        if isinstance(self.target, str):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            return upstream
        return socket.create_connection(self.target)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self._connect()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def proxy_database(database_url: str) -> tuple[TcpProxy, str]:
    """A proxy in front of the URL's server and the URL that goes through it."""
    url = make_url(database_url)
    socket_dir = url.query.get("host")
    if isinstance(socket_dir, tuple):
        socket_dir = socket_dir[0]
    if socket_dir and socket_dir.startswith("/"):  # libpq: <dir>/.s.PGSQL.<port>
        name = f".s.PGSQL.{url.port or 5432}"
        mine = tempfile.mkdtemp(prefix="pgproxy-")
        proxy = TcpProxy(os.path.join(socket_dir, name), listen=os.path.join(mine, name))
        proxied = url.update_query_dict({"host": mine})
    else:
        proxy = TcpProxy(url.port or 5432)
        proxied = url.set(host="127.0.0.1", port=proxy.port)
    return proxy, proxied.render_as_string(hide_password=False)
