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


# ---- the pure layers under the verbs: patches (RFC 7386, RFC 6902, strategic) and JSONPath ------


def test_merge_patch_rfc7386_examples() -> None:
    from elemental_operator.api.patch import merge_patch

    # from RFC 7386 appendix A
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


def test_json_patch_rfc6902_operations() -> None:
    from elemental_operator.api.patch import PatchError, json_patch

    doc = {"foo": ["bar", "baz"], "a/b": 1, "m~n": 2}
    assert json_patch(doc, [{"op": "add", "path": "/foo/1", "value": "qux"}])["foo"] == ["bar", "qux", "baz"]
    assert json_patch(doc, [{"op": "add", "path": "/foo/-", "value": "end"}])["foo"][-1] == "end"
    assert json_patch(doc, [{"op": "remove", "path": "/a~1b"}]) == {"foo": ["bar", "baz"], "m~n": 2}
    assert json_patch(doc, [{"op": "replace", "path": "/m~0n", "value": 3}])["m~n"] == 3
    moved = json_patch(doc, [{"op": "move", "from": "/foo/0", "path": "/first"}])
    assert moved["first"] == "bar" and moved["foo"] == ["baz"]
    assert json_patch(doc, [{"op": "copy", "from": "/foo", "path": "/bar"}])["bar"] == ["bar", "baz"]
    assert json_patch(doc, [{"op": "test", "path": "/foo/0", "value": "bar"}]) == doc
    assert doc == {"foo": ["bar", "baz"], "a/b": 1, "m~n": 2}  # the input is never changed
    for ops, message in (
        ([{"op": "replace", "path": "/nope", "value": 1}], "path '/nope' does not exist"),
        ([{"op": "add", "path": "/foo/9", "value": 1}], "index '9' out of range"),
        ([{"op": "frob", "path": "/foo"}], "unknown op 'frob'"),
        ([{"op": "add", "path": "/x"}], "needs 'value'"),
        ([{"op": "move", "path": "/x"}], "needs 'from'"),
        ([{"path": "/x"}], "needs 'op' and 'path'"),
        ([{"op": "add", "path": "x", "value": 1}], "must start with '/'"),
    ):
        with pytest.raises(PatchError, match=message.replace("[", r"\[")):
            json_patch(doc, ops)


def test_strategic_merge_keys_conditions_by_type_and_named_items_by_name() -> None:
    from elemental_operator.api.patch import strategic_merge

    cur = {
        "status": {
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "Adopted", "status": "True"}]
        },
        "spec": {"envs": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "args": ["x", "y"]},
    }
    patch = {
        "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "New", "status": "True"}]},
        "spec": {"envs": [{"name": "B", "value": "3"}, {"name": "A", "$patch": "delete"}], "args": ["z"]},
    }
    out = strategic_merge(cur, patch)
    assert out["status"]["conditions"] == [
        {"type": "Ready", "status": "True"},
        {"type": "Adopted", "status": "True"},
        {"type": "New", "status": "True"},
    ]
    assert out["spec"]["envs"] == [{"name": "B", "value": "3"}]
    assert out["spec"]["args"] == ["z"]  # lists of scalars are replaced, as in Kubernetes


def test_jsonpath_templates_as_kubectl_writes_them() -> None:
    from elemental_operator.ctl import jsonpath

    data = {
        "items": [
            {
                "metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "x"}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}], "n": 2, "ok": True},
            },
            {"metadata": {"name": "b"}},
        ]
    }
    assert jsonpath.render("{.items[*].metadata.name}", data) == "a b"
    assert jsonpath.render('{range .items[*]}{.metadata.name}{"\\t"}{end}', data) == "a\tb\t"
    assert jsonpath.render('{.items[0].status.conditions[?(@.type=="Ready")].status}', data) == "True"
    assert jsonpath.render(r"{.items[0].metadata.labels.app\.kubernetes\.io/name}", data) == "x"
    assert jsonpath.render("{.items[0].metadata.labels['app.kubernetes.io/name']}", data) == "x"
    assert jsonpath.render("{.items[0].status.ok} {.items[0].status.n}", data) == "true 2"
    assert jsonpath.render("{.items[0].status.conditions}", data) == '[{"type":"Ready","status":"True"}]'
    assert jsonpath.render("{.items[1].status.n}", data) == ""  # missing: empty, as kubectl
    assert jsonpath.render("{.items[-1].metadata.name}", data) == "b"
    assert jsonpath.render(".items[0].metadata.name", data) == "a"  # no braces: one path
    assert jsonpath.render('x{"}"}y', data) == "x}y"  # braces inside a literal
    assert (
        jsonpath.render("{range .items[*]}[{range .status.conditions[*]}{.type}{end}]{end}", data)
        == "[Ready][]"
    )


@pytest.mark.parametrize(
    "spelling,kind",
    [
        ("mr", "MachineRegistration"),
        ("MachineRegistration", "MachineRegistration"),
        ("machineregistrations.elemental.cattle.io", "MachineRegistration"),
        ("machineregistration.v1beta1.elemental.cattle.io", "MachineRegistration"),
        ("mi", "MachineInventory"),
        ("inventories", "MachineInventory"),
        ("mis", "MachineInventorySelector"),
        ("miselector", "MachineInventorySelector"),
        ("mist", "MachineInventorySelectorTemplate"),
        ("mos", "ManagedOSImage"),
        ("managedosimage", "ManagedOSImage"),
        ("mosv", "ManagedOSVersion"),
        ("mosvc", "ManagedOSVersionChannel"),
        ("si", "SeedImage"),
        ("seedimages.elemental.cattle.io", "SeedImage"),
        ("secrets", "Secret"),
        ("secret.v1", "Secret"),
        ("metadata", "Metadata"),
    ],
)
def test_resource_spellings(spelling: str, kind: str) -> None:
    from elemental_operator.ctl.resources import resolve_type

    assert resolve_type(spelling).kind == kind


def test_resource_arguments() -> None:
    from elemental_operator.ctl.client import CtlError
    from elemental_operator.ctl.resources import parse

    def kinds_names(args: list[str]) -> list[tuple[str, list[str]]]:
        return [(t.info.kind, t.names) for t in parse(args)]

    assert kinds_names(["mr,mi"]) == [("MachineRegistration", []), ("MachineInventory", [])]
    assert kinds_names(["mr", "a", "b"]) == [("MachineRegistration", ["a", "b"])]
    assert kinds_names(["mr/a", "mi/b", "mr/c"]) == [
        ("MachineRegistration", ["a", "c"]),
        ("MachineInventory", ["b"]),
    ]
    assert [k for k, _ in kinds_names(["all"])] == [
        "MachineRegistration",
        "MachineInventory",
        "MachineInventorySelector",
        "MachineInventorySelectorTemplate",
        "ManagedOSImage",
        "ManagedOSVersion",
        "ManagedOSVersionChannel",
        "SeedImage",
        "Metadata",
    ]
    assert kinds_names(["mr,mr,machineregistrations"]) == [("MachineRegistration", [])]
    for bad in (["secrets.elemental.cattle.io"], ["mr.apps"], ["mr.v2.elemental.cattle.io"]):
        with pytest.raises(CtlError, match="doesn't have a resource type"):
            parse(bad)


GO_DATA = {
    "kind": "List",
    "items": [
        {
            "metadata": {"name": "a", "labels": {"x": "1", "y": "2"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "n": 3},
        },
        {"metadata": {"name": "b"}, "status": {"n": 1}},
    ],
    "data": {"token": "aGVsbG8="},
}


@pytest.mark.parametrize(
    "template,expected",
    [
        ('{{range .items}}{{.metadata.name}}{{"\\n"}}{{end}}', "a\nb\n"),
        ("{{range $i, $e := .items}}{{$i}}={{$e.metadata.name}} {{end}}", "0=a 1=b "),
        ("{{(index .items 0).metadata.name}}", "a"),
        ('{{index (index .items 0).metadata.labels "x"}}', "1"),
        ("{{range $k, $v := (index .items 0).metadata.labels}}{{$k}}={{$v}},{{end}}", "x=1,y=2,"),
        (
            "{{range .items}}{{if .metadata.labels}}{{.metadata.name}}:{{len .metadata.labels}}"
            "{{else}}{{.metadata.name}}:-{{end}};{{end}}",
            "a:2;b:-;",
        ),
        ("{{.data.token | base64decode}}", "hello"),
        (
            '{{range .items}}{{range .status.conditions}}{{if eq .type "Ready"}}{{.status}}{{end}}'
            "{{end}}{{end}}",
            "True",
        ),
        ("{{.nope}} {{.nope.deeper}}", "<no value> <no value>"),
        ("{{.items | len}}", "2"),
        (
            "{{range .items}}{{if gt .status.n 2}}big{{else if eq .status.n 1}}one{{else}}x{{end}} {{end}}",
            "big one ",
        ),
        ("{{with .data}}{{.token}}{{end}}{{with .nope}}x{{else}}none{{end}}", "aGVsbG8=none"),
        ("{{- range .items }}\n  {{ .metadata.name -}}\n{{ end }}", "\n  a\n  b"),
        ('{{printf "%-5s|%3d|%q|%v" "ab" 7 "q" true}}', 'ab   |  7|"q"|true'),
        ("{{$n := 0}}{{range .items}}{{$n = .status.n}}{{end}}{{$n}}", "1"),
        ('{{range .items}}{{if eq .metadata.name "a"}}{{continue}}{{end}}{{.metadata.name}}{{end}}', "b"),
        ("{{range .items}}{{.metadata.name}}{{break}}{{end}}", "a"),
        ('{{index .items 1 "metadata"}}', "map[name:b]"),
        ('{{/* a comment */}}{{and 1 0}} {{or 0 "x"}} {{not true}} {{or .nope "dflt"}}', "0 x false dflt"),
        ("{{$.kind}} {{ (index .items 0).status.conditions }}", "List [map[status:True type:Ready]]"),
        ("{{range .nope}}x{{else}}empty{{end}}", "empty"),
    ],
)
def test_go_template_subset_follows_go(template: str, expected: str) -> None:
    from elemental_operator.ctl.gotemplate import render

    assert render(template, GO_DATA) == expected


@pytest.mark.parametrize(
    "template,error",
    [
        ("{{.a", "error parsing template {{.a, unclosed action"),
        ("{{if .a}}x", "error parsing template {{if .a}}x, unexpected EOF"),
        ("{{end}}", "unexpected {{end}}"),
        ("{{else}}", "unexpected {{else}}"),
        ('{{template "x"}}', "{{template}} is not supported"),
        ("{{break}}", "{{break}} outside {{range}}"),
        ("{{.a | }}", "missing value for command"),
    ],
)
def test_go_template_parse_errors_are_one_line(template: str, error: str) -> None:
    from elemental_operator.ctl.client import CtlError
    from elemental_operator.ctl.gotemplate import check

    with pytest.raises(CtlError) as err:
        check(template)
    assert error in err.value.message and "\n" not in err.value.message


def test_go_template_execution_errors() -> None:
    from elemental_operator.ctl.client import CtlError
    from elemental_operator.ctl.gotemplate import render

    for template, error in (
        ("{{foo .a}}", 'function "foo" not defined'),
        ("{{index .items 9}}", "index out of range: 9"),
        ('{{"x" | base64decode}}', "error calling base64decode"),
        ("{{.data.token.x}}", "can't evaluate field x in type str"),
        ("{{len 3}}", "error calling len"),
        ('{{lt 1 "a"}}', "incompatible types for comparison"),
    ):
        with pytest.raises(CtlError, match="error executing template") as err:
            render(template, GO_DATA)
        assert error in err.value.message, template
