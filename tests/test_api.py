"""HTTP API: admin REST, agent plan endpoints, registration GET/websocket, seed-image downloads."""

# ruff: noqa: F811  (pytest fixtures imported from operator_fixtures)

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml
from operator_fixtures import (  # noqa: F401
    RunningOperator,
    operator,
    postgres_server,
    store,
    store_url,
    wait_for,
)

from elemental_operator.api import API_VERSION, kinds
from elemental_operator.api.crds import all_crds, write_chart
from elemental_operator.controllers.base import condition_true, get_condition, plan_checksum

NS = "fleet-default"
ADMIN = "/elemental/admin/v1"


def call(
    op: RunningOperator, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(op.url + path, data=data, method=method)
    tok = op.token if token is None else token
    if tok:
        req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def inv_body(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "MachineInventory",
        "metadata": {"name": name, "labels": labels},
        "spec": {"tpmHash": "h-" + name},
    }


def test_admin_requires_token(operator: RunningOperator) -> None:
    assert call(operator, "GET", ADMIN + "/machineinventories", token="")[0] == 401
    assert call(operator, "GET", ADMIN + "/machineinventories", token="wrong")[0] == 401
    assert call(operator, "GET", ADMIN + "/machineinventories")[0] == 200
    assert call(operator, "GET", "/elemental/nope/x", token="")[0] == 400


def test_admin_crud_conflict_status_and_validation(operator: RunningOperator) -> None:
    coll = f"{ADMIN}/namespaces/{NS}/machineinventories"
    code, created = call(operator, "POST", coll, inv_body("m1", pool="a"))
    assert code == 201 and created["metadata"]["uid"]
    assert call(operator, "POST", coll, inv_body("m1"))[0] == 409
    code, body = call(operator, "POST", coll, {**inv_body("m2"), "spec": {"tpmHash": 5}})
    assert code == 422 and "spec.tpmHash" in body["message"]
    code, body = call(operator, "POST", coll, {**inv_body("m2"), "spec": {"bogus": 1}})
    assert code == 422 and "spec.bogus: unknown field" in body["message"]
    call(operator, "POST", coll, inv_body("m2", pool="b"))
    code, lst = call(operator, "GET", coll + "?labelSelector=pool%3Da")
    assert code == 200 and [o["metadata"]["name"] for o in lst["items"]] == ["m1"]
    assert lst["kind"] == "MachineInventoryList" and int(lst["metadata"]["resourceVersion"]) > 0
    assert len(call(operator, "GET", ADMIN + "/machineinventories")[1]["items"]) == 2

    code, stale = call(operator, "GET", coll + "/m1")
    for _ in range(20):  # the controllers write too (finalizer, status): retry on 409 like a client must
        code, got = call(operator, "GET", coll + "/m1")
        got["metadata"]["labels"]["pool"] = "c"
        code, upd = call(operator, "PUT", coll + "/m1", got)
        if code != 409:
            break
    assert code == 200 and upd["metadata"]["labels"]["pool"] == "c"
    stale["metadata"]["labels"]["pool"] = "d"
    assert call(operator, "PUT", coll + "/m1", stale)[0] == 409
    upd["status"] = {"plan": {"state": "Applied"}}
    upd["metadata"].pop("resourceVersion")  # force: the inventory controller keeps writing status
    code, st = call(operator, "PUT", coll + "/m1/status", upd)
    assert code == 200 and st["status"]["plan"]["state"] == "Applied"
    assert call(operator, "GET", coll + "/nope")[0] == 404
    assert call(operator, "DELETE", coll + "/m2")[0] in (200, 202)


def test_admin_watch_stream(operator: RunningOperator) -> None:
    coll = f"{ADMIN}/namespaces/{NS}/machineregistrations"
    call(
        operator,
        "POST",
        coll,
        {"apiVersion": API_VERSION, "kind": "MachineRegistration", "metadata": {"name": "r1"}, "spec": {}},
    )
    req = urllib.request.Request(operator.url + coll + "?watch=true&timeoutSeconds=3")
    req.add_header("Authorization", f"Bearer {operator.token}")
    events = []
    with urllib.request.urlopen(req, timeout=30) as resp:
        for line in resp:
            ev = json.loads(line)
            events.append((ev["type"], ev["object"]["metadata"]["name"]))
            if len(events) == 1:
                call(
                    operator,
                    "POST",
                    coll,
                    {
                        "apiVersion": API_VERSION,
                        "kind": "MachineRegistration",
                        "metadata": {"name": "r2"},
                        "spec": {},
                    },
                )
    assert events[0] == ("ADDED", "r1")
    assert ("ADDED", "r2") in events and ("MODIFIED", "r1") in events  # controller made it Ready


def _ready_inventory(operator: RunningOperator, name: str = "m1") -> dict[str, Any]:
    store = operator.ctx.store
    store.create({**inv_body(name), "metadata": {"name": name, "namespace": NS}})
    wait_for(
        lambda: (
            bool(store.list("Secret", NS))
            and "plan" in (store.get("MachineInventory", NS, name).get("status") or {})
        )
    )
    return store.get("MachineInventory", NS, name)


def test_agent_plan_and_status(operator: RunningOperator) -> None:
    inv = _ready_inventory(operator)
    token = operator.ctx.agent_token(inv)
    assert call(operator, "GET", "/elemental/agent/v1/plan", token="fleet-default/m1:bad")[0] == 401
    assert call(operator, "GET", "/elemental/agent/v1/plan", token="")[0] == 401
    code, plan = call(operator, "GET", "/elemental/agent/v1/plan", token=token)
    assert code == 200
    assert plan == {
        "name": "m1",
        "namespace": NS,
        "planType": "empty",
        "plan": "{}",
        "checksum": plan_checksum(b"{}"),
        "maxFailures": 0,
        "appliedChecksum": "",
    }
    body = {
        "applied-checksum": plan["checksum"],
        "applied-output": "",
        "success-count": "1",
        "probe-statuses": {},
        "os-version": "0.1.0",
    }
    code, _ = call(operator, "POST", "/elemental/agent/v1/plan/status", body, token=token)
    assert code == 200
    store = operator.ctx.store
    wait_for(lambda: condition_true(store.get("MachineInventory", NS, "m1"), "Ready"))
    assert call(operator, "POST", "/elemental/agent/v1/plan/status", {"bogus": "1"}, token=token)[0] == 422
    code, _ = call(
        operator,
        "POST",
        "/elemental/agent/v1/progress",
        {"stage": "write-image", "percent": 40, "message": "copying"},
        token=token,
    )
    assert code == 200
    cond = get_condition(store.get("MachineInventory", NS, "m1"), "InstallProgress")
    assert cond is not None and cond["reason"] == "WriteImage" and cond["status"] == "Unknown"
    assert cond["message"] == "write-image: 40% copying"
    call(operator, "POST", "/elemental/agent/v1/progress", {"stage": "done", "percent": 100}, token=token)
    assert condition_true(store.get("MachineInventory", NS, "m1"), "InstallProgress")
    # a re-registered machine (new uid) invalidates the old credential
    store.delete("MachineInventory", NS, "m1")
    wait_for(lambda: not store.list("MachineInventory", NS))
    assert call(operator, "GET", "/elemental/agent/v1/plan", token=token)[0] == 401


def _ready_registration(operator: RunningOperator, name: str = "reg") -> dict[str, Any]:
    store = operator.ctx.store
    store.create(
        {
            "apiVersion": API_VERSION,
            "kind": "MachineRegistration",
            "metadata": {"name": name, "namespace": NS},
            "spec": {},
        }
    )
    wait_for(lambda: condition_true(store.get("MachineRegistration", NS, name), "Ready"))
    return store.get("MachineRegistration", NS, name)


def test_registration_get_and_websocket(operator: RunningOperator, monkeypatch: pytest.MonkeyPatch) -> None:
    assert call(operator, "GET", "/elemental/registration/unknown", token="")[0] == 404
    reg = _ready_registration(operator)
    url = reg["status"]["registrationURL"]
    assert url.startswith(operator.url + "/elemental/registration/")
    path = url[len(operator.url) :]
    code, text = call(operator, "GET", path, token="")
    assert code == 200, text
    assert yaml.safe_load(text)["elemental"]["registration"]["url"] == url

    from elemental_operator.registration import handler

    seen: dict[str, Any] = {}

    async def fake_serve(
        conn: Any, authorization: str | None, registration: Any, ctx: Any, remote: str
    ) -> None:
        seen.update(auth=authorization, name=registration["metadata"]["name"], remote=remote)
        data = await conn.recv()
        await conn.send(data[::-1])

    monkeypatch.setattr(handler, "serve_registration", fake_serve)

    async def client() -> bytes:
        import aiohttp

        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                url.replace("http", "ws", 1), headers={"Authorization": "Bearer PLAINabc"}
            ) as ws,
        ):
            await ws.send_bytes(b"\x05\x0c")
            msg = await ws.receive()
            return bytes(msg.data)

    assert asyncio.run(client()) == b"\x0c\x05"
    assert seen == {"auth": "Bearer PLAINabc", "name": "reg", "remote": "127.0.0.1"}


def test_seedimage_download(operator: RunningOperator) -> None:
    _ready_registration(operator)
    store = operator.ctx.store
    store.create(
        {
            "apiVersion": API_VERSION,
            "kind": "SeedImage",
            "metadata": {"name": "s", "namespace": NS},
            "spec": {"registrationRef": {"name": "reg"}},
        }
    )
    wait_for(lambda: condition_true(store.get("SeedImage", NS, "s"), "SeedImageReady"), timeout=20)
    si = store.get("SeedImage", NS, "s")
    path = si["status"]["downloadURL"][len(operator.url) :]
    code, body = call(operator, "GET", path, token="")
    assert code == 200 and "elemental" in body
    code, sha = call(operator, "GET", path + ".sha256", token="")
    assert code == 200 and sha.split()[0] == hashlib.sha256(body.encode()).hexdigest()
    assert call(operator, "GET", path.replace(si["status"]["downloadToken"], "nope"), token="")[0] == 404
    assert call(operator, "GET", path + ".other", token="")[0] == 404


# ---- schema, CRDs and chart (no server needed) ---------------------------------------------


def test_crds_and_chart_are_structurally_valid(tmp_path: Any) -> None:
    crds = all_crds()
    assert {c["spec"]["names"]["kind"] for c in crds} == {k for k, i in kinds().items() if not i.core}
    for c in crds:
        spec = c["spec"]
        assert c["apiVersion"] == "apiextensions.k8s.io/v1" and c["kind"] == "CustomResourceDefinition"
        assert c["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
        assert spec["scope"] in ("Namespaced", "Cluster")
        (version,) = spec["versions"]
        assert version["served"] and version["storage"]
        schema = version["schema"]["openAPIV3Schema"]
        _check_structural(schema, "")
        for col in version.get("additionalPrinterColumns", []):
            assert col["type"] in ("string", "integer", "number", "boolean", "date")
            assert col["jsonPath"].startswith(".")
    write_chart(tmp_path / "chart", image="registry.local/elemental-operator:0.1.0")
    chart = yaml.safe_load((tmp_path / "chart" / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] and chart["version"]
    values = yaml.safe_load((tmp_path / "chart" / "values.yaml").read_text())
    assert values["image"] == {
        "repository": "registry.local/elemental-operator",
        "tag": "0.1.0",
        "pullPolicy": "IfNotPresent",
    }
    assert len(list((tmp_path / "chart" / "crds").glob("*.yaml"))) == len(crds)
    for tpl in (tmp_path / "chart" / "templates").glob("*.yaml"):
        text = tpl.read_text()
        assert text.count("{{") == text.count("}}"), tpl


def _check_structural(schema: dict[str, Any], path: str) -> None:
    """Kubernetes structural-schema rules: every node typed unless preserve-unknown/int-or-string."""
    if not (schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string")):
        assert "type" in schema, f"{path}: no type"
    for key, sub in (schema.get("properties") or {}).items():
        _check_structural(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        _check_structural(schema["items"], path + "[]")
    if isinstance(schema.get("additionalProperties"), dict):
        _check_structural(schema["additionalProperties"], path + "{}")
    assert "description" not in schema or isinstance(schema["description"], str)
