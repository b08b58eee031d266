"""Hostile connections (issue 11 item 2): handshake/header and idle timeouts, global and
per-address caps with a 503 + Retry-After, the open-file limit, rate-limited log lines."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile_serve import ServeProc

from elemental_operator.server.logfilter import RateLimitFilter

# Every test here runs `elemental-operator serve` as a process (or mounts a tmpfs).
pytestmark = pytest.mark.integration


def _closed_by_peer(sock: Any, timeout: float) -> bool:
    """True once the server closed ``sock`` (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        return bool(sock.recv(1) == b"")
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    except OSError as exc:  # an SSL socket reports a torn-down connection as SSLError/EOF
        return "EOF" in str(exc) or "reset" in str(exc).lower()


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[ServeProc] = []

    def start(*args: str, **kw: Any) -> ServeProc:
        proc = ServeProc(tmp_path / f"state{len(started)}", *args, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def test_half_open_sockets_are_closed_after_the_header_timeout(serve_factory: Any) -> None:
    op = serve_factory("--header-timeout", "1")
    silent = [op.raw("127.0.0.2") for _ in range(20)]  # never start TLS
    handshaken = op.raw("127.0.0.2", handshake=True)
    handshaken.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    start = time.monotonic()
    assert all(_closed_by_peer(s, 5) for s in silent)
    assert _closed_by_peer(handshaken, 5)
    assert time.monotonic() - start < 6
    assert op.get("/healthz")[0] == 200


def test_idle_keepalive_connection_is_closed(serve_factory: Any) -> None:
    op = serve_factory("--idle-timeout", "1", tls=False)
    sock = op.raw()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    assert b"200" in sock.recv(4096).split(b"\r\n", 1)[0]
    assert _closed_by_peer(sock, 5)


def _wait_healthy(op: ServeProc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if op.get("/healthz")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "/healthz did not answer 200 in time"


def _status_line(sock: Any) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_per_address_cap_answers_503_with_retry_after(serve_factory: Any) -> None:
    op = serve_factory("--max-connections-per-address", "8", "--header-timeout", "30", tls=False)
    hogs = [op.raw("127.0.0.2") for _ in range(8)]
    # Over the cap, within the overflow lane: a clean 503 + Retry-After.
    reply = _status_line(op.raw("127.0.0.2"))
    assert reply.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in reply
    # Far over it: still the 503, written at accept, and the socket closed.
    extra = [op.raw("127.0.0.2") for _ in range(30)]
    assert any(_status_line(s).startswith(b"HTTP/1.1 503") for s in extra[-5:])
    # Other addresses are served.
    assert _status_line(op.raw("127.0.0.1")).startswith(b"HTTP/1.1 200")
    for s in hogs + extra:
        s.close()


def _watch(op: ServeProc, source: str) -> Any:
    """A connection busy with a request that never ends (an admin watch)."""
    sock = op.raw(source, handshake=True)
    sock.sendall(
        b"GET /elemental/admin/v1/machineinventories?watch=1 HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + op.admin_token().encode() + b"\r\n\r\n"
    )
    sock.settimeout(10)
    assert sock.recv(64).startswith(b"HTTP/1.1 200")
    return sock


def test_global_cap_refuses_cleanly_over_tls(serve_factory: Any) -> None:
    op = serve_factory("--max-connections", "20", "--header-timeout", "30")
    busy = [_watch(op, f"127.0.0.{2 + i // 5}") for i in range(20)]
    code, headers, _ = op.request("GET", "/healthz")
    assert code == 503 and headers.get("Retry-After") == "5"
    for s in busy:
        s.close()
    deadline = time.monotonic() + 10
    while op.request("GET", "/healthz")[0] != 200:
        assert time.monotonic() < deadline, "the cap was not released when the clients closed"


def test_half_open_sockets_at_the_global_cap_make_room(serve_factory: Any) -> None:
    op = serve_factory("--max-connections", "20", "--header-timeout", "60")
    hogs = [op.raw(f"127.0.0.{2 + i // 5}") for i in range(40)]
    # Once they are older than guard.EVICT_AFTER, the oldest silent connections are evicted for
    # clients that talk: no 503, no reset, for one request after another.
    _wait_healthy(op, 10)
    for _ in range(10):
        assert op.get("/healthz")[0] == 200
    assert sum(_closed_by_peer(s, 0.05) for s in hogs) >= 10
    for s in hogs:
        s.close()


def test_fd_limit_raised_and_never_exhausted(serve_factory: Any) -> None:
    # A low soft limit with room above: the operator raises it at start.
    raised = serve_factory(tls=False, nofile=(256, 4096))
    limits = Path(f"/proc/{raised.proc.pid}/limits").read_text()
    [line] = [ln for ln in limits.splitlines() if ln.startswith("Max open files")]
    assert line.split()[3] == "4096"

    # No room above 256: the caps shrink to fit; 400 attackers never exhaust the descriptors.
    op = serve_factory("--header-timeout", "30", nofile=(256, 256))
    hogs: list[socket.socket] = []
    for i in range(400):
        try:
            hogs.append(op.raw(f"127.0.1.{1 + i // 40}"))
        except OSError:
            pass
    assert op.open_fds() < 240
    _wait_healthy(op, 10)
    assert op.open_fds() < 240
    for s in hogs:
        s.close()
    log = op.log_path.read_bytes()
    assert b"out of system resource" not in log
    assert len(log) < 64 * 1024, len(log)


def test_silent_tls_sockets_cost_little_memory(serve_factory: Any) -> None:
    # asyncio gave each accepted TLS connection a 256 KiB buffer: 300 silent sockets = 75 MiB.
    op = serve_factory("--header-timeout", "60")
    before = op.rss_kib()
    hogs = [op.raw(f"127.0.2.{1 + i // 50}") for i in range(300)]
    deadline = time.monotonic() + 10
    while op.open_fds() < 300:
        assert time.monotonic() < deadline, "the operator did not accept the sockets"
    assert op.rss_kib() - before < 30 * 1024
    for s in hogs:
        s.close()


def test_repeated_log_lines_are_rate_limited_with_a_count() -> None:
    now = [0.0]
    filt = RateLimitFilter(burst=3, interval=10, clock=lambda: now[0])
    logger = logging.getLogger("test.hostile.ratelimit")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    handler.addFilter(filt)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(1000):
            logger.warning("refusing a connection from %s", f"10.0.0.{i % 250}")
        assert len(records) == 4 and "suppressed" in records[-1]
        logger.warning("another template")  # templates are limited independently
        now[0] = 11.0
        logger.warning("refusing a connection from %s", "10.0.0.1")
        assert "996 similar messages suppressed" in records[-1]
        assert len(records) == 6
    finally:
        logger.removeHandler(handler)
