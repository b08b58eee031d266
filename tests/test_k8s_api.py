"""Our agent with rancher-system-agent's connection file against the operator's plan Secret API.

The operator runs for real on loopback (server + controllers, SQLite or PostgreSQL store); the
agent reads a ``{kubeConfig, namespace, secretName}`` connection file as Elemental's register
client writes it and speaks the Kubernetes core/v1 Secret API under ``/k8s/clusters/local``.
"""
# ruff: noqa: F811  (pytest fixtures imported from operator_fixtures)

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
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

from elemental_operator.api import API_VERSION
from elemental_operator.controllers.base import condition_true, encode_plan, get_condition
from elemental_operator.server import k8s_api, tls
from elemental_register.agent import cli as agent_cli
from elemental_register.agent import plan as planlib
from elemental_register.agent.agent import Agent, wait_for_connection
from elemental_register.agent.client import OperatorError
from elemental_register.agent.config import AgentConfig
from elemental_register.agent.k8s import KubeConnection, SecretClient, is_kube_connection
from elemental_register.installer import api

NS = "fleet-default"
DATA = Path(__file__).resolve().parent / "data" / "system-agent"
CLUSTER = "/k8s/clusters/local"


# ---- helpers ---------------------------------------------------------------------------------


def _inventory(op: RunningOperator, name: str) -> dict[str, Any]:
    st = op.ctx.store
    st.create(
        {
            "apiVersion": API_VERSION,
            "kind": "MachineInventory",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"tpmHash": "h-" + name},
        }
    )

    def ready() -> bool:
        try:
            st.get("Secret", NS, name)
        except Exception:
            return False
        return "plan" in (st.get("MachineInventory", NS, name).get("status") or {})

    wait_for(ready)
    return st.get("MachineInventory", NS, name)


def _kubeconfig(server: str, token: str) -> str:
    """Elemental's register client's kubeconfig (the golden file's), for this server and token;
    no CA: the operator here is plain HTTP."""
    golden = json.loads((DATA / "elemental_connection.json").read_text())["kubeConfig"]
    text = re.sub(r"\n    certificate-authority-data: \S+", "", golden)
    text = text.replace("https://operator.example:8443/k8s/clusters/local", server)
    return text.replace("token: TOKEN", f"token: {token}")


def _write_files(
    root: Path, op: RunningOperator, inv: dict[str, Any], token: str | None = None, server: str = ""
) -> Path:
    """rancher-system-agent's config.yaml and elemental_connection.json under ``root``."""
    conf_dir, state_dir = root / "etc/rancher/elemental/agent", root / "var/lib/elemental/agent"
    conf_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    conn = state_dir / "elemental_connection.json"
    conn.write_text(
        json.dumps(
            {
                "kubeConfig": _kubeconfig(server or op.url + CLUSTER, token or op.ctx.agent_token(inv)),
                "namespace": inv["metadata"]["namespace"],
                "secretName": inv["metadata"]["name"],
            }
        )
    )
    conn.chmod(0o600)
    cfg = conf_dir / "config.yaml"
    cfg.write_text(
        f"workDirectory: {state_dir}/work\nlocalPlanDirectory: {state_dir}/plans\n"
        f"appliedPlanDirectory: {state_dir}/applied\nremoteEnabled: true\n"
        f"connectionInfoFile: {conn}\n"
    )
    cfg.chmod(0o600)
    (root / "etc/os-release").write_text("IMAGE_VERSION=0.1.0\n")
    return cfg


def _agent(root: Path, op: RunningOperator, inv: dict[str, Any]) -> Agent:
    cfg = AgentConfig.load(_write_files(root, op, inv))
    conn = wait_for_connection(cfg)
    assert isinstance(conn, KubeConnection)
    return Agent(cfg, SecretClient(conn), root=root, oem_dir=root / "oem", managed=False)


def _set_plan(op: RunningOperator, name: str, plan: dict[str, Any]) -> str:
    st = op.ctx.store
    raw = encode_plan(plan)
    for _ in range(20):
        sec = st.get("Secret", NS, name)
        sec.setdefault("data", {})["plan"] = base64.b64encode(raw).decode()
        try:
            st.update(sec)
            break
        except Exception:
            continue
    return planlib.checksum(raw)


def _http(
    method: str, url: str, token: str | None, body: Any = None, ctype: str = "application/json"
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = ctype
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"null")
        except ValueError:
            return e.code, raw.decode(errors="replace")  # the server's own text answers


def _secrets_url(op: RunningOperator, ns: str = NS, name: str = "", **query: str) -> str:
    url = f"{op.url}{CLUSTER}/api/v1/namespaces/{ns}/secrets" + (f"/{name}" if name else "")
    return url + ("?" + urllib.parse.urlencode(query) if query else "")


def _data(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode((secret.get("data") or {}).get(key) or "")


def _go_output(raw: bytes) -> dict[str, str]:
    """rancher-system-agent's applied-output: gzip of JSON {name: base64(output)}."""
    return {k: base64.b64decode(v).decode() for k, v in json.loads(gzip.decompress(raw)).items()}


def _is_status(body: Any, code: int, reason: str) -> bool:
    return (
        isinstance(body, dict)
        and body.get("kind") == "Status"
        and body.get("apiVersion") == "v1"
        and body.get("status") == "Failure"
        and body.get("code") == code
        and body.get("reason") == reason
    )


def _touch_plan(marker: Path) -> dict[str, Any]:
    return {
        "instructions": [
            {
                "name": "touch",
                "command": "/bin/sh",
                "args": ["-c", f"echo ok; touch {marker}"],
                "saveOutput": True,
            }
        ]
    }


# ---- connection files ------------------------------------------------------------------------


def test_upstream_connection_file_is_read_and_ours_is_the_same_form(tmp_path: Path) -> None:
    """The golden files are what Elemental's register client writes; our installer writes the same."""
    conn_path = tmp_path / "elemental_connection.json"
    shutil.copy(DATA / "elemental_connection.json", conn_path)
    conn_path.chmod(0o600)
    assert is_kube_connection(conn_path)
    conn = KubeConnection.load(conn_path)
    assert conn.server == "https://operator.example:8443/k8s/clusters/local"
    assert conn.operator_url == "https://operator.example:8443"
    assert conn.token == "TOKEN" and conn.namespace == "fleet-default" and conn.secret_name == "m-0123"
    assert conn.ca_cert.startswith("-----BEGIN CERTIFICATE-----\n")

    cfg_path = tmp_path / "config.yaml"
    shutil.copy(DATA / "config.yaml", cfg_path)
    cfg_path.chmod(0o600)
    cfg = AgentConfig.load(cfg_path)
    assert cfg.connection_info_file == Path("/var/lib/elemental/agent/elemental_connection.json")
    assert cfg.work_directory == Path("/var/lib/elemental/agent/work")

    # our installer writes the same form, with the same kubeconfig layout as upstream's
    config = {
        "elemental": {
            "registration": {"ca-cert": conn.ca_cert},
            "system-agent": {
                "url": "https://operator.example:8443/k8s/clusters/local",
                "token": "t",
                "secret-name": "m",
                "secret-namespace": NS,
            }
        }
    }
    api.install_unmanaged(config, tmp_path / "root")
    ours = tmp_path / "root/var/lib/elemental/agent/elemental_connection.json"
    assert is_kube_connection(ours)
    golden = json.loads(conn_path.read_text())
    mine = json.loads(ours.read_text())
    assert yaml.safe_load(mine["kubeConfig"]) == {
        **yaml.safe_load(golden["kubeConfig"]),
        "users": [{"name": "user", "user": {"token": "t"}}],
    }
    assert (mine["namespace"], mine["secretName"]) == (NS, "m")


# ---- the agent through the Secret API --------------------------------------------------------


def test_agent_watches_applies_reports_and_takes_a_second_plan(
    tmp_path: Path, operator: RunningOperator
) -> None:
    inv = _inventory(operator, "m1")
    token = operator.ctx.agent_token(inv)
    agent = _agent(tmp_path, operator, inv)
    agent.step()  # the empty plan "{}" the controller created
    first = planlib.checksum(b"{}")
    code, sec = _http("GET", _secrets_url(operator, name="m1"), token)
    assert code == 200 and sec["kind"] == "Secret"
    assert _data(sec, "applied-checksum").decode() == first
    assert _data(sec, "success-count") == b"1" and _data(sec, "failure-count") == b"0"
    # the same status the controllers and our own plan endpoint read
    wait_for(lambda: condition_true(operator.ctx.store.get("MachineInventory", NS, "m1"), "Ready"))
    status = operator.ctx.store.get("MachineInventory", NS, "m1")["status"]["plan"]
    assert status["state"] == "Applied" and status["checksum"] == first
    code, doc = _http("GET", operator.url + "/elemental/agent/v1/plan", token)
    assert code == 200 and doc["appliedChecksum"] == first

    # nothing changes: the watch ends at its timeout without an event
    started = time.monotonic()
    assert isinstance(agent.client, SecretClient) and agent.client.wait_for_change(2) is False
    assert time.monotonic() - started < 10

    # a second plan: the watch (from the Secret's resourceVersion) wakes the agent
    woke: list[bool] = []
    client = agent.client
    assert isinstance(client, SecretClient)
    watcher = threading.Thread(target=lambda: woke.append(client.wait_for_change(60)))
    watcher.start()
    marker = tmp_path / "ran"
    second = _set_plan(operator, "m1", _touch_plan(marker))
    watcher.join(20)
    assert not watcher.is_alive() and woke == [True]
    agent.step()
    assert marker.exists()
    # the agent's own wait between polls is that watch: a third plan ends it early
    waiter = threading.Thread(target=agent.wait, args=(120.0,))
    started = time.monotonic()
    waiter.start()
    third = _set_plan(operator, "m1", {"files": []})
    waiter.join(30)
    assert not waiter.is_alive() and time.monotonic() - started < 30
    code, doc = _http("GET", operator.url + "/elemental/agent/v1/plan", token)
    assert doc["checksum"] == third
    second = _set_plan(operator, "m1", _touch_plan(marker))
    marker.unlink()
    agent.step()
    assert not marker.exists()  # already applied (checksum kept by the agent): not run again
    code, sec = _http("GET", _secrets_url(operator, name="m1"), token)
    assert _data(sec, "applied-checksum").decode() == second
    assert _go_output(_data(sec, "applied-output")) == {"touch": "ok\n"}
    assert _data(sec, "success-count") == b"2" and _data(sec, "failed-checksum") == b""
    assert _data(sec, "os-version") == b"0.1.0"

    def applied_second() -> bool:
        plan = operator.ctx.store.get("MachineInventory", NS, "m1")["status"]["plan"]
        return bool(plan.get("checksum") == second and plan.get("state") == "Applied")

    wait_for(applied_second)


def test_failed_plan_reaches_the_inventory(tmp_path: Path, operator: RunningOperator) -> None:
    inv = _inventory(operator, "m1")
    agent = _agent(tmp_path, operator, inv)
    cs = _set_plan(
        operator,
        "m1",
        {
            "instructions": [
                {"name": "boom", "command": "/bin/sh", "args": ["-c", "echo bad; exit 3"], "saveOutput": True}
            ]
        },
    )
    agent.step()
    sec = operator.ctx.store.get("Secret", NS, "m1")
    assert _data(sec, "failed-checksum").decode() == cs
    assert _data(sec, "failure-count") == b"1" and _data(sec, "applied-checksum") == b""
    assert "bad" in _go_output(_data(sec, "failed-output")).get("boom", "")

    def failed() -> bool:
        plan = operator.ctx.store.get("MachineInventory", NS, "m1")["status"]["plan"]
        return bool(plan.get("state") == "Failed" and plan.get("checksum") == cs)

    wait_for(failed)


def test_install_progress_reaches_install_progress_condition(
    tmp_path: Path, operator: RunningOperator
) -> None:
    inv = _inventory(operator, "m1")
    agent = _agent(tmp_path, operator, inv)
    assert isinstance(agent.client, SecretClient)
    agent.client.post_progress("installing", 40, "copying")

    def progressed(text: str) -> bool:
        cond = get_condition(operator.ctx.store.get("MachineInventory", NS, "m1"), "InstallProgress") or {}
        return text in str(cond.get("message"))

    wait_for(lambda: progressed("installing: 40% copying"))
    # the register client's progress with a system-agent url of <url>/k8s/clusters/local
    code, _ = _http(
        "POST",
        operator.url + CLUSTER + "/elemental/agent/v1/progress",
        operator.ctx.agent_token(inv),
        {"stage": "done", "percent": 100},
    )
    assert code == 200
    wait_for(lambda: progressed("done: 100%"))


def test_cli_once_with_system_agent_files(tmp_path: Path, operator: RunningOperator) -> None:
    """`elemental-system-agent --once` picks the Secret API for rancher-system-agent's files."""
    inv = _inventory(operator, "m1")
    cfg = _write_files(tmp_path, operator, inv)
    assert agent_cli.main(["--once", "--config", str(cfg)]) == 0
    sec = operator.ctx.store.get("Secret", NS, "m1")
    assert _data(sec, "applied-checksum").decode() == planlib.checksum(b"{}")


def test_go_register_client_files_with_todays_config(tmp_path: Path, operator: RunningOperator) -> None:
    """Our Config still says system-agent.url = <url>: Elemental's register client then writes a
    kubeconfig with the bare URL as server. The Secret API answers there too."""
    inv = _inventory(operator, "m1")
    cfg = AgentConfig.load(_write_files(tmp_path, operator, inv, server=operator.url))
    conn = wait_for_connection(cfg)
    assert isinstance(conn, KubeConnection) and conn.operator_url == operator.url
    agent = Agent(cfg, SecretClient(conn), root=tmp_path, oem_dir=tmp_path / "oem", managed=False)
    marker = tmp_path / "ran"
    cs = _set_plan(operator, "m1", _touch_plan(marker))
    agent.step()
    assert marker.exists()
    sec = operator.ctx.store.get("Secret", NS, "m1")
    assert _data(sec, "applied-checksum").decode() == cs
    assert _go_output(_data(sec, "applied-output")) == {"touch": "ok\n"}
    assert isinstance(agent.client, SecretClient)
    agent.client.post_progress("installing", 10)
    wait_for(
        lambda: (
            "installing: 10%"
            in str(
                (
                    get_condition(operator.ctx.store.get("MachineInventory", NS, "m1"), "InstallProgress")
                    or {}
                ).get("message")
            )
        )
    )
    # the root has no catch-all: paths outside the API keep the server's usual answers
    code, _ = _http("GET", operator.url + "/nothing-here", operator.ctx.agent_token(inv))
    assert code == 404
    code, body = _http(
        "GET", operator.url + "/api/v1/namespaces/fleet-default/secrets/m2", operator.ctx.agent_token(inv)
    )
    assert code == 403 and _is_status(body, 403, "Forbidden")


def _tls_site(op: RunningOperator, d: Path) -> tuple[str, str]:
    """The same running operator also on HTTPS (a certificate from a fresh CA); (url, CA PEM)."""
    import asyncio
    import ssl

    from aiohttp import web

    ca_pem, ca_key = tls.make_ca("k8s-api-test-ca")
    cert, key = tls.make_server_cert(ca_pem, ca_key, ["localhost", "127.0.0.1"])
    (d / "tls.crt").write_bytes(cert + ca_pem)
    (d / "tls.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "tls.crt", d / "tls.key")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    site = web.TCPSite(op.runner, "127.0.0.1", port, ssl_context=ctx)
    asyncio.run_coroutine_threadsafe(site.start(), op.loop).result(10)
    return f"https://localhost:{port}", ca_pem.decode()


def test_kubeconfig_ca_and_strict_tls(tmp_path: Path, operator: RunningOperator) -> None:
    inv = _inventory(operator, "m1")
    url, ca_pem = _tls_site(operator, tmp_path)
    root = tmp_path / "root"
    cfg = AgentConfig.load(_write_files(root, operator, inv, server=url + CLUSTER))
    conn_file = cfg.connection_info_file
    d = json.loads(conn_file.read_text())
    ca_line = "    certificate-authority-data: " + base64.b64encode(ca_pem.encode()).decode()
    d["kubeConfig"] = d["kubeConfig"].replace("    server:", ca_line + "\n    server:")
    conn_file.write_text(json.dumps(d))
    conn = wait_for_connection(cfg)
    assert isinstance(conn, KubeConnection) and conn.ca_cert == ca_pem
    agent = Agent(cfg, SecretClient(conn, strict=True), root=root, oem_dir=root / "oem", managed=False)
    marker = tmp_path / "ran"
    cs = _set_plan(operator, "m1", _touch_plan(marker))
    agent.step()
    assert marker.exists()
    assert _data(operator.ctx.store.get("Secret", NS, "m1"), "applied-checksum").decode() == cs
    assert isinstance(agent.client, SecretClient) and agent.client.wait_for_change(1) is False

    # another CA in the kubeconfig: with strict verify the agent refuses the server
    other_ca, _ = tls.make_ca("other")
    strict = SecretClient(
        KubeConnection(conn.server, conn.token, other_ca.decode(), conn.namespace, conn.secret_name),
        strict=True,
    )
    with pytest.raises(OperatorError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        strict.get_plan()


# ---- who may read and write what -------------------------------------------------------------


def test_wrong_token_refused(tmp_path: Path, operator: RunningOperator) -> None:
    inv = _inventory(operator, "m1")
    good = operator.ctx.agent_token(inv)
    bad = good.rpartition(":")[0] + ":" + "0" * 64
    before = operator.ctx.store.get("Secret", NS, "m1")
    for token in (bad, None, "garbage"):
        code, body = _http("GET", _secrets_url(operator, name="m1"), token)
        assert code == 401 and _is_status(body, 401, "Unauthorized"), (token, body)
        code, body = _http("PUT", _secrets_url(operator, name="m1"), token, before)
        assert code == 401 and _is_status(body, 401, "Unauthorized")
        code, _ = _http("GET", f"{operator.url}{CLUSTER}/version", token)
        assert code == 401
    assert (
        operator.ctx.store.get("Secret", NS, "m1")["metadata"]["resourceVersion"]
        == (before["metadata"]["resourceVersion"])
    )
    # the agent with a wrong token in its kubeconfig
    cfg = AgentConfig.load(_write_files(tmp_path, operator, inv, token=bad))
    conn = wait_for_connection(cfg)
    assert isinstance(conn, KubeConnection)
    with pytest.raises(OperatorError, match="401"):
        SecretClient(conn).get_plan()
    with pytest.raises(OperatorError, match="401"):
        SecretClient(conn).wait_for_change(1)


def test_another_machines_secret_refused(operator: RunningOperator) -> None:
    m1, _ = _inventory(operator, "m1"), _inventory(operator, "m2")
    token = operator.ctx.agent_token(m1)
    other = operator.ctx.store.get("Secret", NS, "m2")
    attempts: list[tuple[str, str, Any]] = [
        ("GET", _secrets_url(operator, name="m2"), None),
        ("PUT", _secrets_url(operator, name="m2"), other),
        ("GET", _secrets_url(operator, fieldSelector="metadata.name=m2"), None),
        ("GET", _secrets_url(operator, fieldSelector="metadata.name=m2", watch="true"), None),
        ("GET", _secrets_url(operator), None),  # a list without the field selector
        ("GET", _secrets_url(operator, watch="true"), None),
        ("GET", _secrets_url(operator, "default", "m1"), None),
        ("GET", _secrets_url(operator, "default", fieldSelector="metadata.name=m1"), None),
        ("DELETE", _secrets_url(operator, name="m1"), None),
        ("POST", _secrets_url(operator), other),
        ("PATCH", _secrets_url(operator, name="m1"), {"data": {}}),
    ]
    for method, url, body in attempts:
        code, reply = _http(method, url, token, body)
        assert code == 403 and _is_status(reply, 403, "Forbidden"), (method, url, reply)
    assert operator.ctx.store.get("Secret", NS, "m2") == other
    code, reply = _http("GET", f"{operator.url}{CLUSTER}/api/v1/namespaces/{NS}/configmaps/x", token)
    assert code in (403, 404) and reply["kind"] == "Status"


def test_update_conflict_and_operator_keys(operator: RunningOperator) -> None:
    inv = _inventory(operator, "m1")
    token = operator.ctx.agent_token(inv)
    url = _secrets_url(operator, name="m1")
    _, sec = _http("GET", url, token)

    # an agent key via data and via stringData: written, read back as base64
    sec["data"]["applied-checksum"] = base64.b64encode(b"abc").decode()
    code, updated = _http("PUT", url, token, {**sec, "stringData": {"success-count": "7"}})
    assert code == 200, updated
    assert _data(updated, "applied-checksum") == b"abc" and _data(updated, "success-count") == b"7"
    assert int(updated["metadata"]["resourceVersion"]) > int(sec["metadata"]["resourceVersion"])

    # as a Go client sends it: no TypeMeta, a nil []byte as null
    go_body = json.loads(json.dumps(updated))
    go_body.pop("kind")
    go_body.pop("apiVersion")
    go_body["data"]["applied-periodic-output"] = None
    code, updated = _http("PUT", url, token, go_body)
    assert code == 200, updated
    assert updated["data"]["applied-periodic-output"] == ""

    # the old resourceVersion again: 409 Conflict, as the API server answers
    code, reply = _http("PUT", url, token, sec)
    assert code == 409 and _is_status(reply, 409, "Conflict"), reply

    fresh = updated
    for change in (
        lambda s: s["data"].__setitem__("plan", base64.b64encode(b'{"files":[]}').decode()),
        lambda s: s["data"].__setitem__("max-failures", base64.b64encode(b"9").decode()),
        lambda s: s["metadata"].__setitem__("annotations", {"elemental.cattle.io/plan.type": "reset"}),
        lambda s: s["data"].pop("plan"),
    ):
        body = json.loads(json.dumps(fresh))
        change(body)
        code, reply = _http("PUT", url, token, body)
        assert code == 403 and _is_status(reply, 403, "Forbidden"), reply
    assert (
        operator.ctx.store.get("Secret", NS, "m1")["metadata"]["resourceVersion"]
        == (fresh["metadata"]["resourceVersion"])
    )
    bad = json.loads(json.dumps(fresh))
    bad["data"]["applied-checksum"] = "not base64!"
    code, reply = _http("PUT", url, token, bad)
    assert code == 422 and _is_status(reply, 422, "Invalid")
    code, reply = _http("PUT", url, token, {**fresh, "metadata": {**fresh["metadata"], "name": "m2"}})
    assert code == 400 and _is_status(reply, 400, "BadRequest")
    code, reply = _http("PUT", url, token, b"\x08\x01", ctype="application/vnd.kubernetes.protobuf")
    assert code == 415 and _is_status(reply, 415, "UnsupportedMediaType")


def test_list_watch_and_discovery_shapes(operator: RunningOperator) -> None:
    inv = _inventory(operator, "m1")
    _inventory(operator, "m2")
    token = operator.ctx.agent_token(inv)
    code, lst = _http("GET", _secrets_url(operator, fieldSelector="metadata.name=m1"), token)
    assert code == 200 and lst["kind"] == "SecretList" and lst["apiVersion"] == "v1"
    assert [s["metadata"]["name"] for s in lst["items"]] == ["m1"]
    assert int(lst["metadata"]["resourceVersion"]) >= int(lst["items"][0]["metadata"]["resourceVersion"])
    code, none = _http("GET", _secrets_url(operator, fieldSelector="metadata.name=m1,type=x"), token)
    assert code == 200 and none["items"] == []
    code, reply = _http("GET", _secrets_url(operator, fieldSelector="spec.foo=m1"), token)
    assert code == 400 and _is_status(reply, 400, "BadRequest")

    # a watch without resourceVersion: the Secret as ADDED, then its changes, one JSON per line
    url = _secrets_url(operator, fieldSelector="metadata.name==m1", watch="1", timeoutSeconds="20")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=20) as resp:
        first = json.loads(resp.readline())
        assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "m1"
        cs = _set_plan(operator, "m2", {"files": []})  # another machine's change: not seen
        cs = _set_plan(operator, "m1", {"files": []})
        ev = json.loads(resp.readline())
    assert ev["type"] == "MODIFIED" and ev["object"]["metadata"]["name"] == "m1"
    assert planlib.checksum(_data(ev["object"], "plan")) == cs

    # a watch from a resourceVersion the log no longer has ends with an ERROR Status (410)
    # is the store's business; a watch from a current one streams only newer events
    rv = ev["object"]["metadata"]["resourceVersion"]
    url = _secrets_url(
        operator, fieldSelector="metadata.name=m1", watch="true", resourceVersion=rv, timeoutSeconds="1"
    )
    with urllib.request.urlopen(
        urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}), timeout=20
    ) as resp:
        assert resp.read() == b""

    code, version = _http("GET", f"{operator.url}{CLUSTER}/version", token)
    assert code == 200 and version["major"] == "1" and version["gitVersion"]
    code, core = _http("GET", f"{operator.url}{CLUSTER}/api/v1", token)
    secrets = next(r for r in core["resources"] if r["name"] == "secrets")
    assert secrets["namespaced"] and set(secrets["verbs"]) == {"get", "list", "watch", "update"}
    code, reply = _http("GET", f"{operator.url}{CLUSTER}/apis/apps/v1", token)
    assert code == 404 and _is_status(reply, 404, "NotFound")


# ---- rancher-system-agent's keys and encodings -----------------------------------------------


def _check_encoding(encoding: str, raw: bytes) -> None:
    if encoding == "decimal":
        assert raw.decode().isdigit(), raw
    elif encoding == "sha256-hex":
        assert re.fullmatch(rb"(|[0-9a-f]{64})", raw), raw
    elif encoding == "unix-date":
        # Go's time.UnixDate: "Mon Jan _2 15:04:05 MST 2006"
        assert re.fullmatch(rb"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 1-3][0-9] \d\d:\d\d:\d\d [A-Z]+ \d{4}", raw), raw
        time.strptime(" ".join(raw.decode().split()), "%a %b %d %H:%M:%S %Z %Y")
    elif encoding == "gzip-json-map-base64":
        if raw:
            assert all(isinstance(v, str) for v in _go_output(raw).values())
    elif encoding == "gzip-json-periodic":
        fields = {
            "name",
            "stdout",
            "stderr",
            "exitCode",
            "lastSuccessfulRunTime",
            "failures",
            "lastFailedRunTime",
        }
        for rec in json.loads(gzip.decompress(raw)).values():
            assert set(rec) <= fields, rec
            base64.b64decode(rec["stdout"], validate=True)
    elif encoding == "json-probe-statuses":
        for st in json.loads(raw).values():
            assert set(st) <= {"healthy", "successCount", "failureCount"}
    elif encoding == "plan-json":
        json.loads(raw)
    else:
        raise AssertionError(f"no check for encoding {encoding}")


def test_plan_secret_keys_match_rancher_system_agent(tmp_path: Path, operator: RunningOperator) -> None:
    spec = json.loads((DATA / "secret-keys.json").read_text())
    keys: dict[str, dict[str, str]] = spec["keys"]
    assert spec["_provenance"]["rancher/system-agent"]["commit"]
    # what the server lets an agent write is exactly that agent's keys (plus our os-version, os-slot)
    agent_keys = {k for k, v in keys.items() if "agent" in v["writer"]}
    assert k8s_api.AGENT_KEYS == agent_keys | {"os-version", "os-slot"}
    assert not (set(keys) - agent_keys) & k8s_api.AGENT_KEYS

    inv = _inventory(operator, "m1")
    agent = _agent(tmp_path, operator, inv)
    marker = tmp_path / "ran"
    plan = _touch_plan(marker)
    plan["periodicInstructions"] = [{"name": "uptime", "command": "/bin/sh", "args": ["-c", "echo up"]}]
    _set_plan(operator, "m1", plan)
    agent.step()
    sec = operator.ctx.store.get("Secret", NS, "m1")
    written = set(sec["data"])
    assert {
        "plan",
        "applied-checksum",
        "applied-output",
        "applied-periodic-output",
        "failure-count",
    } <= written
    for key in sorted(written):
        if key in ("os-version", "os-slot"):
            continue  # ours, beside rancher-system-agent's
        assert key in keys, f"{key} is not one of rancher-system-agent's Secret keys"
        _check_encoding(keys[key]["encoding"], _data(sec, key))
    periodic = json.loads(gzip.decompress(_data(sec, "applied-periodic-output")))
    assert base64.b64decode(periodic["uptime"]["stdout"]) == b"up\n"
