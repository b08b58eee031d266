"""Fixtures for operator tests: stores over SQLite and a real PostgreSQL started on loopback.

Import from a test module with ``from tests.operator_fixtures import *  # noqa: F403`` or
register in conftest via ``pytest_plugins = ["tests.operator_fixtures"]``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from waiting import wait_until

from elemental_operator.controllers import Manager
from elemental_operator.store.sql import SqlStore, open_store

PG_BINDIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin")


def _pg_bin(name: str) -> str | None:
    for d in PG_BINDIRS:
        p = Path(d) / name
        if p.exists():
            return str(p)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A throwaway cluster in a temp dir; as root the server runs as user ``postgres`` (or nobody)."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found")
        self.pg_ctl = pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="elemental-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            for candidate in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(candidate)
                except KeyError:
                    continue
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
                self.user = candidate
                break
            else:
                pytest.skip("running as root and no 'postgres'/'nobody' user to run PostgreSQL")
        self._run([initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
            "-c fsync=off -c max_connections=200"
        )
        self._run([pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start"])
        self.base_url = f"postgresql://postgres@127.0.0.1:{self.port}"

    def _run(self, argv: list[str]) -> None:
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        res = subprocess.run(argv, capture_output=True, text=True, cwd=self.dir)
        if res.returncode != 0:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            raise RuntimeError(f"{argv} failed: {res.stdout}{res.stderr}{log}")

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.base_url + "/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{self.base_url}/{name}"

    def stop(self) -> None:
        try:
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    s = open_store(store_url, poll_interval=0.02)
    try:
        yield s
    finally:
        s.close()


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> None:
    """``predicate()`` holds within ``timeout`` seconds (tests/waiting.py's wait_until)."""
    wait_until(predicate, timeout, interval=interval)


def run_until(mgr: Manager, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Drive the controllers synchronously (no thread): step until ``predicate()`` holds.

    The first step of a new Manager enqueues every object (each kind's resync is due at once).
    """

    def stepped() -> bool:
        mgr.step()
        return predicate()

    wait_until(stepped, timeout, interval=0.02, what="the controllers to converge")


class RunningOperator:
    """The admin/registration/agent server on a loopback port plus a controller thread."""

    def __init__(self, store: SqlStore, state_dir: Path, controllers: bool = True) -> None:
        import asyncio
        import threading

        from aiohttp import web

        from elemental_operator.context import OperatorContext
        from elemental_operator.controllers import all_controllers
        from elemental_operator.server.app import make_app

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = "admin-" + uuid.uuid4().hex
        self.state_dir = state_dir
        self.ctx = OperatorContext(store=store, public_url=self.url, secret_key=b"s" * 32)
        cmd = "sh -c 'cp {registration} {output}'"
        self.manager = Manager(self.ctx, all_controllers(self.ctx, state_dir, seedimage_command=cmd))
        if controllers:
            self.manager.start(leader_election=False)
        self.loop = asyncio.new_event_loop()
        app = make_app(self.ctx, self.token, state_dir)
        self.runner = web.AppRunner(app)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", self.port)
            self.loop.run_until_complete(site.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.manager.stop()


@pytest.fixture
def operator(store: SqlStore, tmp_path: Path) -> Iterator[RunningOperator]:
    op = RunningOperator(store, tmp_path / "state")
    try:
        yield op
    finally:
        op.stop()
