"""The system agent against the real operator (in-process server + controllers, SQLite store)."""
# ruff: noqa: F811  (pytest fixtures imported from operator_fixtures)

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

from operator_fixtures import (  # noqa: F401
    RunningOperator,
    operator,
    postgres_server,
    store,
    store_url,
    wait_for,
)

from elemental_operator.api import API_VERSION
from elemental_operator.controllers.base import condition_true, encode_plan, secret_get
from elemental_register.agent import plan as planlib
from elemental_register.agent.agent import Agent
from elemental_register.agent.config import AgentConfig
from elemental_register.agent.k8s import KubeConnection, SecretClient
from elemental_register.installer import api

NS = "fleet-default"


def _inventory(op: RunningOperator, name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    st = op.ctx.store
    st.create(
        {
            "apiVersion": API_VERSION,
            "kind": "MachineInventory",
            "metadata": {"name": name, "namespace": NS, "annotations": annotations or {}},
            "spec": {"tpmHash": "h-" + name},
        }
    )
    wait_for(
        lambda: (
            bool(st.list("Secret", NS))
            and "plan" in (st.get("MachineInventory", NS, name).get("status") or {})
        )
    )
    return st.get("MachineInventory", NS, name)


def _agent(root: Path, op: RunningOperator, inv: dict[str, Any]) -> Agent:
    # the same files the installer / no-toolkit registration writes
    config = {
        "elemental": {
            "registration": {"url": op.url + "/reg", "ca-cert": ""},
            "system-agent": {
                "url": op.url,
                "token": op.ctx.agent_token(inv),
                "secret-name": inv["metadata"]["name"],
                "secret-namespace": NS,
            },
        }
    }
    api.install_unmanaged(config, root)
    cfg = AgentConfig.load(root / "etc/rancher/elemental/agent/config.yaml")
    cfg.work_directory = root / "var/lib/elemental/agent/work"
    cfg.applied_plan_directory = root / "var/lib/elemental/agent/applied"
    # what the installer writes: rancher-system-agent's connection file, spoken as the Secret API
    conn = KubeConnection.load(root / "var/lib/elemental/agent/elemental_connection.json")
    (root / "etc/os-release").write_text("IMAGE_VERSION=0.1.0\n")
    return Agent(cfg, SecretClient(conn), root=root, oem_dir=root / "oem", managed=False)


def go_output(raw: bytes) -> dict[str, str]:
    """rancher-system-agent's applied-output: gzip of JSON {name: base64(output)}."""
    return {k: base64.b64decode(v).decode() for k, v in json.loads(gzip.decompress(raw)).items()}


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


def test_agent_applies_operator_plan_and_reports(tmp_path: Path, operator: RunningOperator) -> None:
    inv = _inventory(operator, "m1")
    agent = _agent(tmp_path, operator, inv)
    agent.step()  # the empty plan "{}"
    sec = operator.ctx.store.get("Secret", NS, "m1")
    assert secret_get(sec, "applied-checksum") == planlib.checksum(b"{}")
    assert secret_get(sec, "os-version") == "0.1.0"
    wait_for(lambda: condition_true(operator.ctx.store.get("MachineInventory", NS, "m1"), "Ready"))

    marker = tmp_path / "ran"
    cs = _set_plan(
        operator,
        "m1",
        {
            "files": [
                {
                    "path": "/etc/hostname-from-plan",
                    "content": base64.b64encode(b"m1\n").decode(),
                    "permissions": "0644",
                }
            ],
            "instructions": [
                {
                    "name": "touch",
                    "command": "/bin/sh",
                    "args": ["-c", f"echo ok; touch {marker}"],
                    "saveOutput": True,
                }
            ],
        },
    )
    agent.step()
    sec = operator.ctx.store.get("Secret", NS, "m1")
    assert secret_get(sec, "applied-checksum") == cs
    assert go_output(base64.b64decode(sec["data"]["applied-output"])) == {"touch": "ok\n"}
    assert (tmp_path / "etc/hostname-from-plan").read_text() == "m1\n" and marker.exists()


def test_unmanaged_reset_plan_from_operator(tmp_path: Path, operator: RunningOperator) -> None:
    inv = _inventory(
        operator, "m2", {"elemental.cattle.io/resettable": "true", "elemental.cattle.io/os.unmanaged": "true"}
    )
    agent = _agent(tmp_path, operator, inv)
    agent.step()
    operator.ctx.store.delete("MachineInventory", NS, "m2")

    def reset_plan_served() -> bool:
        doc = agent.client.get_plan()
        return bool(doc and doc.get("planType") == "reset")

    wait_for(reset_plan_served)
    agent.step()
    marker = tmp_path / "var/lib/elemental/.unmanaged_reset"
    assert marker.is_file() and marker.stat().st_mode & 0o777 == 0o600
    # the operator finishes the deletion once the reset plan is applied
    doc = agent.client.get_plan() if operator.ctx.store.list("MachineInventory", NS) else None
    assert doc is None or json.loads(doc["plan"]).get("files")
