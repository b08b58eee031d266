"""What ``get`` prints: tables (printer columns, ``--show-labels``, ``-L``), ``-o yaml|json|name|
jsonpath|custom-columns``, ``--sort-by``, and ``describe``'s text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from elemental_operator.api import KindInfo, json_path
from elemental_operator.ctl import gotemplate, jsonpath
from elemental_operator.ctl.client import CtlError
from elemental_operator.ctl.resources import ref

FORMATS = (
    "yaml",
    "json",
    "wide",
    "name",
    "jsonpath=TEMPLATE",
    "jsonpath-file=FILE",
    "custom-columns=SPEC",
    "custom-columns-file=FILE",
    "go-template=TEMPLATE",
    "go-template-file=FILE",
)


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


def _labels(obj: dict[str, Any]) -> str:
    labels = obj["metadata"].get("labels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


@dataclass
class Format:
    """The parsed ``-o`` value and the table switches."""

    kind: str = "table"  # table, wide, yaml, json, name, jsonpath, go-template, custom-columns
    template: str = ""
    columns: list[tuple[str, str]] = field(default_factory=list)
    no_headers: bool = False
    show_labels: bool = False
    label_columns: list[str] = field(default_factory=list)
    sort_by: str = ""

    @property
    def tabular(self) -> bool:
        return self.kind in ("table", "wide")


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CtlError(f"cannot read {what} {path}: {exc.strerror}") from None


def _split_columns(spec: str) -> list[str]:
    """Split at top-level commas (filters such as ``[?(@.a=="x,y")]`` may hold commas)."""
    parts, depth, quote, buf = [], 0, "", ""
    for ch in spec:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(buf)
            buf = ""
            continue
        buf += ch
    parts.append(buf)
    return parts


def _columns(spec: str) -> list[tuple[str, str]]:
    cols = []
    for part in _split_columns(spec.strip()):
        header, colon, path = part.partition(":")
        # an empty header is kubectl's too (the docs' custom-columns=":metadata.name" --no-headers)
        if not colon or not path:
            raise CtlError(f"custom-columns format: expected HEADER:JSONPATH, got {part!r}")
        jsonpath.compile_path(path.strip().removeprefix("{").removesuffix("}"))
        cols.append((header, path.strip()))
    return cols


def parse_format(output: str | None, **switches: Any) -> Format:
    fmt = Format(**switches)
    if fmt.sort_by:  # a bad path fails before any request
        jsonpath.compile_path(fmt.sort_by.strip().removeprefix("{").removesuffix("}"))
    if output is None:
        return fmt
    name, eq, arg = output.partition("=")
    if name in ("yaml", "json", "wide", "name") and not eq:
        fmt.kind = name
    elif name == "jsonpath":
        if not arg:
            raise CtlError("template format specified but no template given (-o jsonpath='{…}')")
        fmt.kind, fmt.template = "jsonpath", arg
        jsonpath.render(arg, {})  # parse errors now, before any request
    elif name == "jsonpath-file":
        fmt.kind, fmt.template = "jsonpath", _read(arg, "jsonpath template")
        jsonpath.render(fmt.template, {})
    elif name in ("go-template", "template"):  # kubectl takes both spellings
        if not arg:
            raise CtlError("template format specified but no template given (-o go-template='{{…}}')")
        fmt.kind, fmt.template = "go-template", arg
        gotemplate.check(arg)
    elif name in ("go-template-file", "templatefile"):
        fmt.kind, fmt.template = "go-template", _read(arg, "go-template")
        gotemplate.check(fmt.template)
    elif name == "custom-columns":
        fmt.kind, fmt.columns = "custom-columns", _columns(arg)
    elif name == "custom-columns-file":
        lines = [line for line in _read(arg, "custom-columns file").splitlines() if line.strip()]
        if len(lines) != 2:
            raise CtlError(f"{arg}: a custom-columns file has two lines, headers and JSONPaths")
        headers, paths = lines[0].split(), lines[1].split()
        if len(headers) != len(paths):
            raise CtlError(f"{arg}: {len(headers)} headers but {len(paths)} JSONPaths")
        fmt.kind = "custom-columns"
        fmt.columns = _columns(",".join(f"{h}:{p}" for h, p in zip(headers, paths, strict=True)))
    else:
        raise CtlError(
            f"unable to match a printer suitable for the output format {output!r}, "
            f"allowed formats are: {','.join(FORMATS)}"
        )
    return fmt


def sort(items: list[dict[str, Any]], expr: str) -> list[dict[str, Any]]:
    """``--sort-by``: objects without the field first, then numbers by value, then strings."""
    if not expr:
        return items

    def key(obj: dict[str, Any]) -> tuple[int, float, str]:
        value = jsonpath.first(obj, expr)
        if value is None:
            return (0, 0.0, "")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (1, float(value), "")
        return (2, 0.0, jsonpath.text(value))

    return sorted(items, key=key)


def _align(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join(
        "   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows
    )


def table(info: KindInfo, items: list[dict[str, Any]], fmt: Format, with_ns: bool, with_kind: bool) -> str:
    """A kind's printer columns; the NAME is ``kind.group/name`` when several kinds print."""
    wide = fmt.kind == "wide"
    cols = [c for c in info.printer_columns if wide or not c.get("priority")]
    header = (["NAMESPACE"] if with_ns else []) + ["NAME"] + [c["name"].upper() for c in cols]
    header += [key.rsplit("/", 1)[-1].upper() for key in fmt.label_columns]
    if fmt.show_labels:
        header.append("LABELS")
    rows = [] if fmt.no_headers else [header]
    for obj in items:
        meta = obj["metadata"]
        name = ref(info, meta["name"]) if with_kind else meta["name"]
        row = ([meta.get("namespace", "")] if with_ns else []) + [name]
        row += [_cell(json_path(obj, c["jsonPath"]), c.get("type", "string")) for c in cols]
        row += [str((meta.get("labels") or {}).get(key, "")) for key in fmt.label_columns]
        if fmt.show_labels:
            row.append(_labels(obj))
        rows.append(row)
    return _align(rows)


def custom_columns(items: list[dict[str, Any]], fmt: Format) -> str:
    rows = [] if fmt.no_headers else [[h for h, _ in fmt.columns]]
    for obj in items:
        row = []
        for _, path in fmt.columns:
            values = jsonpath.find(obj, path)
            row.append(",".join(jsonpath.text(v) for v in values) if values else "<none>")
        rows.append(row)
    return _align(rows)


def as_list(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": objs}


def dump(objs: list[tuple[KindInfo, dict[str, Any]]], fmt: Format, single: bool) -> str:
    """Every non-table format; ``single`` prints the object itself rather than a List."""
    bare = [o for _, o in objs]
    if fmt.kind == "name":
        return "".join(ref(info, o["metadata"]["name"]) + "\n" for info, o in objs)
    if fmt.kind == "custom-columns":
        return custom_columns(bare, fmt)
    body: Any = bare[0] if single and len(bare) == 1 else as_list(bare)
    if fmt.kind == "json":
        return json.dumps(body, indent=4) + "\n"
    if fmt.kind == "yaml":
        return yaml.safe_dump(body, sort_keys=False)
    if fmt.kind == "jsonpath":
        return jsonpath.render(fmt.template, body)
    if fmt.kind == "go-template":
        return gotemplate.render(fmt.template, body)
    raise CtlError(f"unknown output format {fmt.kind!r}")


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
        values = dict(meta.get(key) or {})
        values.pop("kubectl.kubernetes.io/last-applied-configuration", None)  # as kubectl describe
        out.append(f"{key.capitalize() + ':':<14}" + ("<none>" if not values else ""))
        out += [f"  {k}={v}" for k, v in sorted(values.items())]
    if meta.get("finalizers"):
        out.append("Finalizers:   " + ", ".join(meta["finalizers"]))
    if meta.get("deletionTimestamp"):
        out.append(f"Deleting:     since {meta['deletionTimestamp']}")
    for owner in meta.get("ownerReferences") or []:
        out.append(
            f"Owner:        {owner['kind']}/{owner['name']}"
            + (" (controller)" if owner.get("controller") else "")
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
