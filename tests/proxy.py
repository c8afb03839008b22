"""A TCP proxy in front of PostgreSQL that a test can cut and restore, to stage an outage.

`cut()` closes the listening socket (new connections are refused) and resets every open
connection, as a database crash or restart would; `restore()` listens again on the same
port. `stall()` holds every byte back without closing anything, as a hung database
would; `flow()` lets them through again. The proxy forwards to the host and port of a
database URL, or to the unix socket the URL names with `?host=/dir` (as the embedded
PostgreSQL does).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy.engine import URL, make_url

from conversations.database import sqlalchemy_url

_CHUNK = 65536


@dataclass(frozen=True)
class Upstream:
    """Where the proxy forwards to: a TCP address, or a unix socket path."""

    family: socket.AddressFamily
    address: str | tuple[str, int]

    @classmethod
    def of(cls, database_url: str) -> Upstream:
        url = make_url(sqlalchemy_url(database_url))
        port = url.port or int(_query(url, "port") or 5432)
        host = url.host or _query(url, "host") or "/var/run/postgresql"
        if host.startswith("/"):
            return cls(socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
        return cls(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))

    def connect(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        return sock


def _query(url: URL, name: str) -> str | None:
    value = url.query.get(name)
    if isinstance(value, tuple):
        value = value[0] if value else None
    return value


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's socket and ours to the database."""

    client: socket.socket
    server: socket.socket
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def close(self, *, reset: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for sock in (self.client, self.server):
                with contextlib.suppress(OSError):
                    if reset and sock.family != socket.AF_UNIX:
                        # Closing with a zero linger sends RST rather than FIN.
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    # Wakes the pump blocked reading this socket, without sending anything.
                    sock.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
                sock.close()


class Proxy:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.port = 0
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._flowing = threading.Event()
        self._flowing.set()
        self.connections = 0
        """Connections accepted so far (a restore keeps counting)."""

    @classmethod
    def to(cls, database_url: str) -> Proxy:
        return cls(Upstream.of(database_url))

    def url_for(self, database_url: str) -> str:
        """`database_url` (same user, password and database) reaching the database through
        this proxy."""
        url = make_url(sqlalchemy_url(database_url))
        url = url.difference_update_query(["host", "port", "hostaddr"])
        url = url.set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    def start(self) -> None:
        """Listen (again) on the proxy's port: a free one the first time."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        self._spawn(self._accept, listener)

    restore = start

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            links, self._links = self._links, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            listener.close()
        for link in links:
            link.close(reset=True)

    @property
    def open(self) -> int:
        """Connections open through the proxy now."""
        with self._lock:
            return len(self._links)

    def heal(self) -> None:
        """Back to normal, whatever was cut or stalled."""
        self.flow()
        with self._lock:
            listening = self._listener is not None
        if not listening:
            self.start()

    def stall(self) -> None:
        """Stop forwarding bytes, either way, but keep every connection open and accept new
        ones: a database that hangs rather than fails (an overloaded or frozen server, a
        commit waiting for a lost synchronous standby). Nothing is refused or reset."""
        self._flowing.clear()

    def flow(self) -> None:
        """Forward again what a stall held back."""
        self._flowing.set()

    def stop(self) -> None:
        self.cut()
        self.flow()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)

    @contextlib.contextmanager
    def running(self) -> Iterator[Proxy]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = self.upstream.connect()
            except OSError:
                client.close()
                continue
            link = _Link(client, server)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    link.close(reset=True)
                    return
                self._links.add(link)
                self.connections += 1
            self._spawn(self._pump, link, client, server)
            self._spawn(self._pump, link, server, client)

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(_CHUNK):
                self._flowing.wait()
                sink.sendall(chunk)
        except OSError:
            pass
        with self._lock:
            self._links.discard(link)
        link.close()
