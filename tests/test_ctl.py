"""elementalctl round trips of every kind against a running operator (both stores)."""

# ruff: noqa: F811  (pytest fixtures imported from operator_fixtures)

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_fixtures import RunningOperator, operator, postgres_server, store, store_url, wait_for  # noqa: F401
from waiting import wait_until

from elemental_operator import ctl

NS = "fleet-default"
API = "elemental.cattle.io/v1beta1"

EVERY_KIND: list[dict[str, Any]] = [
    {
        "apiVersion": API,
        "kind": "MachineRegistration",
        "metadata": {"name": "reg", "labels": {"a": "b"}},
        "spec": {
            "machineName": "m-${System Information/UUID}",
            "machineInventoryLabels": {"manufacturer": "${System Information/Manufacturer}"},
            "config": {"elemental": {"install": {"device": "/dev/vda"}}},
        },
    },
    {
        "apiVersion": API,
        "kind": "MachineInventory",
        "metadata": {"name": "m1", "labels": {"element": "fire"}},
        "spec": {"tpmHash": "abc"},
    },
    {
        "apiVersion": API,
        "kind": "MachineInventorySelector",
        "metadata": {"name": "sel"},
        "spec": {"selector": {"matchLabels": {"element": "water"}}},
    },
    {
        "apiVersion": API,
        "kind": "MachineInventorySelectorTemplate",
        "metadata": {"name": "tpl"},
        "spec": {
            "template": {
                "spec": {
                    "selector": {
                        "matchExpressions": [{"key": "element", "operator": "In", "values": ["fire"]}]
                    }
                }
            }
        },
    },
    {
        "apiVersion": API,
        "kind": "ManagedOSImage",
        "metadata": {"name": "up"},
        "spec": {"osImage": "registry/os:v2", "nodeSelector": {"matchLabels": {"none": "x"}}},
    },
    {
        "apiVersion": API,
        "kind": "ManagedOSVersion",
        "metadata": {"name": "v1"},
        "spec": {"version": "v1", "type": "container", "metadata": {"upgradeImage": "registry/os:v1"}},
    },
    {
        "apiVersion": API,
        "kind": "ManagedOSVersionChannel",
        "metadata": {"name": "ch"},
        "spec": {"type": "json", "enabled": False, "options": {"uri": "/nonexistent.json"}},
    },
    {
        "apiVersion": API,
        "kind": "SeedImage",
        "metadata": {"name": "seed"},
        "spec": {"registrationRef": {"name": "reg", "namespace": NS}, "cleanupAfterMinutes": 0},
    },
    {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "boot"},
        "stringData": {"value": "#!/bin/sh\n"},
    },
]


def contains(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(contains(actual.get(k), v) for k, v in expected.items())
    return bool(actual == expected)


def run(op: RunningOperator, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = ctl.main(["--server", op.url, "--token", op.token, *argv], out=out)
    return rc, out.getvalue()


def test_roundtrip_every_kind(operator: RunningOperator, tmp_path: Path) -> None:
    manifest = tmp_path / "all.yaml"
    manifest.write_text(yaml.safe_dump_all(EVERY_KIND, sort_keys=False))
    rc, out = run(operator, "apply", "-f", str(manifest))
    assert rc == 0, out
    assert out.count(" created") == len(EVERY_KIND)
    for doc in EVERY_KIND:
        kind, name = doc["kind"], doc["metadata"]["name"]
        rc, text = run(operator, "get", kind, name, "-o", "yaml")
        assert rc == 0
        obj = yaml.safe_load(text)
        assert obj["kind"] == kind and obj["metadata"]["name"] == name and obj["metadata"]["namespace"] == NS
        assert contains(obj.get("spec"), doc.get("spec")), kind  # plus CRD defaults
        rc, js = run(operator, "get", kind, name, "-o", "json")
        assert json.loads(js)["metadata"]["uid"] == obj["metadata"]["uid"]
        rc, table = run(operator, "get", kind)
        assert rc == 0 and table.splitlines()[0].startswith("NAME") and name in table
        rc, text = run(operator, "describe", kind, name)
        assert rc == 0 and f"Name:         {name}" in text
    # re-applying the same file changes nothing that the file states
    rc, out = run(operator, "apply", "-f", str(manifest))
    assert rc == 0 and "created" not in out
    # delete everything through the same file (kubectl delete -f)
    # (the SeedImage may already be gone: it is garbage-collected with its registration)
    rc, out = run(operator, "delete", "-f", str(manifest), "--ignore-not-found")
    assert rc == 0, out
    wait_for(
        lambda: all(not operator.ctx.store.list(d["kind"], NS) for d in EVERY_KIND if d["kind"] != "Secret"),
        timeout=20,
    )


def test_apply_updates_and_reports_validation_errors(operator: RunningOperator, tmp_path: Path) -> None:
    f = tmp_path / "reg.yaml"
    doc = EVERY_KIND[0]
    f.write_text(yaml.safe_dump(doc))
    assert run(operator, "apply", "-f", str(f))[0] == 0
    doc2 = json.loads(json.dumps(doc))
    doc2["spec"]["machineName"] = "custom-${System Information/Serial Number}"
    f.write_text(yaml.safe_dump(doc2))
    rc, out = run(operator, "apply", "-f", str(f))
    assert rc == 0 and "reg configured" in out
    reg = operator.ctx.store.get("MachineRegistration", NS, "reg")
    assert reg["spec"]["machineName"].startswith("custom-") and reg["metadata"]["generation"] == 2
    doc2["spec"]["config"]["elemental"]["install"]["devise"] = "/dev/sdz"
    f.write_text(yaml.safe_dump(doc2))
    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        rc, _ = run(operator, "apply", "-f", str(f))
    finally:
        sys.stderr = old
    assert rc == 1 and "spec.config.elemental.install.devise: unknown field" in err.getvalue()


def test_get_wide_selector_all_namespaces_and_name_output(operator: RunningOperator) -> None:
    s = operator.ctx.store
    for name, ns, labels in (("a", NS, {"x": "1"}), ("b", NS, {"x": "2"}), ("c", "other", {"x": "1"})):
        s.create(
            {
                "apiVersion": API,
                "kind": "MachineInventory",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
            }
        )
    wait_for(lambda: all((i.get("status") or {}).get("plan") for i in s.list("MachineInventory")))
    rc, out = run(operator, "get", "mi", "-A", "-l", "x=1")
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"] and len(lines) == 3
    rc, out = run(operator, "get", "machineinventories", "-o", "wide")
    assert "ADOPTED" in out.splitlines()[0] and "WaitingForPlan" in out
    rc, out = run(operator, "get", "inventory", "-o", "name")
    # kubectl prints CRD objects as kind.group/name
    assert out.split() == ["machineinventory.elemental.cattle.io/a", "machineinventory.elemental.cattle.io/b"]
    rc, out = run(operator, "-n", "other", "get", "mi")
    assert out.splitlines()[1].startswith("c ")


def test_watch_and_edit(operator: RunningOperator, tmp_path: Path) -> None:
    out = io.StringIO()

    def watcher() -> None:
        ctl.main(
            ["--server", operator.url, "--token", operator.token, "get", "mr", "-w", "--timeout", "4"],
            out=out,
        )

    # A registration that exists before the watch: it arrives as ADDED from the watch's initial
    # list, so its line shows that the watch is established and streams what happens next.
    operator.ctx.store.create({**EVERY_KIND[0], "metadata": {"name": "before", "namespace": NS}})
    t = threading.Thread(target=watcher)
    t.start()
    wait_until(lambda: "before" in out.getvalue(), 3, what="the watch's initial list")
    operator.ctx.store.create({**EVERY_KIND[0], "metadata": {"name": "reg", "namespace": NS}})
    t.join(20)
    lines = out.getvalue().splitlines()
    reg = [line.split()[0] + (" True" if "True" in line else "") for line in lines if "reg" in line.split()]
    assert lines[0].startswith("EVENT") and "ADDED" in reg, lines
    assert "MODIFIED True" in reg, lines  # became Ready

    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/machineName: .*/machineName: edited/' \"$1\"\n")
    editor.chmod(0o755)
    os.environ["ELEMENTALCTL_EDITOR"] = str(editor)
    try:
        wait_for(lambda: bool(operator.ctx.store.get("MachineRegistration", NS, "reg").get("status")))
        for _ in range(10):  # the controller may write in between: edit retries like the user would
            rc, out2 = run(operator, "edit", "machineregistration", "reg")
            if rc == 0:
                break
        assert rc == 0 and "edited" in out2
    finally:
        del os.environ["ELEMENTALCTL_EDITOR"]
    assert operator.ctx.store.get("MachineRegistration", NS, "reg")["spec"]["machineName"] == "edited"


def test_cli_entry_points_and_errors(operator: RunningOperator, tmp_path: Path) -> None:
    env = {**os.environ, "ELEMENTAL_SERVER": operator.url, "ELEMENTAL_TOKEN": operator.token}
    res = subprocess.run(
        [sys.executable, "-m", "elemental_operator.ctl", "get", "mr"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "No resources found" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "elemental_operator.ctl", "get", "nosuchkind"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and 'doesn\'t have a resource type "nosuchkind"' in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "elemental_operator.ctl", "get", "mr", "missing"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert '(NotFound): machineregistrations.elemental.cattle.io "missing" not found' in res.stderr
    bad = {**env, "ELEMENTAL_TOKEN": "wrong"}
    res = subprocess.run(
        [sys.executable, "-m", "elemental_operator.ctl", "get", "mr"],
        env=bad,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        res.returncode == 1 and "Error from server (Unauthorized): admin bearer token required" in res.stderr
    )


@pytest.mark.parametrize("what", ["gen-crds", "gen-chart"])
def test_generators(tmp_path: Path, what: str) -> None:
    from elemental_operator import cli

    if what == "gen-crds":
        assert cli.main(["gen-crds", "-o", str(tmp_path / "crds.yaml")]) == 0
        docs = list(yaml.safe_load_all((tmp_path / "crds.yaml").read_text()))
        assert len(docs) == 9 and all(d["kind"] == "CustomResourceDefinition" for d in docs)
    else:
        assert cli.main(["gen-chart", str(tmp_path / "chart")]) == 0
        assert (tmp_path / "chart" / "Chart.yaml").exists()
