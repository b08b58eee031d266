"""Admin API bodies are parsed off the event loop (issue 11 item 5): a 48 MB YAML body once
stalled /healthz for 15 s. A parse held on purpose must not hold /healthz with it."""

# ruff: noqa: F811  (pytest fixtures imported from helpers_registration)

from __future__ import annotations

import json
import ssl
import threading
import urllib.request
from typing import Any

import pytest
from helpers_registration import InProcessOperator, operator  # noqa: F401

from elemental_operator.server import app as server_app

API = "/elemental/admin/v1/namespaces/fleet-default"


def _request(op: InProcessOperator, path: str, body: bytes | None = None, timeout: float = 10) -> int:
    ctx = ssl.create_default_context(cadata=op.ca_pem.decode())
    req = urllib.request.Request(
        f"https://127.0.0.1:{op.port}{path}",
        data=body,
        method="POST" if body is not None else "GET",
        headers={"Authorization": "Bearer admin-token", "Content-Type": "application/yaml"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_healthz_answers_while_a_body_is_parsed(
    operator: InProcessOperator, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsing, release = threading.Event(), threading.Event()
    real_parse = server_app._parse_body

    def slow_parse(raw: bytes) -> Any:
        parsing.set()
        release.wait(30)  # a parse that takes as long as the test wants
        return real_parse(raw)

    monkeypatch.setattr(server_app, "_parse_body", slow_parse)
    body = json.dumps(
        {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "MachineRegistration",
            "metadata": {"name": "r1"},
            "spec": {},
        }
    ).encode()
    codes: list[int] = []
    poster = threading.Thread(
        target=lambda: codes.append(_request(operator, API + "/machineregistrations", body))
    )
    poster.start()
    try:
        assert parsing.wait(10), "the admin API never parsed the body"
        # on the event loop this would wait for `release` and time out
        assert _request(operator, "/healthz", timeout=5) == 200
    finally:
        release.set()
        poster.join(30)
    assert codes == [201], codes
