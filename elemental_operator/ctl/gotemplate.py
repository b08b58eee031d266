"""``-o go-template=…``: a subset of Go's text/template, enough for kubectl's habits.

No Go template library is packaged for Python (Debian or PyPI), so this evaluates the part of the
language kubectl users write, following Go's rules (text/template's documentation is the spec):

* actions ``{{ }}`` with ``{{-``/``-}}`` trimming; ``{{/* comments */}}``;
* ``.``, fields ``.a.b`` (a missing key is Go's ``<no value>``), ``$``, variables ``$x`` and
  ``$x.a``, ``{{$x := …}}``/``{{$x = …}}``; string (``"…"``, raw ```…```), number, ``true``,
  ``false`` and ``nil`` literals; parentheses; pipelines ``a | f b`` (the value is the last argument);
* ``if``/``else if``/``else``, ``range`` (lists in order, maps by sorted key; ``$i, $e :=``;
  ``else``; ``break``/``continue``), ``with``/``else``, ``end``;
* functions ``and or not eq ne lt le gt ge len index print printf println`` and kubectl's
  ``base64decode``; printf's verbs ``%s %v %d %q %t %f %x %%`` with widths.

Not supported (one clear error): ``define``/``template``/``block``, methods, ``slice``, ``call``,
``html``/``js``/``urlquery``. Values print as Go prints them (``map[k:v]``, ``[a b]``,
``<no value>``); integers from JSON stay integers, as in Kubernetes' unstructured objects.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from elemental_operator.ctl.client import CtlError

_NO_VALUE = object()  # a missing map key: prints "<no value>", is false


class TemplateError(CtlError):
    pass


# ---- lexing ------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    | (?P<var>\$[A-Za-z0-9_]*)
    | (?P<field>(?:\.[A-Za-z0-9_]+)+|\.)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>:=|=|\||\(|\)|,)
    )""",
    re.X,
)
_FIELDS = re.compile(r"\.([A-Za-z0-9_]+)")


@dataclass
class Tok:
    kind: str
    text: str


def _lex(src: str, where: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    while pos < len(src):
        if not src[pos:].strip():
            break
        m = _TOKEN.match(src, pos)
        if m is None or m.end() == pos:
            raise TemplateError(f"{where}: unexpected {src[pos:].strip()[:20]!r} in action")
        kind = m.lastgroup or ""
        text = m.group(kind)
        # a field right after a variable or ")" belongs to it ($x.a, (…).a)
        adjacent = not src[pos : m.start(kind)] and text != "."
        if kind == "field" and adjacent and out and out[-1].kind == "var":
            out[-1] = Tok("var", out[-1].text + text)
        elif kind == "field" and adjacent and out and out[-1].text == ")":
            out.append(Tok("chain", text))
        else:
            out.append(Tok(kind, text))
        pos = m.end()
    return out


# ---- parsing -----------------------------------------------------------------------------------


@dataclass
class Pipe:
    decl: list[str] = field(default_factory=list)
    assign: bool = False  # "=" rather than ":="
    cmds: list[list[Any]] = field(default_factory=list)  # each: operands (Tok or Pipe)


@dataclass
class Chain:
    """``(pipeline).a.b``."""

    pipe: Pipe
    fields: list[str]


@dataclass
class Node:
    kind: str  # text, action, if, range, with, break, continue
    text: str = ""
    pipe: Pipe | None = None
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)


def _parse_pipe(toks: list[Tok], where: str, decl_ok: bool = True) -> Pipe:
    pipe = Pipe()
    i = 0
    if decl_ok:
        names: list[str] = []
        j = 0
        while j < len(toks) and toks[j].kind == "var":
            names.append(toks[j].text)
            if j + 1 < len(toks) and toks[j + 1].text == ",":
                j += 2
                continue
            j += 1
            break
        if names and j < len(toks) and toks[j].text in (":=", "="):
            pipe.decl, pipe.assign, i = names, toks[j].text == "=", j + 1
    cmd: list[Any] = []
    while i < len(toks):
        t = toks[i]
        if t.text == "|":
            if not cmd:
                raise TemplateError(f"{where}: missing command before '|'")
            pipe.cmds.append(cmd)
            cmd = []
        elif t.text == "(":
            depth, j = 1, i + 1
            while j < len(toks) and depth:
                depth += {"(": 1, ")": -1}.get(toks[j].text, 0)
                j += 1
            if depth:
                raise TemplateError(f"{where}: unclosed '('")
            group: Any = _parse_pipe(toks[i + 1 : j - 1], where, decl_ok=False)
            if j < len(toks) and toks[j].kind == "chain":
                group, j = Chain(group, _FIELDS.findall(toks[j].text)), j + 1
            cmd.append(group)
            i = j
            continue
        elif t.text in (")", ",", ":=", "=") or t.kind == "chain":
            raise TemplateError(f"{where}: unexpected {t.text!r}")
        else:
            cmd.append(t)
        i += 1
    if not cmd:
        raise TemplateError(f"{where}: missing value for command")
    pipe.cmds.append(cmd)
    return pipe


def _actions(src: str) -> Iterator[tuple[str, str]]:
    """("text", s) and ("action", inside) pieces, with {{- -}} trimming applied."""
    pos, trim_next = 0, False
    while True:
        start = src.find("{{", pos)
        text = src[pos:] if start < 0 else src[pos:start]
        if trim_next:
            text = text.lstrip()
        if start < 0:
            if text:
                yield "text", text
            return
        inner_start = start + 2
        trim_prev = src.startswith("- ", inner_start) or src.startswith("-\t", inner_start)
        if trim_prev:
            text = text.rstrip()
            inner_start += 1
        if text:
            yield "text", text
        # find the closing }} outside string literals
        i, quote = inner_start, ""
        while i < len(src):
            ch = src[i]
            if quote:
                if ch == "\\" and quote == '"':
                    i += 1
                elif ch == quote:
                    quote = ""
            elif ch in '"`':
                quote = ch
            elif src.startswith("}}", i):
                break
            i += 1
        else:
            raise TemplateError(f"unclosed action at offset {start}")
        inner = src[inner_start:i]
        trim_next = inner.endswith(" -") or inner.endswith("\t-")
        if trim_next:
            inner = inner[:-1]
        yield "action", inner.strip()
        pos = i + 2


def parse(src: str) -> list[Node]:
    root: list[Node] = []
    stack: list[tuple[Node | None, list[Node]]] = [(None, root)]
    for n, (kind, text) in enumerate(_actions(src)):
        where = f"action {n}"
        out = stack[-1][1]
        if kind == "text":
            out.append(Node("text", text))
            continue
        if text.startswith("/*"):
            if not text.endswith("*/"):
                raise TemplateError(f"{where}: unclosed comment")
            continue
        word, _, rest = text.partition(" ")
        if word in ("if", "range", "with"):
            node = Node(word, pipe=_parse_pipe(_lex(rest, where), where))
            out.append(node)
            stack.append((node, node.body))
        elif word == "else":
            block = stack[-1][0]
            if block is None or stack[-1][1] is block.orelse:
                raise TemplateError(f"{where}: unexpected {{{{else}}}}")
            if rest.startswith(("if ", "with ")):
                # else if / else with: a block inside this one's orelse; its {{end}} ends both
                sub, _, cond = rest.partition(" ")
                node = Node(sub, pipe=_parse_pipe(_lex(cond, where), where))
                block.orelse.append(node)
                stack[-1] = (node, node.body)
            else:
                stack[-1] = (block, block.orelse)
        elif word == "end":
            if len(stack) == 1:
                raise TemplateError(f"{where}: unexpected {{{{end}}}}")
            stack.pop()
        elif word in ("break", "continue"):
            if not any(b is not None and b.kind == "range" for b, _ in stack):
                raise TemplateError(f"{where}: {{{{{word}}}}} outside {{{{range}}}}")
            out.append(Node(word))
        elif word in ("define", "template", "block"):
            raise TemplateError(f"{where}: {{{{{word}}}}} is not supported by elementalctl's go-template")
        else:
            out.append(Node("action", pipe=_parse_pipe(_lex(text, where), where)))
    if len(stack) > 1:
        raise TemplateError("unexpected EOF: an {{if}}, {{range}} or {{with}} has no {{end}}")
    return root


# ---- evaluation --------------------------------------------------------------------------------


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def truth(v: Any) -> bool:
    if v is _NO_VALUE or v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0
    if isinstance(v, str | list | dict):
        return len(v) > 0
    return True


def show(v: Any) -> str:
    """A value as Go's fmt %v prints it."""
    if v is _NO_VALUE:
        return "<no value>"
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e21 else repr(v)
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{show(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(show(x) for x in v) + "]"
    return str(v)


def _field(v: Any, names: list[str]) -> Any:
    for name in names:
        if v is _NO_VALUE or v is None:
            return _NO_VALUE
        if not isinstance(v, dict):
            raise TemplateError(f"can't evaluate field {name} in type {type(v).__name__}")
        v = v.get(name, _NO_VALUE)
    return v


def _printf(fmt: str, *args: Any) -> str:
    out, n = [], 0

    def repl(m: re.Match[str]) -> str:
        nonlocal n
        flags, verb = m.group(1), m.group(2)
        if verb == "%":
            return "%"
        if n >= len(args):
            return f"%!{verb}(MISSING)"
        a = args[n]
        n += 1
        if verb in "sv":
            s = show(a)
        elif verb == "q":
            s = json.dumps(show(a) if not isinstance(a, str) else a)
        elif verb == "t":
            s = show(a) if isinstance(a, bool) else f"%!t({show(a)})"
        elif verb in "dxX":
            if not isinstance(a, int) or isinstance(a, bool):
                return f"%!{verb}({show(a)})"
            s = format(a, {"d": "d", "x": "x", "X": "X"}[verb])
        else:  # f
            if isinstance(a, bool) or not isinstance(a, int | float):
                return f"%!f({show(a)})"
            prec = re.search(r"\.(\d+)", flags)
            s = f"{float(a):.{prec.group(1) if prec else 6}f}"
        width = re.match(r"-?(\d+)", flags)
        if width:
            w = int(width.group(1))
            s = s.ljust(w) if flags.startswith("-") else s.rjust(w)
        return s

    out.append(re.sub(r"%([-+ #0]*\d*(?:\.\d+)?)([svqtdxXf%])", repl, fmt))
    return "".join(out)


def _cmp(name: str) -> Callable[..., bool]:
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
    }

    def f(a: Any, b: Any) -> bool:
        if (
            isinstance(a, bool)
            or isinstance(b, bool)
            or type(a) is not type(b)
            and not (isinstance(a, int | float) and isinstance(b, int | float))
        ):
            raise TemplateError(f"error calling {name}: incompatible types for comparison")
        return ops[name](a, b)

    return f


def _index(v: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(v, dict):
            v = v.get(k, _NO_VALUE) if isinstance(k, str) else _NO_VALUE
        elif isinstance(v, list) and isinstance(k, int) and not isinstance(k, bool):
            if not 0 <= k < len(v):
                raise TemplateError(f"error calling index: index out of range: {k}")
            v = v[k]
        elif v is _NO_VALUE or v is None:
            return _NO_VALUE
        else:
            raise TemplateError(f"error calling index: can't index item of type {type(v).__name__}")
    return v


def _base64decode(s: Any) -> str:
    try:
        return base64.b64decode(str(s), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise TemplateError(f"error calling base64decode: {exc}") from None


def _len(v: Any) -> int:
    if isinstance(v, str | list | dict):
        return len(v)
    raise TemplateError(f"error calling len: len of type {type(v).__name__}")


FUNCS: dict[str, Callable[..., Any]] = {
    "not": lambda a: not truth(a),
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": _cmp("lt"),
    "le": _cmp("le"),
    "gt": _cmp("gt"),
    "ge": _cmp("ge"),
    "len": _len,
    "index": _index,
    "print": lambda *a: "".join(show(x) for x in a),
    "println": lambda *a: " ".join(show(x) for x in a) + "\n",
    "printf": lambda fmt, *a: _printf(str(fmt), *a),
    "base64decode": _base64decode,
}


class _Scope:
    def __init__(self, root: Any) -> None:
        self.vars: list[dict[str, Any]] = [{"$": root}]

    def get(self, name: str) -> Any:
        for frame in reversed(self.vars):
            if name in frame:
                return frame[name]
        raise TemplateError(f'undefined variable "{name}"')

    def set(self, name: str, value: Any, declare: bool) -> None:
        if declare:
            self.vars[-1][name] = value
            return
        for frame in reversed(self.vars):
            if name in frame:
                frame[name] = value
                return
        raise TemplateError(f'undefined variable "{name}"')


def _operand(t: Any, dot: Any, scope: _Scope) -> Any:
    if isinstance(t, Pipe):
        return _pipe(t, dot, scope)
    if isinstance(t, Chain):
        return _field(_pipe(t.pipe, dot, scope), t.fields)
    if t.kind == "field":
        return dot if t.text == "." else _field(dot, _FIELDS.findall(t.text))
    if t.kind == "var":
        name, _, rest = t.text.partition(".")
        return _field(scope.get(name), rest.split(".")) if rest else scope.get(name)
    if t.kind == "str":
        return json.loads(t.text)
    if t.kind == "raw":
        return t.text[1:-1]
    if t.kind == "num":
        return float(t.text) if any(c in t.text for c in ".eE") else int(t.text)
    if t.kind == "ident":
        if t.text in ("true", "false"):
            return t.text == "true"
        if t.text == "nil":
            return None
        if t.text in FUNCS or t.text in ("and", "or"):
            raise TemplateError(f"wrong number of args for {t.text}")
        raise TemplateError(f'function "{t.text}" not defined')
    raise TemplateError(f"unexpected {t.text!r}")


@dataclass
class _Final:
    """The piped-in value, as the last operand of and/or."""

    value: Any


def _command(cmd: list[Any], dot: Any, scope: _Scope, final: Any = _NO_VALUE, piped: bool = False) -> Any:
    head = cmd[0]
    if isinstance(head, Tok) and head.kind == "ident" and head.text not in ("true", "false", "nil"):
        name = head.text
        if name not in FUNCS and name not in ("and", "or"):
            raise TemplateError(f'function "{name}" not defined')
        raw = cmd[1:]
        if name in ("and", "or"):  # short-circuit, returning the deciding value
            operands: list[Any] = [*raw, _Final(final)] if piped else list(raw)
            if not operands:
                raise TemplateError(f"wrong number of args for {name}: want at least 1 got 0")
            v: Any = None
            for t in operands:  # evaluated one by one: the rest is skipped once decided
                v = t.value if isinstance(t, _Final) else _operand(t, dot, scope)
                if truth(v) != (name == "and"):
                    return v
            return v
        args = [_operand(t, dot, scope) for t in raw] + ([final] if piped else [])
        try:
            return FUNCS[name](*args)
        except TypeError:
            raise TemplateError(f"wrong number of args for {name}: got {len(args)}") from None
    if len(cmd) > 1 or piped:
        raise TemplateError(f"can't give argument to non-function {getattr(head, 'text', '(…)')}")
    return _operand(head, dot, scope)


def _pipe(pipe: Pipe, dot: Any, scope: _Scope) -> Any:
    value: Any = _NO_VALUE
    for n, cmd in enumerate(pipe.cmds):
        value = _command(cmd, dot, scope, value, piped=n > 0)
    return value


def _declare(pipe: Pipe, value: Any, scope: _Scope) -> None:
    if pipe.decl:
        scope.set(pipe.decl[-1], value, not pipe.assign)


def _run(nodes: list[Node], dot: Any, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "action":
            assert node.pipe is not None
            value = _pipe(node.pipe, dot, scope)
            if node.pipe.decl:
                _declare(node.pipe, value, scope)
            else:
                out.append(show(value))
        elif node.kind in ("if", "with"):
            assert node.pipe is not None
            scope.vars.append({})
            try:
                value = _pipe(node.pipe, dot, scope)
                _declare(node.pipe, value, scope)
                if truth(value):
                    _run(node.body, value if node.kind == "with" else dot, scope, out)
                else:
                    _run(node.orelse, dot, scope, out)
            finally:
                scope.vars.pop()
        elif node.kind == "range":
            assert node.pipe is not None
            value = _pipe(node.pipe, dot, scope)
            if isinstance(value, dict):
                pairs: list[tuple[Any, Any]] = [(k, value[k]) for k in sorted(value)]
            elif isinstance(value, list):
                pairs = list(enumerate(value))
            elif value is _NO_VALUE or value is None:
                pairs = []
            elif isinstance(value, int) and not isinstance(value, bool):
                pairs = [(i, i) for i in range(value)]
            else:
                raise TemplateError(f"range can't iterate over {show(value)}")
            if not pairs:
                _run(node.orelse, dot, scope, out)
            for key, elem in pairs:
                scope.vars.append({})
                try:
                    names = node.pipe.decl
                    if len(names) == 1:
                        scope.set(names[0], elem, True)
                    elif len(names) == 2:
                        scope.set(names[0], key, True)
                        scope.set(names[1], elem, True)
                    _run(node.body, elem, scope, out)
                except _Continue:
                    continue
                except _Break:
                    break
                finally:
                    scope.vars.pop()
        elif node.kind == "break":
            raise _Break
        elif node.kind == "continue":
            raise _Continue


def check(src: str) -> None:
    """Parse errors before any request, in kubectl's words."""
    try:
        parse(src)
    except TemplateError as exc:
        raise CtlError(f"error parsing template {src}, {exc.message}") from None


def render(src: str, data: Any) -> str:
    try:
        out: list[str] = []
        _run(parse(src), data, _Scope(data), out)
        return "".join(out)
    except TemplateError as exc:
        raise CtlError(f"error executing template {src!r}: {exc.message}") from None
