"""Elemental's documented ``kubectl`` command lines, with ``elementalctl`` in place of ``kubectl``,
against a live operator; plus every error path the kubectl habits added (one line, exit 1)."""

# ruff: noqa: F811, E501  (pytest fixtures imported from operator_fixtures; the command lines and
# their one-line errors are kept whole, as a user types and reads them)

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_fixtures import RunningOperator, operator, postgres_server, store, store_url  # noqa: F401
from waiting import wait_until

from elemental_operator import ctl
from elemental_operator.ctl.client import Client

NS = "fleet-default"
API = "elemental.cattle.io/v1beta1"

# The quickstart registration and seed image of Elemental's docs (quickstart-cli.md).
REGISTRATION = f"""\
apiVersion: {API}
kind: MachineRegistration
metadata:
  name: my-nodes
  namespace: fleet-default
spec:
  config:
    elemental:
      install:
        reboot: true
        device: /dev/sda
        debug: true
  machineName: my-machine
  machineInventoryLabels:
    element: fire
"""
SEEDIMAGE = f"""\
apiVersion: {API}
kind: SeedImage
metadata:
  name: fire-img
  namespace: fleet-default
spec:
  type: iso
  registrationRef:
    apiVersion: {API}
    kind: MachineRegistration
    name: my-nodes
    namespace: fleet-default
"""
INVENTORY = f"""\
apiVersion: {API}
kind: MachineInventory
metadata:
  name: m1
  namespace: fleet-default
spec:
  tpmHash: abc
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging to stderr (where the tests read elementalctl's errors)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def sh(
    operator: RunningOperator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Shell]:
    monkeypatch.setenv("ELEMENTALCTL_CONFIG", str(tmp_path / "ctl-config"))
    monkeypatch.chdir(tmp_path)
    for name, text in (
        ("registration.yaml", REGISTRATION),
        ("seedimage.yaml", SEEDIMAGE),
        ("mi.yaml", INVENTORY),
    ):
        (tmp_path / name).write_text(text)
    yield Shell(operator, capsys)


class Shell:
    """Runs one command line as a shell would split it, with the test operator's connection."""

    def __init__(self, op: RunningOperator, capsys: pytest.CaptureFixture[str]) -> None:
        self.op = op
        self.capsys = capsys

    def __call__(self, line: str, stdin: str = "", connect: bool = True) -> tuple[int, str, str]:
        argv = shlex.split(line)
        assert argv[0] == "elementalctl"
        conn = ["--server", self.op.url, "--token", self.op.token] if connect else []
        out = io.StringIO()
        self.capsys.readouterr()
        old = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            rc = ctl.main([*argv[1:], *conn], out=out)
        finally:
            sys.stdin = old
        return rc, out.getvalue(), self.capsys.readouterr().err

    def ok(self, line: str, stdin: str = "", connect: bool = True) -> str:
        rc, out, err = self(line, stdin, connect)
        assert rc == 0, f"{line}: {err}"
        return out

    def fails(self, line: str, stdin: str = "") -> str:
        """The command exits 1 with its error on ONE line of stderr."""
        rc, _, err = self(line, stdin)
        assert rc == 1, line
        lines = [e for e in err.splitlines() if e.strip()]
        assert len(lines) == 1, err
        return lines[0]


def test_documented_registration_and_seed_image_lines(sh: Shell) -> None:
    assert sh.ok("elementalctl apply -f registration.yaml") == (
        "machineregistration.elemental.cattle.io/my-nodes created\n"
    )
    out = sh.ok(
        "elementalctl wait --for=condition=Ready machineregistration -n fleet-default my-nodes --timeout=30s"
    )
    assert out == "machineregistration.elemental.cattle.io/my-nodes condition met\n"
    url = sh.ok(
        'elementalctl get machineregistration -n fleet-default my-nodes -o jsonpath="{.status.registrationURL}"'
    )
    assert url.startswith(sh.op.url + "/elemental/registration/") and "\n" not in url
    # flags before the name (the docs' own order) and the short name
    assert sh.ok("elementalctl get mr -n fleet-default my-nodes -o jsonpath={.status.registrationURL}") == url
    assert sh.ok("elementalctl apply -f seedimage.yaml").endswith(
        "seedimage.elemental.cattle.io/fire-img created\n"
    )
    sh.ok(
        "elementalctl wait --for=condition=SeedImageReady seedimage/fire-img -n fleet-default --timeout=60s"
    )
    download = sh.ok(
        'elementalctl get seedimage -n fleet-default fire-img -o jsonpath="{.status.downloadURL}"'
    )
    assert download.startswith(sh.op.url + "/elemental/seedimage/")
    # the docs' other spelling, and the braces with a newline literal
    assert (
        sh.ok(
            'elementalctl get seedimages.elemental.cattle.io -n fleet-default fire-img -o jsonpath="{.status.downloadURL}"'
        )
        == download
    )
    assert sh.ok(
        """elementalctl get seedimage -n fleet-default fire-img -o jsonpath='{.status.downloadURL}{"\\n"}'"""
    ) == (download + "\n")
    # "kubectl wait --for=condition=ready pod -n fleet-default fire-img": no pods here, and the error says what to run
    assert sh.fails("elementalctl wait --for=condition=ready pod -n fleet-default fire-img") == (
        'elementalctl: error: the server doesn\'t have a resource type "pod": the operator runs no pods; '
        "a seed image is ready when: elementalctl wait --for=condition=SeedImageReady seedimage/NAME"
    )
    checksum = sh.ok("elementalctl get seedimage fire-img -o jsonpath={.status.checksumURL}")
    assert checksum == download + ".sha256"
    # the docs' JSONPath with range and a literal, and the plural.group spelling
    names = sh.ok(
        "elementalctl get machineregistrations.elemental.cattle.io -o jsonpath='{range .items[*]}{.metadata.name}{\"\\n\"}{end}'"
    )
    assert names == "my-nodes\n"
    ready = sh.ok(
        "elementalctl get mr my-nodes -o 'jsonpath={.status.conditions[?(@.type==\"Ready\")].status}'"
    )
    assert ready == "True"
    # the same reads as Go templates (kubectl's -o go-template, elementalctl's documented subset)
    assert (
        sh.ok("""elementalctl get mr -o go-template='{{range .items}}{{.metadata.name}}{{"\\n"}}{{end}}'""")
        == "my-nodes\n"
    )
    assert sh.ok("elementalctl get seedimage fire-img -o go-template={{.status.downloadURL}}") == download
    (Path.cwd() / "ready.tmpl").write_text(
        '{{range .status.conditions}}{{if eq .type "Ready"}}{{.status}}{{end}}{{end}}'
    )
    assert sh.ok("elementalctl get mr my-nodes -o go-template-file=ready.tmpl") == "True"
    assert sh.fails("elementalctl get mr my-nodes -o go-template='{{if .x}}'").startswith(
        "elementalctl: error: error parsing template {{if .x}}, unexpected EOF"
    )


def test_get_lists_comma_all_and_output_flags(sh: Shell) -> None:
    sh.ok("elementalctl apply -f registration.yaml -f mi.yaml")
    out = sh.ok("elementalctl get mr,mi")
    tables = out.split("\n\n")
    assert len(tables) == 2
    assert tables[0].splitlines()[1].startswith("machineregistration.elemental.cattle.io/my-nodes")
    assert tables[1].splitlines()[1].startswith("machineinventory.elemental.cattle.io/m1")
    assert "machineinventory.elemental.cattle.io/m1" in sh.ok("elementalctl get all")
    assert sh.ok("elementalctl get mr/my-nodes mi/m1 -o name") == (
        "machineregistration.elemental.cattle.io/my-nodes\nmachineinventory.elemental.cattle.io/m1\n"
    )
    sh.ok("elementalctl label mi m1 element=fire zone=a")
    out = sh.ok("elementalctl get mi --show-labels --no-headers")
    assert out.startswith("m1 ") and out.rstrip().endswith("element=fire,zone=a")
    out = sh.ok("elementalctl get mi -L element -L zone")
    assert out.splitlines()[0].split()[-2:] == ["ELEMENT", "ZONE"] and out.splitlines()[1].split()[-2:] == [
        "fire",
        "a",
    ]
    out = sh.ok(
        "elementalctl get mi,mr -o custom-columns=NAME:.metadata.name,KIND:.kind,LABEL:.metadata.labels.zone"
    )
    assert out.splitlines() == [
        "NAME       KIND                  LABEL",
        "m1         MachineInventory      a",
        "my-nodes   MachineRegistration   <none>",
    ]
    Path("cols.txt").write_text("NAME KIND\n.metadata.name .kind\n")
    assert sh.ok("elementalctl get mi -o custom-columns-file=cols.txt --no-headers").split() == [
        "m1",
        "MachineInventory",
    ]
    Path("tmpl.txt").write_text('{range .items[*]}{.metadata.name}={.metadata.labels.element}{"\\n"}{end}')
    assert sh.ok("elementalctl get mi -o jsonpath-file=tmpl.txt") == "m1=fire\n"
    sh.ok("elementalctl apply -f -", stdin=INVENTORY.replace("m1", "m0").replace("abc", "zzz"))
    assert sh.ok("elementalctl get mi -o name --sort-by=.spec.tpmHash").split() == [
        "machineinventory.elemental.cattle.io/m1",
        "machineinventory.elemental.cattle.io/m0",
    ]
    assert sh.ok("elementalctl get mi -l element=fire -o jsonpath={.items[*].metadata.name}") == "m1"
    assert json.loads(sh.ok("elementalctl get mi m1 -o json"))["metadata"]["name"] == "m1"
    assert yaml.safe_load(sh.ok("elementalctl get mi -o yaml"))["kind"] == "List"
    assert sh.ok("elementalctl -n other get mi -A --no-headers -o wide").count("\n") == 2


def test_label_annotate_patch_wait_delete(sh: Shell) -> None:
    sh.ok("elementalctl apply -f mi.yaml")
    assert sh.ok("elementalctl label machineinventory -n fleet-default m1 element=fire") == (
        "machineinventory.elemental.cattle.io/m1 labeled\n"
    )
    assert sh.fails("elementalctl label mi m1 element=water") == (
        "error: 'element' already has a value (fire), and --overwrite is false"
    )
    sh.ok("elementalctl label mi m1 element=water --overwrite")
    assert sh.op.ctx.store.get("MachineInventory", NS, "m1")["metadata"]["labels"]["element"] == "water"
    rc, out, err = sh("elementalctl label mi m1 element- nothere-")
    assert rc == 0 and "labeled" in out and 'label "nothere" not found.' in err
    assert "element" not in (
        sh.op.ctx.store.get("MachineInventory", NS, "m1")["metadata"].get("labels") or {}
    )
    sh.ok("elementalctl annotate machineinventory -n fleet-default m1 elemental.cattle.io/resettable=true")
    anns = sh.op.ctx.store.get("MachineInventory", NS, "m1")["metadata"]["annotations"]
    assert anns["elemental.cattle.io/resettable"] == "true"
    assert "annotated" in sh.ok("elementalctl annotate mi m1 elemental.cattle.io/resettable-")

    # patch: merge, JSON and strategic (conditions merge by type), from -p and --patch-file
    out = sh.ok(
        'elementalctl patch machineinventory m1 -n fleet-default --type merge -p \'{"spec":{"tpmHash":"x"}}\''
    )
    assert out == "machineinventory.elemental.cattle.io/m1 patched\n"
    assert sh.op.ctx.store.get("MachineInventory", NS, "m1")["spec"]["tpmHash"] == "x"
    sh.ok('elementalctl patch mi m1 --type json -p \'[{"op":"replace","path":"/spec/tpmHash","value":"y"}]\'')
    assert sh.op.ctx.store.get("MachineInventory", NS, "m1")["spec"]["tpmHash"] == "y"
    assert "(no change)" in sh.ok('elementalctl patch mi m1 --type merge -p \'{"spec":{"tpmHash":"y"}}\'')
    Path("cond.yaml").write_text(
        "status:\n  conditions:\n  - type: Custom\n    status: 'True'\n    reason: Tested\n    message: ''\n"
        "    lastTransitionTime: '2026-01-01T00:00:00Z'\n"
    )
    # the controller's own conditions first (Ready=False WaitingForPlan: no agent here)
    sh.ok("elementalctl wait mi/m1 --for=condition=Ready=false --timeout=20s")
    sh.ok("elementalctl patch mi m1 --subresource=status --patch-file cond.yaml")
    conds = {c["type"] for c in sh.op.ctx.store.get("MachineInventory", NS, "m1")["status"]["conditions"]}
    assert "Custom" in conds and len(conds) > 1, conds  # strategic: merged by type, not replaced
    assert sh.ok("elementalctl wait mi/m1 --for=jsonpath={.spec.tpmHash}=y --timeout 10s") == (
        "machineinventory.elemental.cattle.io/m1 condition met\n"
    )
    sh.ok("elementalctl wait mi m1 --for=condition=custom --timeout=10s")  # type matched in any case

    # delete -l, --all, dry runs, wait --for=delete
    sh.ok("elementalctl label mi m1 element=fire")
    sh.ok("elementalctl apply -f -", stdin=INVENTORY.replace("m1", "m2"))
    assert "(dry run)" in sh.ok("elementalctl delete mi -l element=fire --dry-run=client")
    assert "(dry run)" in sh.ok("elementalctl delete --dry-run mi m1")  # bare --dry-run takes no value
    assert sh.op.ctx.store.list("MachineInventory", NS)
    assert sh.ok("elementalctl delete machineinventory -n fleet-default -l element=fire") == (
        'machineinventory.elemental.cattle.io "m1" deleted\n'
    )
    assert (
        sh.ok("elementalctl wait --for=delete mi/m1 --timeout=10s")
        == "machineinventory.elemental.cattle.io/m1 deleted\n"
    )
    assert (
        sh.ok("elementalctl delete mi --all --wait=false")
        == 'machineinventory.elemental.cattle.io "m2" deleted\n'
    )
    sh.ok("elementalctl wait --for=delete mi/m2")
    assert not sh.op.ctx.store.list("MachineInventory", NS)


def test_apply_sources_dry_run_explain_api_resources(sh: Shell, tmp_path: Path) -> None:
    d = tmp_path / "manifests" / "sub"
    d.mkdir(parents=True)
    (d.parent / "a.yaml").write_text(REGISTRATION)
    (d / "b.yaml").write_text(INVENTORY)
    assert sh.ok("elementalctl apply -f manifests --dry-run=client") == (
        "machineregistration.elemental.cattle.io/my-nodes created (dry run)\n"
    )
    assert not sh.op.ctx.store.list("MachineRegistration", NS)
    out = sh.ok("elementalctl apply -f manifests -R --dry-run=server")
    assert out.count("(server dry run)") == 2 and not sh.op.ctx.store.list("MachineInventory", NS)
    out = sh.ok("elementalctl apply -R -f manifests")
    assert out.count(" created") == 2
    assert (
        sh.ok("elementalctl create -f mi.yaml --dry-run")
        == "machineinventory.elemental.cattle.io/m1 created (dry run)\n"
    )
    assert sh.fails("elementalctl create -f mi.yaml --dry-run=server").startswith(
        'Error from server (AlreadyExists): machineinventories.elemental.cattle.io "m1" already exists'
    )
    assert sh.fails("elementalctl create -f mi.yaml").startswith("Error from server (AlreadyExists)")
    # -f URL (the docs apply manifests from raw.githubusercontent.com): served from loopback here
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        assert sh.ok(f"elementalctl apply -f {base}/seedimage.yaml") == (
            "seedimage.elemental.cattle.io/fire-img created\n"
        )
        assert sh.fails(f"elementalctl apply -f {base}/nothere.yaml") == (
            f"elementalctl: error: {base}/nothere.yaml: the server answered 404 File not found"
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    out = sh.ok("elementalctl explain mr.spec.config.elemental.install.snapshotter")
    assert "KIND:       MachineRegistration" in out and "maxSnaps\t<integer>" in out
    assert "FIELD: snapshotter <Object>" in out
    assert "registrationRef\t<Object> -required-" in sh.ok("elementalctl explain seedimage.spec")
    assert "  template\t<Object>" in sh.ok("elementalctl explain mist --recursive")
    out = sh.ok("elementalctl api-resources")
    row = next(line.split() for line in out.splitlines() if line.startswith("machineregistrations "))
    assert row == [
        "machineregistrations",
        "mr,registration,registrations",
        API,
        "true",
        "MachineRegistration",
    ]
    assert "seedimages.elemental.cattle.io" in sh.ok("elementalctl api-resources -o name").split()


def test_contexts(sh: Shell, tmp_path: Path) -> None:
    op = sh.op
    assert sh.ok(
        f"elementalctl config set-context dev --server {op.url} --token {op.token} -n other", connect=False
    ) == ('Context "dev" created.\n')
    sh.ok("elementalctl config set-context broken --server http://127.0.0.1:1 --token x", connect=False)
    assert (os.stat(tmp_path / "ctl-config").st_mode & 0o777) == 0o600
    # a server that is not an operator (plain files): one line, not a JSON traceback
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        web = f"http://127.0.0.1:{httpd.server_address[1]}"
        (tmp_path / "elemental" / "admin" / "v1").mkdir(parents=True)
        (tmp_path / "elemental" / "admin" / "v1" / "machineregistrations").write_text("<html>")
        rc, _, err = sh(f"elementalctl get mr -A --server {web} --token t", connect=False)
        assert rc == 1 and err == (
            f"elementalctl: error: {web}/elemental/admin/v1/machineregistrations: the answer is not JSON "
            f"(is {web} an operator?)\n"
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    out = sh.ok("elementalctl config get-contexts", connect=False)
    assert out.splitlines()[1].split()[:2] == ["*", "dev"]
    # the current context gives server, token and namespace (the document names none)
    sh.ok("elementalctl apply -f -", INVENTORY.replace("  namespace: fleet-default\n", ""), connect=False)
    assert op.ctx.store.get("MachineInventory", "other", "m1")
    assert sh.ok("elementalctl get mi -o name", connect=False) == "machineinventory.elemental.cattle.io/m1\n"
    assert sh.ok("elementalctl config use-context broken", connect=False) == 'Switched to context "broken".\n'
    assert sh.ok("elementalctl config current-context", connect=False) == "broken\n"
    assert sh.ok("elementalctl --context dev get mi -o name", connect=False).strip()
    rc, _, err = sh("elementalctl get mi", connect=False)
    assert rc == 1 and err.startswith("elementalctl: error: cannot reach http://127.0.0.1:1")
    rc, _, err = sh("elementalctl --context nope get mi", connect=False)
    assert rc == 1 and 'context "nope" does not exist' in err
    rc, _, err = sh("elementalctl config use-context nope", connect=False)
    assert rc == 1 and 'no context exists with the name: "nope"' in err
    sh.ok("elementalctl config delete-context broken", connect=False)
    assert sh.ok("elementalctl config get-contexts -o name", connect=False) == "dev\n"


ERRORS = [
    # (command line, stdin, the one error line; {f} is replaced by the temp dir)
    (
        "elementalctl get nosuchkind",
        "",
        'elementalctl: error: the server doesn\'t have a resource type "nosuchkind"',
    ),
    ("elementalctl get mr,", "", "elementalctl: error: empty resource type in 'mr,'"),
    (
        "elementalctl get mr nope",
        "",
        'Error from server (NotFound): machineregistrations.elemental.cattle.io "nope" not found',
    ),
    (
        "elementalctl get mr -o yamll",
        "",
        "elementalctl: error: unable to match a printer suitable for the output format 'yamll'",
    ),
    (
        "elementalctl get mr -o jsonpath={.items[}",
        "",
        "elementalctl: error: error parsing jsonpath '.items['",
    ),
    (
        "elementalctl get mr -o jsonpath='{range .items[*]}x'",
        "",
        "elementalctl: error: error parsing jsonpath '{range .items[*]}x': {range} without {end}",
    ),
    (
        "elementalctl get mr -o custom-columns=NAME",
        "",
        "elementalctl: error: custom-columns format: expected HEADER:JSONPATH, got 'NAME'",
    ),
    (
        "elementalctl get mr -o jsonpath-file=nofile",
        "",
        "elementalctl: error: cannot read jsonpath template nofile: No such file or directory",
    ),
    ("elementalctl get", "", "elementalctl: error: you must specify the type of resource to get"),
    (
        "elementalctl frobnicate mr",
        "",
        'elementalctl: error: unknown command "frobnicate" for "elementalctl"',
    ),
    (
        "elementalctl get mr --bogus",
        "",
        "elementalctl: error: elementalctl get: unrecognized arguments: --bogus",
    ),
    (
        "elementalctl apply -f -",
        "a: [1\n",
        "elementalctl: error: <stdin>: document 1: line 2, column 1: expected ',' or ']', but got '<stream end>'",
    ),
    (
        "elementalctl apply -f -",
        "kind: MachineInventory\n---\nkind: X\n  bad: indent\n",
        "elementalctl: error: <stdin>: document 2: line 4, column 6: mapping values are not allowed here",
    ),
    (
        "elementalctl apply -f -",
        "- 1\n",
        "elementalctl: error: <stdin>: document 1: expected a mapping, got list",
    ),
    (
        "elementalctl apply -f -",
        "apiVersion: provisioning.cattle.io/v1\nkind: Cluster\nmetadata: {name: volcano}\n",
        '<stdin>: document 1: no matches for kind "Cluster" in version "provisioning.cattle.io/v1"',
    ),
    ("elementalctl apply -f -", "", "elementalctl: error: no objects passed to apply"),
    ("elementalctl apply", "", "elementalctl: error: must specify one of -f and -k"),
    (
        "elementalctl apply -f {f}/missing.yaml",
        "",
        'elementalctl: error: the path "{f}/missing.yaml" does not exist',
    ),
    (
        "elementalctl apply -f http://127.0.0.1:1/x.yaml",
        "",
        "elementalctl: error: http://127.0.0.1:1/x.yaml: cannot fetch: [Errno 111] Connection refused",
    ),
    (
        "elementalctl apply --dry-run=client -f -",
        f"apiVersion: {API}\nkind: MachineInventory\nmetadata: {{name: m}}\nspec: {{tpmHsh: x}}\n",
        "Error from validation (dry run): spec.tpmHsh: unknown field (<stdin>: document 1, line 4, column 8, m)",
    ),
    (
        "elementalctl apply --dry-run=client -f -",
        f"apiVersion: v1\nkind: List\nitems:\n- apiVersion: {API}\n  kind: MachineInventory\n  metadata: {{name: m}}\n  spec: {{tpmHsh: x}}\n",
        "Error from validation (dry run): spec.tpmHsh: unknown field (<stdin>: document 1, line 7, column 10, m)",
    ),
    (
        "elementalctl apply -f -",
        f"apiVersion: {API}\nkind: MachineInventory\nmetadata: {{name: m}}\nspec: {{tpmHsh: x}}\n",
        "Error from server (Invalid): spec.tpmHsh: unknown field (<stdin>: document 1, line 4, column 8, m)",
    ),
    (
        "elementalctl delete mr",
        "",
        "elementalctl: error: resource(s) were provided, but no name was specified",
    ),
    (
        "elementalctl delete",
        "",
        "elementalctl: error: you must provide one or more resources by argument or filename",
    ),
    (
        "elementalctl delete mr nope",
        "",
        'Error from server (NotFound): machineregistrations.elemental.cattle.io "nope" not found',
    ),
    (
        "elementalctl delete mr a -l x=y",
        "",
        "elementalctl: error: name cannot be provided when a selector or --all is specified",
    ),
    ("elementalctl label mr", "", "elementalctl: error: at least one label update is required"),
    (
        "elementalctl label mr nope a=b",
        "",
        'Error from server (NotFound): machineregistrations.elemental.cattle.io "nope" not found',
    ),
    (
        "elementalctl label mr x a=b a-",
        "",
        "elementalctl: error: can not both modify and remove the following label(s) in the same command: a",
    ),
    ("elementalctl label mr x =b", "", "elementalctl: error: invalid label spec: '=b'"),
    (
        "elementalctl patch mr x",
        "",
        "elementalctl: error: must specify exactly one of -p/--patch or --patch-file",
    ),
    (
        "elementalctl patch mr x -p '{a: [1'",
        "",
        "elementalctl: error: --patch: line 1, column 7: not valid JSON or YAML",
    ),
    (
        "elementalctl patch mr x --type json -p '{}'",
        "",
        "elementalctl: error: json patch: the patch must be a list of operations",
    ),
    (
        "elementalctl patch mr x --type merge -p '[]'",
        "",
        "elementalctl: error: merge patch: the patch must be an object",
    ),
    (
        "elementalctl patch mr x --subresource=scale -p '{}'",
        "",
        'elementalctl: error: invalid subresource value: "scale". Must be one of [status]',
    ),
    ("elementalctl wait mr x", "", "elementalctl: error: --for is required"),
    ("elementalctl wait mr x --for=ready", "", "elementalctl: error: unrecognized condition: 'ready'"),
    (
        "elementalctl wait mr x --for=delete --timeout=5parsecs",
        "",
        'elementalctl: error: invalid duration "5parsecs"',
    ),
    ("elementalctl wait mr -l a=b --for=delete", "", "elementalctl: error: no matching resources found"),
    (
        "elementalctl wait mr nope --for=condition=Ready",
        "",
        'elementalctl: error: Error from server (NotFound): machineregistrations.elemental.cattle.io "nope" not found',
    ),
    (
        "elementalctl explain mr.spec.nope",
        "",
        'elementalctl: error: field "nope" does not exist in MachineRegistration.spec',
    ),
    ("elementalctl explain", "", "elementalctl: error: explain takes one argument"),
    (
        "elementalctl config set-context",
        "",
        "elementalctl: error: config set-context needs exactly one context NAME",
    ),
    ("elementalctl config frob x", "", "elementalctl: error: unknown config command 'frob'"),
    (
        "elementalctl get mr/",
        "",
        "elementalctl: error: there is no need to specify a resource type as a separate argument",
    ),
    (
        "elementalctl get mr/a b",
        "",
        "elementalctl: error: there is no need to specify a resource type as a separate argument",
    ),
    (
        "elementalctl get mr a mi/b",
        "",
        "elementalctl: error: mixing TYPE NAME and TYPE/NAME arguments is not allowed",
    ),
    ("elementalctl get mr,mi -w", "", "elementalctl: error: watch is only supported on individual resources"),
    (
        "elementalctl get mr -o jsonpath=",
        "",
        "elementalctl: error: template format specified but no template given",
    ),
    (
        "elementalctl get mr -o custom-columns-file={f}/registration.yaml",
        "",
        "elementalctl: error: {f}/registration.yaml: a custom-columns file has two lines",
    ),
    (
        "elementalctl get mr -o custom-columns-file={f}/cols2.txt",
        "",
        "elementalctl: error: {f}/cols2.txt: 2 headers but 1 JSONPaths",
    ),
    ("elementalctl get mr --sort-by={.a[}", "", "elementalctl: error: error parsing jsonpath '.a['"),
    ("elementalctl edit mr", "", "elementalctl: error: mr: resource name(s) required"),
    ("elementalctl edit mr a b", "", "elementalctl: error: edit takes exactly one resource"),
    (
        "elementalctl apply -f {f}/empty",
        "",
        "elementalctl: error: {f}/empty: no .yaml/.yml/.json files (-R reads subdirectories)",
    ),
    (
        "elementalctl apply -f {f}/bad.json",
        "",
        "elementalctl: error: {f}/bad.json: line 1, column 2: Expecting property name enclosed in double quotes",
    ),
    ("elementalctl apply -f {f}/latin1.yaml", "", "elementalctl: error: {f}/latin1.yaml: not UTF-8 text"),
    ("elementalctl apply -f -", "metadata: {name: x}\n", "<stdin>: document 1: Object 'Kind' is missing"),
    (
        "elementalctl apply -f -",
        "apiVersion: v2\nkind: MachineInventory\n",
        '<stdin>: document 1: no matches for kind "MachineInventory" in version "v2"',
    ),
    (
        "elementalctl delete -f -",
        "apiVersion: v1\nkind: Secret\n",
        "elementalctl: error: <stdin>: document 1: metadata.name is required to delete",
    ),
    (
        "elementalctl patch mist x --subresource=status -p '{}'",
        "",
        "error: MachineInventorySelectorTemplate has no status subresource",
    ),
    (
        "elementalctl wait mr x --for=jsonpath={.status",
        "",
        "elementalctl: error: --for=jsonpath={.status: unclosed '{'",
    ),
    (
        "elementalctl wait mr x --for=condition=",
        "",
        "elementalctl: error: --for=condition=TYPE[=VALUE] needs a condition type",
    ),
    (
        "elementalctl wait mr x --for=delete --timeout=5m3",
        "",
        'elementalctl: error: invalid duration "5m3": missing unit in duration',
    ),
    (
        "elementalctl api-resources -o yaml",
        "",
        "elementalctl: error: elementalctl api-resources: argument -o/--output: invalid choice: 'yaml'",
    ),
    ("elementalctl config get-contexts nope", "", 'elementalctl: error: context "nope" not found'),
    ("elementalctl config current-context", "", "elementalctl: error: current-context is not set"),
    ("elementalctl config delete-context nope", "", 'elementalctl: error: cannot delete context "nope"'),
    ("elementalctl label mr x 'a b=c'", "", "elementalctl: error: invalid label key 'a b': [prefix/]name"),
    ("elementalctl label mr x Bad_Prefix/k=v", "", "elementalctl: error: invalid label key 'Bad_Prefix/k'"),
    ("elementalctl label mr x k=-v", "", "elementalctl: error: invalid label value: 'k=-v'"),
    ("elementalctl annotate mr x bad_=v", "", "elementalctl: error: invalid annotation key 'bad_'"),
    (
        "elementalctl completion fish",
        "",
        "elementalctl: error: elementalctl completion: argument shell: invalid choice: 'fish'",
    ),
]


@pytest.mark.parametrize(
    "line,stdin,error", ERRORS, ids=[e[0][13:60] + (" <" + e[1][:12] if e[1] else "") for e in ERRORS]
)
def test_error_paths(sh: Shell, tmp_path: Path, line: str, stdin: str, error: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{bad}")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (tmp_path / "cols2.txt").write_text("A B\n.a\n")
    got = sh.fails(line.replace("{f}", str(tmp_path)), stdin)
    assert got.startswith(error.replace("{f}", str(tmp_path))), got


def test_wait_times_out_and_patch_json_errors(sh: Shell) -> None:
    sh.ok("elementalctl apply -f mi.yaml")
    assert sh.fails("elementalctl wait mi/m1 --for=condition=Never --timeout=1s") == (
        "elementalctl: error: timed out waiting for the condition on machineinventories/m1"
    )
    # the operator applies the patch (PATCH, application/json-patch+json) and names what failed
    assert sh.fails('elementalctl patch mi m1 --type json -p \'[{"op":"remove","path":"/spec/nope"}]\'') == (
        "Error from server (Invalid): json patch: path '/spec/nope' does not exist"
    )
    assert sh.fails(
        'elementalctl patch mi m1 --type json -p \'[{"op":"test","path":"/spec/tpmHash","value":"q"}]\''
    ) == ("Error from server (Invalid): json patch: test failed at '/spec/tpmHash'")
    assert sh.fails(
        'elementalctl patch mi m1 --dry-run=client --type json -p \'[{"op":"remove","path":"/spec/nope"}]\''
    ) == ("error: json patch: path '/spec/nope' does not exist")
    assert sh.fails('elementalctl patch mi m1 --type merge -p \'{"spec":{"tpmHsh":1}}\'') == (
        "Error from server (Invalid): spec.tpmHsh: unknown field"
    )
    assert sh.fails(
        'elementalctl patch mi m1 --dry-run=client --type merge -p \'{"spec":{"tpmHsh":1}}\''
    ) == ("Error from validation (dry run): spec.tpmHsh: unknown field")
    assert sh.fails("elementalctl apply -f mi.yaml -n other").startswith(
        'the namespace from the provided object "fleet-default" does not match the namespace "other"'
    )


def _env(operator: RunningOperator, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "ELEMENTAL_SERVER": operator.url, "ELEMENTAL_TOKEN": operator.token}
    env["ELEMENTALCTL_CONFIG"] = str(tmp_path / "none")
    bindir = tmp_path / "bin"  # the console script as a shell finds it, run from this tree
    bindir.mkdir(exist_ok=True)
    (bindir / "elementalctl").write_text(f'#!/bin/sh\nexec {sys.executable} -m elemental_operator.ctl "$@"\n')
    (bindir / "elementalctl").chmod(0o755)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    return env


def test_console_script_exit_codes(operator: RunningOperator, tmp_path: Path) -> None:
    env = _env(operator, tmp_path)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["elementalctl", *argv], env=env, capture_output=True, text=True, timeout=60)

    res = run("get", "mr", "-o", "bogus")
    assert res.returncode == 1 and res.stderr.count("\n") == 1  # kubectl: usage errors are exit 1 too
    res = run()
    assert res.returncode == 0 and "usage: elementalctl VERB" in res.stdout  # kubectl: help, exit 0
    res = run("get", "mr", "nope", "-o", "json")
    assert res.returncode == 1 and res.stdout == "" and res.stderr.count("\n") == 1  # no empty List printed


def _completion(operator: RunningOperator, tmp_path: Path, shell: str) -> tuple[Path, dict[str, str]]:
    env = _env(operator, tmp_path)
    res = subprocess.run(
        ["elementalctl", "completion", shell], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    script = tmp_path / f"completion.{shell}"
    script.write_text(res.stdout)
    operator.ctx.store.create(
        {"apiVersion": API, "kind": "MachineRegistration", "metadata": {"name": "my-nodes", "namespace": NS}}
    )
    return script, env


def test_bash_completion(operator: RunningOperator, tmp_path: Path) -> None:
    script, env = _completion(operator, tmp_path, "bash")

    def complete(*words: str) -> list[str]:
        prog = (
            f"source {script}; COMP_WORDS=(elementalctl {' '.join(words)}); COMP_CWORD={len(words)}; "
            '_elementalctl; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        out = subprocess.run(["bash", "-c", prog], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert complete("la") == ["label"]
    assert "machineregistrations" in complete("get", "machinereg")
    assert complete("get", "mr", "") == ["my-nodes"]  # names asked from the operator
    assert complete("get", "mr", "-o", "jsonp") == ["jsonpath=", "jsonpath-file="]
    assert "--all-namespaces" in complete("get", "--all-n")
    assert complete("config", "use-") == ["use-context"]


def test_zsh_completion(operator: RunningOperator, tmp_path: Path) -> None:
    if subprocess.run(["sh", "-c", "command -v zsh"], capture_output=True).returncode != 0:
        pytest.skip("zsh is not installed")
    script, env = _completion(operator, tmp_path, "zsh")
    assert script.read_text().startswith("#compdef elementalctl")

    def complete(*words: str) -> list[str]:
        # compinit registers the function; compadd, zsh's builtin, is shadowed to print the candidates
        prog = (
            f"autoload -U compinit; compinit -u -d {tmp_path}/zcompdump; source {script}; "
            + 'compadd() { [[ $1 == -- ]] && shift; print -l -- "$@" }; '
            + f"words=(elementalctl {' '.join(words)}); CURRENT={len(words) + 1}; _elementalctl"
        )
        out = subprocess.run(["zsh", "-f", "-c", prog], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    # the real compadd matches the candidates against the word; the stand-in prints them all
    assert [w for w in complete("la") if w.startswith("la")] == ["label"]
    assert "machineregistrations" in complete("get", "machinereg")
    assert complete("get", "mr", "") == ["my-nodes"]
    assert [w for w in complete("get", "mr", "-o", "jsonp") if w.startswith("jsonp")] == [
        "jsonpath=",
        "jsonpath-file=",
    ]
    assert "yaml" in complete("get", "mr", "-o", "")


def test_connection_errors(sh: Shell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEMENTAL_STATE", str(tmp_path / "no-state"))
    for var in ("ELEMENTAL_SERVER", "ELEMENTAL_TOKEN", "ELEMENTAL_CA"):
        monkeypatch.delenv(var, raising=False)
    rc, _, err = sh("elementalctl get mr", connect=False)
    assert (
        rc == 1
        and err.startswith("elementalctl: error: no admin token: pass --token")
        and err.count("\n") == 1
    )
    assert sh.ok("elementalctl explain mr", connect=False).startswith("GROUP:")  # explain needs no server
    config = tmp_path / "ctl-config"
    config.write_text("contexts: [\n")
    rc, _, err = sh("elementalctl get mr", connect=False)
    assert rc == 1 and err.startswith(f"elementalctl: error: {config}: line 2, column 1: not valid YAML")
    assert err.count("\n") == 1
    config.write_text("- a\n")
    rc, _, err = sh("elementalctl config get-contexts", connect=False)
    assert rc == 1 and err == f"elementalctl: error: {config}: expected a mapping with a 'contexts' list\n"


def test_wait_reports_deletion_while_waiting_and_delete_wait_timeout(
    sh: Shell, monkeypatch: pytest.MonkeyPatch
) -> None:
    sh.ok("elementalctl apply -f mi.yaml")
    store = sh.op.ctx.store
    obj = store.get("MachineInventory", NS, "m1")
    obj["metadata"]["finalizers"] = [*obj["metadata"].get("finalizers", []), "test.example/hold"]
    store.update(obj)
    # a finalizer nobody removes: delete returns, its --wait times out
    assert sh.fails("elementalctl delete mi m1 --timeout=1s") == (
        "elementalctl: error: timed out waiting for machineinventories/m1 to be deleted"
    )
    # The real watch, observed: the deletion must happen after the wait's initial list (then the
    # watch, which resumes from that list's resourceVersion, sees it whenever it connects).
    watching = threading.Event()
    real_stream = Client.stream

    def stream(self: Client, path: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        watching.set()
        return real_stream(self, path, timeout)

    monkeypatch.setattr(Client, "stream", stream)
    done: list[tuple[int, str, str]] = []
    t = threading.Thread(
        target=lambda: done.append(sh("elementalctl wait mi/m1 --for=condition=Never --timeout=30s"))
    )
    t.start()
    assert watching.wait(20)
    cur = store.get("MachineInventory", NS, "m1")
    cur["metadata"]["finalizers"] = [f for f in cur["metadata"]["finalizers"] if f != "test.example/hold"]
    store.update(cur)  # the pending deletion completes while the wait watches
    t.join(40)
    rc, _, err = done[0]
    assert rc == 1 and "machineinventories/m1 was deleted while waiting for condition Never" in err


def test_lines_from_elementals_e2e_tests(sh: Shell) -> None:
    """Command lines of rancher/elemental-operator's tests/e2e (kubectl.Run / GetData / Delete)."""
    sh.ok(
        "elementalctl apply -f -",
        f"apiVersion: {API}\nkind: ManagedOSVersion\nmetadata: {{name: v1.0.0, namespace: fleet-default}}\n"
        "spec: {version: v1.0.0, type: container, metadata: {upgradeImage: registry.example/os:v1.0.0}}\n",
    )
    # kubectl.GetData(fleetNamespace, "ManagedOSVersion", version, `jsonpath={.spec.metadata.upgradeImage}`)
    assert sh.ok(
        "elementalctl get ManagedOSVersion v1.0.0 -n fleet-default -o jsonpath={.spec.metadata.upgradeImage}"
    ) == ("registry.example/os:v1.0.0")
    sh.ok(
        "elementalctl apply -f -",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: tls-ca, namespace: cattle-system}\n"
        "data: {tls.crt: Q0EK}\n",
    )
    # printCA := "-n cattle-system get secret tls-ca -o jsonpath=\"{.data['tls\\.crt']}\""
    assert (
        sh.ok("elementalctl -n cattle-system get secret tls-ca -o jsonpath=\"{.data['tls\\.crt']}\"")
        == "Q0EK"
    )
    assert (
        sh.ok(
            """elementalctl -n cattle-system get secret tls-ca -o go-template='{{index .data "tls.crt" | base64decode}}'"""
        )
        == "CA\n"
    )
    # kubectl -n cattle-system patch secret tls-ca -p '{"data":{"cacerts.pem":"..."}}'  (default: strategic)
    assert sh.ok(
        """elementalctl -n cattle-system patch secret tls-ca -p '{"data":{"cacerts.pem":"Q0EK"}}'"""
    ) == ("secret/tls-ca patched\n")
    assert set(sh.op.ctx.store.get("Secret", "cattle-system", "tls-ca")["data"]) == {"tls.crt", "cacerts.pem"}
    # kubectl.New().Delete(r, "--all", "--all-namespaces")
    assert sh.ok("elementalctl delete secret --all --all-namespaces") == 'secret "tls-ca" deleted\n'
    assert sh.ok("elementalctl delete ManagedOSVersion --all --all-namespaces") == (
        'managedosversion.elemental.cattle.io "v1.0.0" deleted\n'
    )


def test_apply_is_kubectls_three_way_apply(sh: Shell) -> None:
    """What the last apply stated and the file no longer does goes; what others added stays."""
    first = REGISTRATION.replace(
        "  machineInventoryLabels:\n    element: fire\n",
        "  machineInventoryLabels:\n    element: fire\n    zone: a\n",
    )
    first = first.replace(
        "  namespace: fleet-default\n", "  namespace: fleet-default\n  labels: {team: edge, tier: one}\n"
    )
    assert sh.ok("elementalctl apply -f -", first).endswith(" created\n")
    sh.ok("elementalctl label mr my-nodes added-by=label")
    sh.ok("elementalctl wait mr/my-nodes --for=condition=Ready")
    assert (
        sh.ok("elementalctl apply -f -", first)
        == "machineregistration.elemental.cattle.io/my-nodes unchanged\n"
    )
    second = first.replace("    zone: a\n", "").replace("{team: edge, tier: one}", "{tier: one}")
    assert (
        sh.ok("elementalctl apply -f -", second)
        == "machineregistration.elemental.cattle.io/my-nodes configured\n"
    )
    reg = sh.op.ctx.store.get("MachineRegistration", NS, "my-nodes")
    assert reg["spec"]["machineInventoryLabels"] == {"element": "fire"}  # dropped from the file: removed
    assert reg["metadata"]["labels"] == {"tier": "one", "added-by": "label"}  # added by someone else: kept
    assert reg["status"]["registrationURL"]  # status and the defaults stay
    described = sh.ok("elementalctl describe mr my-nodes")
    assert "last-applied-configuration" not in described and "Annotations:  <none>" in described
    assert reg["spec"]["config"]["elemental"]["install"]["snapshotter"]["type"] == "loopdevice"
    # an object that apply did not make: patched, nothing removed, and a one-line warning
    sh.ok("elementalctl create -f mi.yaml")
    rc, out, err = sh("elementalctl apply -f -", INVENTORY.replace("abc", "def"))
    assert rc == 0 and out == "machineinventory.elemental.cattle.io/m1 configured\n"
    assert err.count("\n") == 1 and "missing the kubectl.kubernetes.io/last-applied-configuration" in err
    assert sh.op.ctx.store.get("MachineInventory", NS, "m1")["spec"]["tpmHash"] == "def"


def test_schema_errors_point_into_the_file(sh: Shell, tmp_path: Path) -> None:
    """A document the schemas refuse: the error names file, document, and the line and column of the
    offending key (through lists and dotted label keys); the other documents still apply."""
    (tmp_path / "multi.yaml").write_text(
        REGISTRATION
        + "---\n"
        + REGISTRATION.replace("my-nodes", "bad-nodes").replace(
            "        device: /dev/sda\n",
            "        device-selector:\n        - key: Name\n          operator: In\n          valuez: [/dev/sda]\n",
        )
        + "---\n"
        + INVENTORY.replace("  name: m1\n", "  name: m1\n  labels:\n    elemental.cattle.io/x: -bad-\n")
    )
    rc, out, err = sh("elementalctl apply -f multi.yaml")
    assert rc == 1 and out == "machineregistration.elemental.cattle.io/my-nodes created\n"
    assert err.splitlines() == [
        "Error from server (Invalid): spec.config.elemental.install.device-selector[0].valuez: unknown field "
        "(multi.yaml: document 2, line 30, column 11, bad-nodes)",
        "Error from server (Invalid): metadata.labels.elemental.cattle.io/x: '-bad-' does not match "
        "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$ (multi.yaml: document 3, line 41, column 5, m1)",
    ]


def test_watch_prints_objects_for_json_and_name(sh: Shell) -> None:
    sh.ok("elementalctl apply -f mi.yaml")
    out = sh.ok("elementalctl get mi m1 -w -o json --timeout=1s")  # the server ends the watch
    first = json.loads(out[: out.index("\n}\n") + 2])
    assert first["kind"] == "MachineInventory" and first["metadata"]["name"] == "m1"  # objects, not events
    assert (
        sh.ok("elementalctl watch mi -o name --timeout 1s").splitlines()[0]
        == "machineinventory.elemental.cattle.io/m1"
    )


BOMB = f"""\
apiVersion: {API}
kind: MachineRegistration
metadata: {{name: bomb, namespace: fleet-default}}
spec:
  config:
    cloud-config:
      a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
      b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
      c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
      d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
      e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
      f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
      g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
      h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
      i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_alias_bomb_is_refused_locally_and_small_aliases_work(sh: Shell, tmp_path: Path) -> None:
    """A 700-byte "billion laughs" (9^9 scalars once expanded) used to hang apply while it was
    turned into JSON; it is measured on the YAML graph and refused, naming file and document."""
    import time

    (tmp_path / "bomb.yaml").write_text(f"{INVENTORY}---\n{BOMB}")
    started = time.monotonic()
    assert sh.fails(f"elementalctl apply -f {tmp_path}/bomb.yaml") == (
        f"elementalctl: error: {tmp_path}/bomb.yaml: document 2, line 9, column 1: YAML aliases expand "
        "this document to more than 1000000 nodes (an alias bomb?); write the repeated parts out"
    )
    assert time.monotonic() - started < 5
    assert not sh.op.ctx.store.list("MachineInventory", NS)  # nothing of the file was sent
    recursive = f"apiVersion: {API}\nkind: Metadata\nmetadata: {{name: r}}\nspec: &s {{annotations: *s}}\n"
    assert "more than 1000000 nodes" in sh.fails("elementalctl apply -f -", recursive)
    # anchors a person writes (and merge keys) stay usable: kubectl's YAML reader takes them too
    small = (
        f"apiVersion: {API}\nkind: MachineRegistration\nmetadata: {{name: anchors}}\n"
        "spec:\n  machineInventoryLabels: &l {site: lab, rack: a1}\n  machineInventoryAnnotations:\n"
        "    <<: *l\n    extra: x\n"
    )
    assert (
        sh.ok("elementalctl apply -f -", small) == "machineregistration.elemental.cattle.io/anchors created\n"
    )
    spec = sh.op.ctx.store.get("MachineRegistration", NS, "anchors")["spec"]
    assert spec["machineInventoryAnnotations"] == {"site": "lab", "rack": "a1", "extra": "x"}


def test_server_dry_run_is_the_operators(sh: Shell) -> None:
    """--dry-run=server sends the request with ?dryRun=All: the operator's checks answer, nothing is stored."""
    sh.ok("elementalctl apply -f mi.yaml")
    before = sh.op.ctx.store.get("MachineInventory", NS, "m1")
    assert sh.ok(
        'elementalctl patch mi m1 --dry-run=server --type merge -p \'{"metadata":{"labels":{"x":"y"}}}\''
    ) == ("machineinventory.elemental.cattle.io/m1 patched (server dry run)\n")
    assert sh.fails(
        'elementalctl patch mi m1 --dry-run=server --type merge -p \'{"spec":{"tpmHsh":1}}\''
    ) == ("Error from server (Invalid): spec.tpmHsh: unknown field")
    assert sh.ok("elementalctl label mi m1 x=y --dry-run=server") == (
        "machineinventory.elemental.cattle.io/m1 labeled (server dry run)\n"
    )
    assert sh.ok("elementalctl delete mi m1 --dry-run=server") == (
        'machineinventory.elemental.cattle.io "m1" deleted (server dry run)\n'
    )
    assert sh.fails("elementalctl delete mi nope --dry-run=server").startswith("Error from server (NotFound)")
    after = sh.op.ctx.store.get("MachineInventory", NS, "m1")
    assert (after["metadata"].get("labels"), after["metadata"].get("deletionTimestamp")) == (
        before["metadata"].get("labels"),
        None,
    )


def test_more_lines_from_elementals_docs(sh: Shell) -> None:
    """The rest of rancher/elemental-docs' kubectl lines on Elemental's kinds (docs/*.md)."""
    sh.ok("elementalctl apply -f mi.yaml")
    sh.ok(
        "elementalctl apply -f -",
        f"apiVersion: {API}\nkind: MachineInventory\nmetadata: {{name: m2, namespace: fleet-default}}\n",
    )
    # inventory-management.md: kubectl -n fleet-default label machineinventory $(kubectl get machineinventory
    #   -n fleet-default --no-headers -o custom-columns=":metadata.name") element=fire
    names = sh.ok(
        'elementalctl get machineinventory -n fleet-default --no-headers -o custom-columns=":metadata.name"'
    )
    assert names.split() == ["m1", "m2"]
    out = sh.ok(
        f"elementalctl -n fleet-default label machineinventory {' '.join(names.split())} element=fire"
    )
    assert out == (
        "machineinventory.elemental.cattle.io/m1 labeled\nmachineinventory.elemental.cattle.io/m2 labeled\n"
    )
    # troubleshooting-upgrade.md
    sh.ok(
        "elementalctl apply -f -",
        f"apiVersion: {API}\nkind: ManagedOSImage\nmetadata: {{name: my-upgrade, namespace: fleet-default}}\n"
        "spec: {managedOSVersionName: my-deleted-os-version}\n",
    )
    line = (
        "elementalctl -n fleet-default get managedosimages "
        "-l elemental.cattle.io/managed-os-version-name=my-deleted-os-version -o name"
    )
    wait_until(lambda: sh.ok(line) != "", 10.0, what="the controller's version-name label")
    assert sh.ok(line) == "managedosimage.elemental.cattle.io/my-upgrade\n"
    # troubleshooting-upgrade.md: kubectl -n fleet-default describe machineinventory my-unmanaged-os-machine
    described = sh.ok("elementalctl -n fleet-default describe machineinventory m1")
    assert "Name:         m1" in described and "element=fire" in described
    # seedimage-reference.md: kubectl get seedimage <seed_image_name> -n <namespace> -o yaml
    sh.ok("elementalctl apply -f registration.yaml -f seedimage.yaml")
    seed = yaml.safe_load(sh.ok("elementalctl get seedimage fire-img -n fleet-default -o yaml"))
    assert seed["kind"] == "SeedImage" and seed["spec"]["size"] == 6442450944


def test_apply_validate_modes(sh: Shell) -> None:
    """kubectl's --validate: strict (default) refuses unknown fields; warn drops them with a
    warning; ignore (or false) drops them; sent as the API server's fieldValidation."""
    typo = f"apiVersion: {API}\nkind: MachineInventory\nmetadata: {{name: val-1}}\nspec: {{tpmHash: h-val-1, tpmHsh: x}}\n"
    assert sh.fails("elementalctl apply -f -", typo).startswith(
        "Error from server (Invalid): spec.tpmHsh: unknown field"
    )
    rc, out, err = sh("elementalctl apply --validate=warn -f -", typo)
    assert (rc, out, err) == (
        0,
        "machineinventory.elemental.cattle.io/val-1 created\n",
        'Warning: unknown field "spec.tpmHsh"\n',
    )
    assert sh.op.ctx.store.get("MachineInventory", NS, "val-1")["spec"]["tpmHash"] == "h-val-1"
    rc, out, err = sh("elementalctl create --validate=false -f -", typo.replace("val-1", "val-2"))
    assert (rc, err) == (0, "")
    rc, out, err = sh("elementalctl apply --validate=warn --dry-run=client -f -", typo.replace("val-1", "val-3"))
    assert rc == 0 and err == 'Warning: unknown field "spec.tpmHsh"\n'
    assert sh.fails("elementalctl apply --validate=maybe -f -", typo) == (
        'elementalctl: error: invalid - validate option "maybe"; must be one of: strict (or true), warn, ignore (or false)'
    )
