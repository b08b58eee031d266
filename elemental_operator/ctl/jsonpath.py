"""kubectl's JSONPath templates (``{.items[*].metadata.name}``, ``{range …}{end}``) over jsonpath-ng.

The path expressions are jsonpath-ng's (``jsonpath_ng.ext``: filters, slices, wildcards); this
module only splits a template into text, ``{path}``, ``{"literal"}``, ``{range path}`` and
``{end}``, and turns kubectl's spellings into jsonpath-ng's: a leading ``.`` or ``@`` becomes
``$``, and a field with kubectl's ``\\.`` escapes or a ``/`` (label and annotation keys) is quoted.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from jsonpath_ng.ext import parse as _jp_parse

from elemental_operator.ctl.client import CtlError

# A dotted field that jsonpath-ng's lexer cannot read bare: it has kubectl's \. escapes or a '/'.
_ESCAPED_FIELD = re.compile(r"\.((?:[A-Za-z0-9_\-]|\\\.|/)*(?:\\\.|/)(?:[A-Za-z0-9_\-]|\\\.|/)*)")


def _to_jsonpath_ng(expr: str) -> str:
    expr = expr.strip()
    if expr.startswith("@"):
        expr = "$" + expr[1:]
    elif expr.startswith(".") or expr.startswith("["):
        expr = "$" + expr
    elif not expr.startswith("$"):
        expr = "$." + expr
    if expr in ("$.", "$"):
        return "$"
    # Only outside quoted strings: "['a.b/c']" and filter literals are jsonpath-ng's already.
    parts = re.split(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""", expr)
    # kubectl also reads \. inside a quoted key ("{.data['tls\.crt']}", in Elemental's e2e tests).
    return "".join(
        part.replace("\\.", ".")
        if i % 2
        else _ESCAPED_FIELD.sub(lambda m: ".'" + m.group(1).replace("\\.", ".") + "'", part)
        for i, part in enumerate(parts)
    )


@functools.lru_cache(maxsize=256)
def compile_path(expr: str) -> Any:
    try:
        return _jp_parse(_to_jsonpath_ng(expr))
    except Exception as exc:  # jsonpath-ng raises plain Exceptions for lexer/parser errors
        raise CtlError(f"error parsing jsonpath {expr!r}: {exc}") from None


def find(obj: Any, expr: str) -> list[Any]:
    """Every value ``expr`` (kubectl spelling, with or without braces) selects in ``obj``."""
    expr = expr.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    return [m.value for m in compile_path(expr).find(obj)]


def first(obj: Any, expr: str) -> Any:
    values = find(obj, expr)
    return values[0] if values else None


def text(value: Any) -> str:
    """How kubectl prints one JSONPath result: scalars bare, objects and lists as compact JSON."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# ---- templates ------------------------------------------------------------------------------


@dataclass
class _Node:
    kind: str  # "text", "path", "range"
    value: str = ""
    body: list[_Node] = field(default_factory=list)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def _literal(quoted: str) -> str:
    body = quoted[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), body)


def _actions(template: str) -> list[tuple[str, str]]:
    """Split into ("text", …) and ("action", inside-the-braces) pieces; quotes may hold braces."""
    out: list[tuple[str, str]] = []
    i, n, buf = 0, len(template), ""
    while i < n:
        c = template[i]
        if c != "{":
            buf += c
            i += 1
            continue
        if buf:
            out.append(("text", buf))
            buf = ""
        j, quote, depth = i + 1, "", 1
        while j < n:
            ch = template[j]
            if quote:
                if ch == "\\":
                    j += 1
                elif ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if j >= n:
            raise CtlError(f"error parsing jsonpath {template!r}: unclosed action")
        out.append(("action", template[i + 1 : j].strip()))
        i = j + 1
    if buf:
        out.append(("text", buf))
    return out


def _parse_template(template: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[list[_Node]] = [root]
    for kind, value in _actions(template):
        if kind == "text":
            stack[-1].append(_Node("text", value))
        elif value == "end":
            if len(stack) == 1:
                raise CtlError(f"error parsing jsonpath {template!r}: {{end}} without {{range}}")
            stack.pop()
        elif value.startswith("range ") or value == "range":
            node = _Node("range", value[5:].strip())
            if not node.value:
                raise CtlError(f"error parsing jsonpath {template!r}: range needs a path")
            compile_path(node.value)
            stack[-1].append(node)
            stack.append(node.body)
        elif value[:1] in "\"'" and len(value) >= 2 and value[-1] == value[0]:
            stack[-1].append(_Node("text", _literal(value)))
        elif not value:
            raise CtlError(f"error parsing jsonpath {template!r}: empty action {{}}")
        else:
            compile_path(value)
            stack[-1].append(_Node("path", value))
    if len(stack) != 1:
        raise CtlError(f"error parsing jsonpath {template!r}: {{range}} without {{end}}")
    return root


def _render(nodes: list[_Node], data: Any) -> str:
    out: list[str] = []
    for node in nodes:
        if node.kind == "text":
            out.append(node.value)
        elif node.kind == "path":
            out.append(" ".join(text(v) for v in find(data, node.value)))
        else:
            for item in find(data, node.value):
                out.append(_render(node.body, item))
    return "".join(out)


def render(template: str, data: Any) -> str:
    """kubectl ``-o jsonpath=TEMPLATE``; a template without braces is one path, as in kubectl."""
    if "{" not in template:
        template = "{" + template + "}"
    return _render(_parse_template(template), data)
