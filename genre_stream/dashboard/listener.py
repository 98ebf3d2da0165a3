"""The dashboard's listening sockets: accept() done here, so that what does not fit is refused cheaply.

asyncio's own accept loop (``loop.create_server``, which aiohttp's sites use) has two faults under
a flood of clients: it admits every connection until the process runs out of file descriptors,
and then, on EMFILE, it logs a traceback for every queued connection and schedules as many
retries (CPython 3.11: 31,000 tracebacks in 15 s, the daemon's other parts starved of
descriptors). This listener counts the open connections and answers the ones beyond the cap
with a short 503 before closing them, and on EMFILE it stops accepting for a second and says so
once per minute (``RateLimitedLog``) instead of once per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from ..common.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

ACCEPT_PAUSE_SECONDS = 1.0  # after EMFILE: descriptors come back as connections close
REFUSAL_LINGER_SECONDS = 2.0  # a refused client gets this long to send its request (then we close)
REFUSAL_QUIET_SECONDS = 0.25  # ...or until it has sent nothing more for this long
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
MAX_REFUSING = 32  # refused connections being answered at once; beyond, accepting waits (the backlog holds them)
REFUSAL_BODY = b"dashboard busy: too many open connections; close a page or try again later\n"
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Retry-After: 10\r\nConnection: close\r\nContent-Length: " + str(len(REFUSAL_BODY)).encode()
           + b"\r\nX-Content-Type-Options: nosniff\r\n\r\n" + REFUSAL_BODY)


class _Refusal(asyncio.Protocol):
    """Writes the 503 and shuts down its side, reads what the client sends until its request head is in (or it
    goes quiet), then closes: closing with unread data would send a reset, which can destroy the 503 in the
    client's buffer before it is read."""

    def __init__(self, loop: asyncio.AbstractEventLoop, done: Callable[[_Refusal], None]) -> None:
        self._loop = loop
        self._done = done
        self._tail = b""
        self._seen = 0
        self._timer: asyncio.TimerHandle | None = None
        self._quiet: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(REFUSAL)
        transport.write_eof()
        self._timer = self._loop.call_later(REFUSAL_LINGER_SECONDS, transport.abort)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self._seen += len(data)
        window = self._tail + data
        self._tail = window[-3:]
        if self._quiet is not None:
            self._quiet.cancel()
        if b"\r\n\r\n" in window or b"\n\n" in window or self._seen > 65536:  # the request's head is read
            self.transport.close()
        else:  # half a request (a client that holds its connection open): close once it stops sending
            self._quiet = self._loop.call_later(REFUSAL_QUIET_SECONDS, self.transport.close)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._timer, self._quiet):
            if timer is not None:
                timer.cancel()
        self._done(self)


@dataclass
class GuardedListener:
    """Listens on ``host:port`` and hands each accepted socket to ``factory`` (aiohttp's server) while
    ``open_connections() < limit``; beyond it answers 503 and closes. ``on_refused`` is told each refusal."""

    host: str
    port: int
    factory: Callable[[], asyncio.BaseProtocol]
    open_connections: Callable[[], int]
    limit: int
    on_refused: Callable[[], None] = lambda: None
    backlog: int = 128
    sockets: list[socket.socket] = field(default_factory=list, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _pending: set[asyncio.Task[None]] = field(default_factory=set, init=False)  # accepted, not yet aiohttp's
    _answering: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _refusing: set[_Refusal] = field(default_factory=set, init=False)
    _paused: dict[int, asyncio.TimerHandle] = field(default_factory=dict, init=False)  # EMFILE, per socket
    _throttled: bool = field(default=False, init=False)  # refusals at MAX_REFUSING
    _full: RateLimitedLog = field(init=False)
    _starved: RateLimitedLog = field(init=False)

    def __post_init__(self) -> None:
        self._full = RateLimitedLog(log, "dashboard: refused {count:,} more connections (all in use) "
                                         "in the last {seconds:.0f} s")
        self._starved = RateLimitedLog(log, "dashboard: accept() failed {count:,} more times in the last "
                                            "{seconds:.0f} s", level=logging.ERROR)

    @property
    def limiters(self) -> tuple[RateLimitedLog, ...]:
        return self._full, self._starved

    @property
    def bound_port(self) -> int:
        return self.sockets[0].getsockname()[1] if self.sockets else self.port

    async def start(self) -> None:
        """Bind every address ``host`` resolves to (as asyncio's create_server does) and start accepting."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        port = self.port
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
                port = port or sock.getsockname()[1]  # port 0: the other addresses get the same port
                sock.listen(self.backlog)
                sock.setblocking(False)
        except OSError:
            self.close()
            raise
        for sock in self.sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop listening; connections being refused are cut (those being served are aiohttp's to close)."""
        for handle in self._paused.values():
            handle.cancel()
        self._paused.clear()
        for sock in self.sockets:
            if self._loop is not None and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets.clear()
        for refusal in list(self._refusing):
            if refusal.transport is not None:
                refusal.transport.abort()
        for task in [*self._pending, *self._answering]:
            task.cancel()

    # -- accepting -------------------------------------------------------------------------
    def _accept(self, sock: socket.socket) -> None:
        for _ in range(self.backlog):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE and its kind; anything else would fail again at once too
                self._pause(sock, exc)
                return
            conn.setblocking(False)
            if self.open_connections() + len(self._pending) < self.limit:
                self._spawn(self._serve(conn), self._pending)
                continue
            self._refuse(conn)
            if len(self._refusing) >= MAX_REFUSING:  # a burst: the rest wait in the backlog, not dropped
                self._throttle()
                return

    def _throttle(self) -> None:
        """Stop accepting until a refusal ends (each ends within REFUSAL_LINGER_SECONDS)."""
        assert self._loop is not None
        self._throttled = True
        for sock in self.sockets:
            if sock.fileno() not in self._paused:
                self._loop.remove_reader(sock.fileno())

    def _refusal_done(self, refusal: _Refusal) -> None:
        self._refusing.discard(refusal)
        if self._throttled and self._loop is not None:
            self._throttled = False
            for sock in self.sockets:
                if sock.fileno() not in self._paused:
                    self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _pause(self, sock: socket.socket, exc: OSError) -> None:
        """Out of descriptors: stop watching this socket for a while (Linux keeps reporting it readable)."""
        assert self._loop is not None
        fd = sock.fileno()
        self._loop.remove_reader(fd)
        hint = (" The daemon's file descriptor limit is too low for what is connected (LimitNOFILE=, "
                "http.max_clients)" if exc.errno in OUT_OF_RESOURCES else "")
        self._starved.hit("dashboard: cannot accept connections: %s (%d open); pausing %.0f s.%s",
                          exc.strerror or exc, self.open_connections(), ACCEPT_PAUSE_SECONDS, hint)
        if fd not in self._paused:
            self._paused[fd] = self._loop.call_later(ACCEPT_PAUSE_SECONDS, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        assert self._loop is not None
        self._paused.pop(sock.fileno(), None)
        if sock in self.sockets and not self._throttled:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _spawn(self, coro: Coroutine[None, None, None], tasks: set[asyncio.Task[None]]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        tasks.add(task)  # a reference, or the task could be collected mid-way
        task.add_done_callback(tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(self.factory, conn)
        except (OSError, asyncio.CancelledError):
            conn.close()

    def _refuse(self, conn: socket.socket) -> None:
        self.on_refused()
        self._full.hit("dashboard: %d connections open (the cap, from http.max_clients and the file descriptor "
                       "limit); answering 503 to more", self.limit)
        assert self._loop is not None
        loop = self._loop
        refusal = _Refusal(loop, self._refusal_done)
        self._refusing.add(refusal)

        async def answer() -> None:
            try:
                await loop.connect_accepted_socket(lambda: refusal, conn)
            except (OSError, asyncio.CancelledError):
                conn.close()
                self._refusal_done(refusal)

        self._spawn(answer(), self._answering)
