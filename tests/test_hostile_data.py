"""Hostile client data (issue 11 item 1): bounded SMBIOS/SystemData/labels/annotations, refused
with an Error frame naming the limit; linear templating; no templating inside a store write."""

# ruff: noqa: F811  (pytest fixtures imported from helpers_registration)

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from helpers_registration import InProcessOperator, operator  # noqa: F401

from elemental_common import protocol as P
from elemental_operator.registration import handler, templater
from elemental_operator.registration.handler import serve_registration
from elemental_operator.registration.templater import RenderTooLarge, Templater

MAC = "52:54:00:00:11:01"


class QueueConn:
    """In-memory FrameConn: the frames a client sends, the frames the server answers."""

    def __init__(self, frames: list[bytes]) -> None:
        self.inbox = list(frames)
        self.outbox: list[bytes] = []

    async def recv(self) -> bytes:
        if not self.inbox:
            raise ConnectionError("closed")
        return self.inbox.pop(0)

    async def send(self, data: bytes) -> None:
        self.outbox.append(data)


def _session(
    op: InProcessOperator, reg: dict[str, Any], frames: list[bytes]
) -> list[tuple[P.MsgType, bytes]]:
    conn = QueueConn([P.encode_frame(P.MsgType.VERSION, P.encode_version()), *frames])
    asyncio.run(serve_registration(conn, P.plain_auth_header(MAC), reg, op.ctx, "127.0.0.1"))
    return [P.decode_frame(f) for f in conn.outbox]


def _error_of(replies: list[tuple[P.MsgType, bytes]]) -> str:
    msg_type, payload = replies[-1]
    assert msg_type == P.MsgType.ERROR, replies[-1]
    return P.decode_error(payload)


def _json(t: P.MsgType, data: Any) -> bytes:
    return P.encode_frame(t, P.go_json(data))


GET = P.encode_frame(P.MsgType.GET)


@pytest.fixture
def reg(operator: InProcessOperator) -> dict[str, Any]:
    return operator.add_registration(
        machineInventoryLabels={"serial": "${System Information/Serial Number}"},
        config={"elemental": {"registration": {"auth": "mac"}}},
    )


def test_a_normal_session_still_registers(operator: InProcessOperator, reg: dict[str, Any]) -> None:
    smbios = {"System Information": {"Serial Number": "SN1", "UUID": "u"}}
    replies = _session(
        operator,
        reg,
        [
            _json(P.MsgType.SMBIOS, smbios),
            _json(P.MsgType.ANNOTATIONS, {"a": "x" * 1000}),
            _json(P.MsgType.LABELS, {"site": "${System Information/UUID}"}),
            GET,
        ],
    )
    assert replies[-1][0] == P.MsgType.CONFIG
    [inv] = operator.store.list("MachineInventory")
    assert inv["metadata"]["labels"]["serial"] == "SN1"
    assert inv["metadata"]["labels"]["elemental.cattle.io/site"] == "u"


@pytest.mark.parametrize(
    ("frames", "limit"),
    [
        # The label bomb of the report: ${a} 1.04 M times (≈ 4 MB, under the frame limit).
        ([_json(P.MsgType.LABELS, {"x": "${a}" * 800_000})], "max-label-value-bytes"),
        ([_json(P.MsgType.LABELS, {f"k{i}": "v" for i in range(65)})], "max-labels"),
        ([_json(P.MsgType.LABELS, {"k" * 400: "v"})], "max-label-key-bytes"),
        ([_json(P.MsgType.ANNOTATIONS, {"a": "x" * 70_000})], "max-annotation-value-bytes"),
        # 64 messages of annotations merged into one session: the count is per session.
        (
            [_json(P.MsgType.ANNOTATIONS, {f"a{i}-{j}": "v" for j in range(8)}) for i in range(9)],
            "max-annotations",
        ),
        # Five values each under the per-value limit, together over Kubernetes' 256 KiB.
        (
            [_json(P.MsgType.ANNOTATIONS, {f"a{i}": "x" * 60_000 for i in range(5)}), GET],
            "max-annotations-total-bytes",
        ),
        ([_json(P.MsgType.SMBIOS, {"x": "y" * (1024 * 1024 + 10)})], "max-data-message-bytes"),
        ([_json(P.MsgType.SYSTEM_DATA_V2, {"x": "y" * 900_000})] * 3, "max-data-total-bytes"),
        ([P.encode_frame(P.MsgType.SMBIOS, b'{"a":' * 30 + b"1" + b"}" * 30)], "max-data-depth"),
        ([_json(P.MsgType.SMBIOS, {"a": [0] * 60_000})], "max-data-nodes"),
    ],
)
def test_client_data_over_a_limit_is_an_error_naming_it(
    operator: InProcessOperator, reg: dict[str, Any], frames: list[bytes], limit: str
) -> None:
    message = _error_of(_session(operator, reg, [*frames, GET]))
    assert f"limit {limit}=" in message
    assert operator.store.list("MachineInventory") == []


def test_annotation_total_is_per_inventory_across_sessions(
    operator: InProcessOperator, reg: dict[str, Any]
) -> None:
    """Kubernetes' 256 KiB holds for the stored object: sessions of the same machine, each under
    every per-session limit, cannot grow it past that one after another."""
    first = [_json(P.MsgType.ANNOTATIONS, {f"a{i}": "x" * 60_000 for i in range(4)}), GET]
    assert _session(operator, reg, first)[-1][0] == P.MsgType.CONFIG
    [inv] = operator.store.list("MachineInventory")
    before = inv["metadata"]["annotations"]
    more = [_json(P.MsgType.UPDATE, {}), _json(P.MsgType.ANNOTATIONS, {"b0": "y" * 30_000}), GET]
    message = _error_of(_session(operator, reg, more))
    assert "limit max-annotations-total-bytes=262144" in message, message
    [inv] = operator.store.list("MachineInventory")
    assert inv["metadata"]["annotations"] == before  # nothing of the refused session was stored


def test_templating_is_linear_and_capped() -> None:
    t = Templater()
    t.fill({"a": "", "b": "x" * 1000})
    bomb = "${a}" * 400_000  # 1.6 MB: quadratic re-slicing took minutes on this
    start = time.monotonic()
    assert t.render(bomb) == ""
    assert time.monotonic() - start < 2.0
    with pytest.raises(RenderTooLarge, match="max-rendered-bytes"):
        t.render("${b}" * 100)
    assert len(t.render("${b}" * 60)) == 60_000


@contextmanager
def _watch_write_transactions(store: Any) -> Iterator[threading.Event]:
    """Flag set while this store has a write transaction open (wraps its ``_write``)."""
    inside = threading.Event()
    original = store._write

    @contextmanager
    def write() -> Iterator[Any]:
        with original() as conn:
            inside.set()
            try:
                yield conn
            finally:
                inside.clear()

    store._write = write
    try:
        yield inside
    finally:
        store._write = original


def test_no_templating_inside_the_store_write_transaction(
    operator: InProcessOperator, reg: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered_inside: list[str] = []
    with _watch_write_transactions(operator.store) as inside:
        real_render = templater.Templater.render

        def render(self: Templater, template: str, *a: Any, **kw: Any) -> str:
            if inside.is_set():
                rendered_inside.append(template)
            return real_render(self, template, *a, **kw)

        monkeypatch.setattr(templater.Templater, "render", render)
        smbios = {"System Information": {"Serial Number": "SN1"}}
        frames = [
            _json(P.MsgType.SMBIOS, smbios),
            _json(P.MsgType.LABELS, {"l": "${System Information/Serial Number}"}),
        ]
        assert _session(operator, reg, [*frames, GET])[-1][0] == P.MsgType.CONFIG
        assert _session(operator, reg, [*frames, GET])[-1][0] == P.MsgType.CONFIG  # update path
    assert rendered_inside == []
    assert handler.COMMIT_RETRIES >= 1


def test_decode_data_object_walks_without_recursion() -> None:
    # A deep but small document is refused by the depth limit, not by a RecursionError.
    with pytest.raises(P.LimitExceeded, match="max-data-depth"):
        nested: Any = 1
        for _ in range(20):
            nested = [nested]
        P.decode_data_object(json.dumps({"a": nested}).encode())
