"""Fixtures for registration tests: one real swtpm per simulated machine.

Use with ``from helpers_registration import swtpm, swtpm_factory  # noqa: F401``.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from elemental_operator.api import API_VERSION
from elemental_operator.context import OperatorContext
from elemental_operator.store.base import Resource
from elemental_operator.store.sql import open_store
from elemental_register.tpm import Swtpm


def _require_swtpm() -> None:
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm is not installed")


@pytest.fixture
def swtpm_factory() -> Iterator[Callable[[], Swtpm]]:
    """Start as many swtpm processes (machines) as a test needs; all are stopped afterwards."""
    _require_swtpm()
    started: list[Swtpm] = []

    def start() -> Swtpm:
        sw = Swtpm().start()
        started.append(sw)
        return sw

    try:
        yield start
    finally:
        for sw in started:
            sw.stop()


@pytest.fixture
def swtpm(swtpm_factory: Callable[[], Swtpm]) -> Swtpm:
    return swtpm_factory()


# ---------------------------------------------------------------------------------------------
# operator in process: the registration endpoint over aiohttp with the real SQLite store


class InProcessOperator:
    """The real operator HTTP app (elemental_operator.server.app) on 127.0.0.1 in a background
    thread, over the real SQLite store; HTTPS with a throwaway CA unless ``tls=False``."""

    def __init__(self, store: Any, tmp: Path, tls: bool = True, tpm_ca_pem: str = "") -> None:
        self.store = store
        self.tmp = tmp
        self.tls = tls
        self.ca_pem = b""
        self.ctx = OperatorContext(store=store, public_url="", secret_key=b"test-key", tpm_ca_pem=tpm_ca_pem)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: Any = None
        self.port = 0

    def start(self) -> InProcessOperator:
        from aiohttp import web

        from elemental_operator.server.app import make_app
        from elemental_operator.server.tls import make_ca, make_server_cert

        ssl_ctx = None
        if self.tls:
            self.ca_pem, ca_key = make_ca("test operator CA")
            cert, key = make_server_cert(self.ca_pem, ca_key, ["127.0.0.1", "localhost"])
            (self.tmp / "tls.crt").write_bytes(cert)
            (self.tmp / "tls.key").write_bytes(key)
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(self.tmp / "tls.crt", self.tmp / "tls.key")
            self.ctx.ca_cert_pem = self.ca_pem.decode()

        async def setup() -> None:
            app = make_app(self.ctx, "admin-token", self.tmp)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self.thread.start()
        asyncio.run_coroutine_threadsafe(setup(), self.loop).result(10)
        self.ctx.public_url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def add_registration(
        self, name: str = "reg", namespace: str = "fleet", ready: bool = True, **spec: Any
    ) -> Resource:
        token = uuid.uuid4().hex
        obj = self.store.create(
            {
                "apiVersion": API_VERSION,
                "kind": "MachineRegistration",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            }
        )
        obj["status"] = {
            "registrationToken": token,
            "registrationURL": f"{self.ctx.public_url}/elemental/registration/{token}",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "SuccessfullyCreated",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "message": "",
                }
            ],
        }
        return self.store.update_status(obj)  # type: ignore[no-any-return]


@pytest.fixture
def operator(tmp_path: Path) -> Iterator[InProcessOperator]:
    store = open_store(f"sqlite:///{tmp_path / 'operator.db'}", poll_interval=0.02)
    op = InProcessOperator(store, tmp_path).start()
    try:
        yield op
    finally:
        op.stop()
        store.close()
