"""Connection guard: caps on open connections (global and per source address), a deadline for
the TLS handshake and the first request's headers, and the file-descriptor budget, enforced where
connections are accepted so that no client can exhaust the operator's descriptors.

Issue 11: 500 half-open sockets stayed open for an hour (aiohttp has no header timeout and a
3630 s keep-alive), and under a 256-fd limit ~242 of them stopped every legit registration.

Each accepted connection is in one of three states:

* admitted: under both caps;
* refused politely: over a cap but within a small overflow lane; its first request is answered
  ``503`` with ``Retry-After`` (TLS needs the handshake before any HTTP can be spoken);
* closed at once: beyond the lane (a plain-HTTP listener writes the 503 first).

A connection that has not completed its first request's headers ``header_timeout`` seconds
after accept is shut down; idle keep-alive connections are closed by aiohttp after
``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_runner import BaseRunner, BaseSite

log = logging.getLogger("elemental_operator.server.guard")

# Descriptors kept out of the connection budget: database, WAL, logs, seed builds, TLS files.
FD_RESERVE = 128
FD_TARGET = 65536
# Age after which a connection that has sent no request may be evicted to make room.
EVICT_AFTER = 0.5
TLS_READ_BUFFER = 32 * 1024
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: %d\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 25\r\nConnection: close\r\n\r\ntoo many open connections"
)


@dataclass
class Limits:
    max_connections: int = 1024
    max_per_address: int = 64
    # Over-cap connections still answered with a 503 (the rest are closed at accept).
    overflow: int = 64
    handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    idle_timeout: float = 15.0
    retry_after: int = 5


def shrink_tls_buffers(size: int = TLS_READ_BUFFER) -> None:
    """asyncio gives every TLS connection a 256 KiB read buffer from the moment it is accepted
    (``SSLProtocol.max_size``): 400 silent sockets held 100 MiB. A TLS record carries at most
    16 KiB, so a 32 KiB buffer costs no extra system calls worth measuring."""
    import asyncio.sslproto

    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > size:
        asyncio.sslproto.SSLProtocol.max_size = size


def raise_fd_limit(target: int = FD_TARGET) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, want, exc)
    return int(soft)


def fit_to_fd_limit(limits: Limits, soft_fd_limit: int) -> Limits:
    """Shrink the caps so that connections (admitted + overflow) stay well under the fd limit."""
    budget = max(16, (soft_fd_limit - FD_RESERVE) * 3 // 4)
    if limits.max_connections + limits.overflow > budget:
        limits.overflow = max(4, min(limits.overflow, budget // 8))
        limits.max_connections = max(8, budget - limits.overflow)
        log.info(
            "open-file limit %d: at most %d connections (+%d refused with 503)",
            soft_fd_limit,
            limits.max_connections,
            limits.overflow,
        )
    limits.max_per_address = min(limits.max_per_address, limits.max_connections)
    return limits


@dataclass
class _Conn:
    sock: socket.socket
    address: str
    refused: bool
    accepted: float
    requests: int = 0
    closing: bool = False


@dataclass
class Guard:
    """Book-keeping shared by the listening socket (accept) and the middleware (requests)."""

    limits: Limits = field(default_factory=Limits)
    tls: bool = False
    # fd -> connection, in accept order (the oldest first: eviction picks from the front).
    conns: dict[int, _Conn] = field(default_factory=dict)
    per_address: Counter[str] = field(default_factory=Counter)
    refused_total: int = 0
    evicted_total: int = 0
    closing: int = 0

    @property
    def open(self) -> int:
        return len(self.conns)

    def _evict_one(self, now: float) -> bool:
        """At the global cap, make room by shutting the oldest connection that has not sent a
        request after ``EVICT_AFTER`` s: half-open sockets cannot hold the cap against clients
        that do talk (a legit machine's request follows its handshake within milliseconds)."""
        for conn in self.conns.values():
            if now - conn.accepted < EVICT_AFTER:
                return False  # the rest are younger still
            if conn.requests == 0 and not conn.closing:
                self._shutdown(conn)
                self.evicted_total += 1
                return True
        return False

    def _shutdown(self, conn: _Conn) -> None:
        conn.closing = True
        self.closing += 1
        try:
            # shutdown, not close: asyncio owns the socket, sees EOF and closes it itself.
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def admit(self, sock: socket.socket, address: str) -> bool:
        """Decide about a just-accepted connection; False = already closed."""
        lim = self.limits
        now = time.monotonic()
        live = len(self.conns) - self.closing
        if live >= lim.max_connections and self._evict_one(now):
            live -= 1
        mine = self.per_address[address]
        over = live >= lim.max_connections or mine >= lim.max_per_address
        # Descriptors in use include connections shut down but not closed yet.
        if len(self.conns) >= lim.max_connections + lim.overflow or mine >= lim.max_per_address + max(
            4, lim.overflow // 4
        ):
            self.refused_total += 1
            log.warning("refusing a connection from %s: %d open (%d from it)", address, live, mine)
            if not self.tls:
                try:
                    sock.send(_REFUSAL % lim.retry_after)
                except OSError:
                    pass
            sock.close()
            return False
        if over:
            self.refused_total += 1
            log.warning("answering 503 to %s: %d open (%d from it)", address, live, mine)
        fd = sock.fileno()
        self.conns[fd] = _Conn(sock, address, refused=over, accepted=now)
        self.per_address[address] += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return True
        loop.call_later(lim.header_timeout, self._expire, fd, self.conns[fd])
        return True

    def release(self, fd: int) -> None:
        conn = self.conns.pop(fd, None)
        if conn is not None:
            if conn.closing:
                self.closing -= 1
            self.per_address[conn.address] -= 1
            if self.per_address[conn.address] <= 0:
                del self.per_address[conn.address]

    def _expire(self, fd: int, conn: _Conn) -> None:
        if self.conns.get(fd) is conn and conn.requests == 0 and not conn.closing:
            log.warning(
                "closing a connection from %s: no request within %gs",
                conn.address,
                self.limits.header_timeout,
            )
            self._shutdown(conn)

    def started(self, request: web.Request) -> _Conn | None:
        transport = request.transport
        tsock = transport.get_extra_info("socket") if transport is not None else None
        conn = self.conns.get(tsock.fileno()) if tsock is not None else None
        if conn is not None:
            conn.requests += 1
        return conn

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def guard(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            conn = self.started(request)
            if conn is not None and conn.refused:
                return web.Response(
                    status=503,
                    text="too many open connections\n",
                    headers={"Retry-After": str(self.limits.retry_after), "Connection": "close"},
                )
            return await handler(request)

        return guard


class _TrackedSocket(socket.socket):
    """An accepted connection that tells the guard when asyncio closes it."""

    guard: Guard | None = None

    def close(self) -> None:
        guard, self.guard = self.guard, None
        if guard is not None:
            guard.release(self.fileno())
        super().close()


class GuardedSocket(socket.socket):
    """Listening socket whose ``accept`` (called by asyncio's accept loop) applies the guard."""

    guard: Guard

    def accept(self) -> tuple[socket.socket, Any]:
        while True:
            fd, addr = self._accept()  # type: ignore[attr-defined]
            conn = _TrackedSocket(self.family, self.type, self.proto, fileno=fd)
            if self.guard.admit(conn, str(addr[0])):
                conn.guard = self.guard
                return conn, addr
            # refused and closed: take the next pending one (BlockingIOError ends the loop)


def listen(host: str, port: int, guard: Guard, backlog: int = 1024) -> GuardedSocket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    plain = socket.socket(family, socket.SOCK_STREAM)
    plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    plain.bind((host, port))
    plain.listen(backlog)
    plain.setblocking(False)
    sock = GuardedSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
    sock.guard = guard
    return sock


class GuardedSite(BaseSite):
    """aiohttp site on a ``GuardedSocket`` with a TLS handshake timeout (SockSite has none)."""

    def __init__(self, runner: BaseRunner, sock: GuardedSocket, *, ssl_context: Any = None) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=1024)
        self._sock = sock

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"{'https' if self._ssl_context else 'http'}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        kwargs: dict[str, Any] = {}
        if self._ssl_context is not None:
            kwargs["ssl_handshake_timeout"] = self._sock.guard.limits.handshake_timeout
        self._server = await asyncio.get_running_loop().create_server(
            server, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog, **kwargs
        )
