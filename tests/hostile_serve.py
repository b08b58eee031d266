"""`elemental-operator serve` as a child process for the hostile-client tests and the benchmark:
loopback only, extra flags, an optional open-file limit, helpers for raw sockets."""

from __future__ import annotations

import resource
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProc:
    def __init__(
        self,
        state: Path,
        *extra: str,
        tls: bool = True,
        nofile: tuple[int, int] | None = None,
        controllers: bool = False,
        env: dict[str, str] | None = None,
        wait: bool = True,
        log_dir: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.state = state
        state.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "elemental_operator.cli",
            "serve",
            "--state-dir",
            str(state),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--public-url",
            self.url,
            *(() if tls else ("--insecure-http",)),
            *(() if controllers else ("--no-controllers",)),
            *extra,
        ]
        self.log_path = (log_dir or state.parent) / f"serve-{self.port}.log"
        self.log = self.log_path.open("wb")

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=limit, env=env
        )
        if wait:
            self.wait_up()

    def wait_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {self.log_path.read_text()}")
            try:
                if self.get("/healthz")[0] in (200, 503):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve did not come up: {self.log_path.read_text()}")

    def ssl(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.state / "ca.crt")) if self.tls else None

    def admin_token(self) -> str:
        return (self.state / "admin-token").read_text().strip()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        token: str | None = None,
        timeout: float = 10,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl()) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        code, _, body = self.request("GET", path, token=token)
        return code, body

    def raw(self, source: str = "127.0.0.1", handshake: bool = False) -> Any:
        """A TCP connection from ``source`` (any 127/8 address), TLS-wrapped if ``handshake``."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(source, 0))
        if handshake:
            ctx = self.ssl()
            assert ctx is not None
            return ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        return sock

    def open_fds(self) -> int:
        return len(list(Path(f"/proc/{self.proc.pid}/fd").iterdir()))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self.log.close()
        return rc
