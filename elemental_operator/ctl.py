"""``elementalctl``: a kubectl-like client for the operator's admin API.

Connection settings come from flags, then ``ELEMENTAL_SERVER`` / ``ELEMENTAL_TOKEN`` /
``ELEMENTAL_CA``, then the operator's state directory (``$ELEMENTAL_STATE`` or
/var/lib/elemental-py: ``admin-token``, ``ca.crt``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml

from elemental_common import consts
from elemental_common.errors import Die, entry_point
from elemental_operator.api import KindInfo, ValidationError, json_path, resolve_kind

DEFAULT_NAMESPACE = "fleet-default"


class CtlError(Die):
    """A failure to show the user (the one user-error type); ``status`` is the HTTP status when the
    server answered."""

    def __init__(self, message: str, status: int | None = None, hint: str = "") -> None:
        super().__init__(message, hint)
        self.status = status


class Client:
    def __init__(self, server: str, token: str, ca: str | None, insecure: bool) -> None:
        self.base = server.rstrip("/") + "/elemental/admin/v1"
        self.token = token
        if server.startswith("https"):
            self.ssl: ssl.SSLContext | None = ssl.create_default_context(cafile=ca if ca else None)
            if insecure:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        else:
            self.ssl = None

    def _open(self, method: str, path: str, body: Any = None, timeout: float | None = 60) -> IO[bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            resp: IO[bytes] = urllib.request.urlopen(req, timeout=timeout, context=self.ssl)
            return resp
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message") or exc.reason
            except ValueError:
                message = exc.reason
            raise CtlError(f"Error from server ({exc.code}): {message}", exc.code) from None
        except urllib.error.URLError as exc:
            raise CtlError(f"cannot reach {self.base}: {exc.reason}") from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as resp:
            return json.loads(resp.read() or b"null")

    def stream(self, path: str) -> Iterator[dict[str, Any]]:
        with self._open("GET", path, timeout=None) as resp:
            for line in resp:
                if line.strip():
                    yield json.loads(line)


def _collection(info: KindInfo, namespace: str | None) -> str:
    return f"/namespaces/{namespace}/{info.plural}" if namespace else f"/{info.plural}"


def _item(info: KindInfo, namespace: str, name: str) -> str:
    return f"/namespaces/{namespace}/{info.plural}/{urllib.parse.quote(name)}"


# ---- output ---------------------------------------------------------------------------------


def age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    try:
        then = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return ts
    secs = int((datetime.now(UTC) - then).total_seconds())
    if secs < 120:
        return f"{max(secs, 0)}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _cell(value: Any, ctype: str) -> str:
    if value is None or value == "":
        return "<none>" if ctype != "date" else "<unknown>"
    if ctype == "date":
        return age(str(value))
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def table(info: KindInfo, items: list[dict[str, Any]], wide: bool, with_ns: bool) -> str:
    cols = [c for c in info.printer_columns if wide or not c.get("priority")]
    header = (["NAMESPACE"] if with_ns else []) + ["NAME"] + [c["name"].upper() for c in cols]
    rows = [header]
    for obj in items:
        meta = obj["metadata"]
        row = ([meta.get("namespace", "")] if with_ns else []) + [meta["name"]]
        row += [_cell(json_path(obj, c["jsonPath"]), c.get("type", "string")) for c in cols]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return (
        "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)
        + "\n"
    )


def dump(objs: list[dict[str, Any]], fmt: str, info: KindInfo, single: bool) -> str:
    if fmt == "json":
        body: Any = objs[0] if single else {"apiVersion": "v1", "kind": "List", "items": objs}
        return json.dumps(body, indent=2) + "\n"
    if fmt == "yaml":
        body = objs[0] if single else {"apiVersion": "v1", "kind": "List", "items": objs}
        return yaml.safe_dump(body, sort_keys=False)
    if fmt == "name":
        return "".join(f"{info.singular}/{o['metadata']['name']}\n" for o in objs)
    raise CtlError(f"unknown output format {fmt!r}")


def describe(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    out = [
        f"Name:         {meta['name']}",
        f"Namespace:    {meta.get('namespace', '')}",
        f"Kind:         {obj['kind']}",
        f"API Version:  {obj['apiVersion']}",
        f"Created:      {meta.get('creationTimestamp', '')} ({age(meta.get('creationTimestamp'))} ago)",
    ]
    for key in ("labels", "annotations"):
        values = meta.get(key) or {}
        out.append(f"{key.capitalize() + ':':<14}" + ("<none>" if not values else ""))
        out += [f"  {k}={v}" for k, v in sorted(values.items())]
    if meta.get("finalizers"):
        out.append("Finalizers:   " + ", ".join(meta["finalizers"]))
    if meta.get("deletionTimestamp"):
        out.append(f"Deleting:     since {meta['deletionTimestamp']}")
    for ref in meta.get("ownerReferences") or []:
        out.append(
            f"Owner:        {ref['kind']}/{ref['name']}{' (controller)' if ref.get('controller') else ''}"
        )
    rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    if obj["kind"] == "Secret" and rest.get("data"):
        rest["data"] = {k: f"<{len(v) * 3 // 4} bytes>" for k, v in rest["data"].items()}
    if rest:
        out.append("Spec:" if "spec" in rest else "Data:")
        out.append(_indent(yaml.safe_dump(rest.get("spec", rest), sort_keys=False)))
    status = dict(obj.get("status") or {})
    conds = status.pop("conditions", [])
    if status:
        out.append("Status:")
        out.append(_indent(yaml.safe_dump(status, sort_keys=False)))
    if conds:
        out.append("Conditions:")
        rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
        rows += [
            [
                c.get("type", ""),
                c.get("status", ""),
                c.get("reason", ""),
                age(c.get("lastTransitionTime")),
                c.get("message", ""),
            ]
            for c in conds
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        out += ["  " + "   ".join([*(r[i].ljust(widths[i]) for i in range(4)), r[4]]).rstrip() for r in rows]
    return "\n".join(out) + "\n"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip("\n").splitlines())


# ---- commands -------------------------------------------------------------------------------


def _read_docs(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    docs: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise CtlError(f"{path}: every document must be a mapping")
        if doc.get("kind") == "List":
            docs.extend(doc.get("items") or [])
        else:
            docs.append(doc)
    return docs


def _ns_of(obj: dict[str, Any], args: argparse.Namespace) -> str:
    return str(obj.get("metadata", {}).get("namespace") or args.namespace)


def _apply_one(client: Client, obj: dict[str, Any], args: argparse.Namespace, create_only: bool) -> str:
    info = resolve_kind(str(obj.get("kind", "")))
    meta = obj.setdefault("metadata", {})
    ns = _ns_of(obj, args)
    meta["namespace"] = ns
    name = meta.get("name")
    status = obj.pop("status", None)
    if create_only or not name:
        out = client.call("POST", _collection(info, ns), obj)
        return f"{info.singular}/{out['metadata']['name']} created"
    # Read-modify-write; a controller may touch the object (finalizers, status) between our GET
    # and PUT, so retry on a stale resourceVersion unless the file itself pinned one.
    pinned = "resourceVersion" in meta
    for attempt in range(5):
        try:
            cur = client.call("GET", _item(info, ns, name))
        except CtlError as exc:
            if exc.status != 404:
                raise
            out = client.call("POST", _collection(info, ns), obj)
            if status is not None:
                client.call("PUT", _item(info, ns, name) + "/status", {**out, "status": status})
            return f"{info.singular}/{name} created"
        # Declarative replace of what the file states; server-owned metadata and status are kept.
        new = {k: v for k, v in cur.items() if k in ("apiVersion", "kind", "status")}
        new.update({k: v for k, v in obj.items() if k != "metadata"})
        keep = (
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "ownerReferences",
            "finalizers",
        )
        new["metadata"] = {**{k: cur["metadata"][k] for k in keep if k in cur["metadata"]}, **meta}
        try:
            out = client.call("PUT", _item(info, ns, name), new)
            break
        except CtlError as exc:
            if pinned or exc.status != 409 or attempt == 4:
                raise
    changed = out["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"]
    if status is not None and status != out.get("status"):
        client.call("PUT", _item(info, ns, name) + "/status", {**out, "status": status})
        changed = True
    return f"{info.singular}/{name} {'configured' if changed else 'unchanged'}"


def cmd_get(client: Client, args: argparse.Namespace, out: IO[str]) -> int:
    info = resolve_kind(args.type)
    ns = None if args.all_namespaces else args.namespace
    if args.watch:
        return _watch(client, info, ns, args, out)
    if args.name:
        objs = [client.call("GET", _item(info, args.namespace, args.name))]
    else:
        query = f"?labelSelector={urllib.parse.quote(args.selector)}" if args.selector else ""
        objs = client.call("GET", _collection(info, ns) + query)["items"]
    if args.output in (None, "wide"):
        if not objs:
            where = "any namespace" if ns is None else f"{ns} namespace"
            sys.stderr.write(f"No resources found in {where}.\n")
            return 0
        out.write(table(info, objs, args.output == "wide", ns is None))
    else:
        out.write(dump(objs, args.output, info, bool(args.name)))
    return 0


def _watch(client: Client, info: KindInfo, ns: str | None, args: argparse.Namespace, out: IO[str]) -> int:
    query = {"watch": "true"}
    if args.selector:
        query["labelSelector"] = args.selector
    if args.timeout:
        query["timeoutSeconds"] = str(args.timeout)
    first = True
    for ev in client.stream(_collection(info, ns) + "?" + urllib.parse.urlencode(query)):
        obj = ev["object"]
        if args.name and obj["metadata"]["name"] != args.name:
            continue
        if args.output in ("json", "yaml"):
            out.write(dump([ev] if args.output == "json" else [obj], args.output, info, True))
            if args.output == "yaml":
                out.write("---\n")
        else:
            text = table(info, [obj], args.output == "wide", ns is None).splitlines()
            if first:
                out.write(f"{'EVENT':<9}{text[0]}\n")
                first = False
            out.write(f"{ev['type']:<9}{text[1]}\n")
        out.flush()
    return 0


def cmd_describe(client: Client, args: argparse.Namespace, out: IO[str]) -> int:
    info = resolve_kind(args.type)
    names = (
        [args.name]
        if args.name
        else [o["metadata"]["name"] for o in client.call("GET", _collection(info, args.namespace))["items"]]
    )
    for i, name in enumerate(names):
        if i:
            out.write("\n")
        out.write(describe(client.call("GET", _item(info, args.namespace, name))))
    return 0


def cmd_apply(client: Client, args: argparse.Namespace, out: IO[str], create_only: bool = False) -> int:
    rc = 0
    for obj in _read_docs(args.filename):
        try:
            out.write(_apply_one(client, obj, args, create_only) + "\n")
        except (CtlError, ValidationError) as exc:
            sys.stderr.write(f"{exc}\n")
            rc = 1
    return rc


def cmd_delete(client: Client, args: argparse.Namespace, out: IO[str]) -> int:
    targets: list[tuple[KindInfo, str, str]] = []
    if args.filename:
        for obj in _read_docs(args.filename):
            targets.append((resolve_kind(obj["kind"]), _ns_of(obj, args), obj["metadata"]["name"]))
    elif args.type and args.names:
        info = resolve_kind(args.type)
        targets = [(info, args.namespace, n) for n in args.names]
    else:
        raise CtlError("delete needs TYPE NAME... or -f FILE")
    rc = 0
    for info, ns, name in targets:
        try:
            client.call("DELETE", _item(info, ns, name))
            out.write(f'{info.singular} "{name}" deleted\n')
        except CtlError as exc:
            if args.ignore_not_found and exc.status == 404:
                continue
            sys.stderr.write(f"{exc}\n")
            rc = 1
    return rc


def cmd_edit(client: Client, args: argparse.Namespace, out: IO[str]) -> int:
    info = resolve_kind(args.type)
    path = _item(info, args.namespace, args.name)
    cur = client.call("GET", path)
    editor = os.environ.get("ELEMENTALCTL_EDITOR") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        tmp.write(yaml.safe_dump(cur, sort_keys=False))
    try:
        subprocess.run([*shlex.split(editor), tmp.name], check=True)
        new = yaml.safe_load(Path(tmp.name).read_text())
    finally:
        os.unlink(tmp.name)
    if new == cur:
        out.write("Edit cancelled, no changes made.\n")
        return 0
    res = client.call("PUT", path, new)
    if (new.get("status") or None) != (cur.get("status") or None):
        client.call("PUT", path + "/status", {**res, "status": new.get("status")})
    out.write(f"{info.singular}/{args.name} edited\n")
    return 0


def _client(args: argparse.Namespace) -> Client:
    state = consts.state_dir()
    server = args.server or os.environ.get("ELEMENTAL_SERVER") or consts.DEFAULT_SERVER
    token = args.token or os.environ.get("ELEMENTAL_TOKEN")
    if not token and (state / "admin-token").exists():
        token = (state / "admin-token").read_text().strip()
    if not token:
        raise CtlError(
            f"no admin token: pass --token, set ELEMENTAL_TOKEN or make {state}/admin-token readable"
        )
    ca = args.certificate_authority or os.environ.get("ELEMENTAL_CA")
    if not ca and (state / "ca.crt").exists():
        ca = str(state / "ca.crt")
    return Client(server, token, ca, args.insecure_skip_tls_verify)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="elementalctl", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--server", "-s")
    p.add_argument("--token")
    p.add_argument("--certificate-authority", "--ca")
    p.add_argument("--insecure-skip-tls-verify", action="store_true")
    p.add_argument("-n", "--namespace", default=os.environ.get("ELEMENTAL_NAMESPACE") or DEFAULT_NAMESPACE)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-n", "--namespace", default=argparse.SUPPRESS)

    g = sub.add_parser("get", help="list or show resources")
    common(g)
    g.add_argument("type")
    g.add_argument("name", nargs="?")
    g.add_argument("-o", "--output", choices=["yaml", "json", "wide", "name"])
    g.add_argument("-l", "--selector")
    g.add_argument("-A", "--all-namespaces", action="store_true")
    g.add_argument("-w", "--watch", action="store_true")
    g.add_argument("--timeout", type=float, default=0, help="stop watching after this many seconds")
    w = sub.add_parser("watch", help="same as get -w")
    common(w)
    w.add_argument("type")
    w.add_argument("name", nargs="?")
    w.add_argument("-o", "--output", choices=["yaml", "json", "wide"])
    w.add_argument("-l", "--selector")
    w.add_argument("-A", "--all-namespaces", action="store_true")
    w.add_argument("--timeout", type=float, default=0)
    d = sub.add_parser("describe", help="show one resource in detail")
    common(d)
    d.add_argument("type")
    d.add_argument("name", nargs="?")
    for name, helptext in (("apply", "create or update from YAML"), ("create", "create from YAML")):
        a = sub.add_parser(name, help=helptext)
        common(a)
        a.add_argument("-f", "--filename", required=True)
    x = sub.add_parser("delete", help="delete resources")
    common(x)
    x.add_argument("type", nargs="?")
    x.add_argument("names", nargs="*")
    x.add_argument("-f", "--filename")
    x.add_argument("--ignore-not-found", action="store_true")
    e = sub.add_parser("edit", help="edit a resource in $EDITOR")
    common(e)
    e.add_argument("type")
    e.add_argument("name")
    return p


@entry_point("elementalctl")
def main(argv: list[str] | None = None, out: IO[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = out or sys.stdout
    try:
        client = _client(args)
        if args.cmd in ("get", "watch"):
            if args.cmd == "watch":
                args.watch = True
            return cmd_get(client, args, out)
        if args.cmd == "describe":
            return cmd_describe(client, args, out)
        if args.cmd in ("apply", "create"):
            return cmd_apply(client, args, out, create_only=args.cmd == "create")
        if args.cmd == "delete":
            return cmd_delete(client, args, out)
        if args.cmd == "edit":
            return cmd_edit(client, args, out)
    except ValidationError as exc:
        raise CtlError(str(exc)) from None
    return 2


if __name__ == "__main__":
    sys.exit(main())
