"""Fixtures for registration tests: one real swtpm per simulated machine.

Use with ``from helpers_registration import swtpm, swtpm_factory  # noqa: F401``.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from elemental_operator.api import API_VERSION
from elemental_operator.context import OperatorContext
from elemental_operator.registration import handler
from elemental_operator.store.base import Resource
from elemental_operator.store.sql import open_store
from elemental_register import protocol as P
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


class AiohttpFrameConn:
    """FrameConn over an aiohttp WebSocketResponse (what the server engineer's route does)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def recv(self) -> bytes:
        from aiohttp import WSMsgType

        msg = await self.ws.receive()
        if msg.type == WSMsgType.BINARY:
            return bytes(msg.data)
        if msg.type == WSMsgType.TEXT:
            return msg.data  # type: ignore[no-any-return]  # the handler refuses text frames
        raise ConnectionError(f"websocket {msg.type.name.lower()}")

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)


class InProcessOperator:
    """aiohttp app serving GET /elemental/registration/{token} in a background thread."""

    def __init__(self, store: Any, tpm_ca_pem: str = "") -> None:
        self.store = store
        self.ctx = OperatorContext(store=store, public_url="", secret_key=b"test-key", tpm_ca_pem=tpm_ca_pem)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: Any = None
        self.port = 0
        self.sessions = 0

    def start(self) -> InProcessOperator:
        from aiohttp import web

        async def handle(request: web.Request) -> web.StreamResponse:
            token = request.match_info["token"]
            found = self.store.find_by_token("MachineRegistration", token)
            if len(found) != 1 or not handler.is_ready(found[0]):
                raise web.HTTPNotFound(text="registration not found")
            registration = found[0]
            ws = web.WebSocketResponse(max_msg_size=P.MAX_FRAME_SIZE)
            if not ws.can_prepare(request).ok:
                body = yaml.safe_dump(handler.registration_file(registration, self.ctx))
                return web.Response(text=body, content_type="application/yaml")
            await ws.prepare(request)
            self.sessions += 1
            await handler.serve_registration(
                AiohttpFrameConn(ws),
                request.headers.get("Authorization"),
                registration,
                self.ctx,
                request.remote or "",
            )
            await ws.close()
            return ws

        async def setup() -> None:
            app = web.Application()
            app.router.add_get("/elemental/registration/{token}", handle)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self.thread.start()
        asyncio.run_coroutine_threadsafe(setup(), self.loop).result(10)
        self.ctx.public_url = f"http://127.0.0.1:{self.port}"
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
    op = InProcessOperator(store).start()
    try:
        yield op
    finally:
        op.stop()
        store.close()
