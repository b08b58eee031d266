"""``-f FILE|DIR|URL|-`` (``-R`` recursive): manifests read into documents that know where they came
from, so that every error names the file, the document and, for YAML, the line and column."""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from elemental_operator.api import KindInfo, kinds
from elemental_operator.ctl.client import CtlError

SUFFIXES = (".yaml", ".yml", ".json")


_SEGMENT = re.compile(r"\[\d+\]|[^.\[\]]+")

# Aliases are kept (kubectl's YAML reader takes them) but bounded: a few hundred bytes of nested
# aliases ("billion laughs") expand into billions of nodes when the document is sent as JSON.
MAX_EXPANDED_NODES = 1_000_000


def expanded_size(root: yaml.Node) -> int:
    """Nodes in the tree ``root`` becomes once every alias is expanded; linear in the graph
    (each distinct node is sized once), so a bomb is measured without being expanded."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are still being sized
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # post-order without recursion: a deep document must not hit Python's limit
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if not children_done:
            if any(id(c) in open_ for c in children):
                return MAX_EXPANDED_NODES + 1  # a recursive alias (&a [*a]) expands forever
            open_.add(id(node))
            stack.append((node, True))
            stack += [(c, False) for c in children if id(c) not in sizes]
            continue
        open_.discard(id(node))
        sizes[id(node)] = min(1 + sum(sizes.get(id(c), 1) for c in children), MAX_EXPANDED_NODES + 1)
    return sizes[id(root)]


@dataclass
class Doc:
    source: str
    index: int  # 1-based position in its file
    obj: dict[str, Any]
    node: yaml.Node | None = None  # the YAML node it was read from (None for JSON files)

    @property
    def where(self) -> str:
        return f"{self.source}: document {self.index}"

    def position(self, path: str) -> str:
        """ ", line L, column C" of the deepest key of a field path (``spec.a[0].b``) present in the
        document, so that a schema error points into the file; "" when it cannot be placed."""
        cur, mark = self.node, None
        segments = _SEGMENT.findall(path)
        i = 0
        while cur is not None and i < len(segments):
            seg = segments[i]
            if seg.startswith("["):
                items = cur.value if isinstance(cur, yaml.SequenceNode) else []
                idx = int(seg[1:-1])
                if idx >= len(items):
                    break
                cur, mark, i = items[idx], items[idx].start_mark, i + 1
                continue
            if not isinstance(cur, yaml.MappingNode):
                break
            keys = {str(k.value): (k, v) for k, v in cur.value if isinstance(k, yaml.ScalarNode)}
            # a key may hold dots (label keys): the longest run of segments that names a key
            for j in range(len(segments), i, -1):
                name = ".".join(segments[i:j])
                if "[" not in name and name in keys:
                    key, cur = keys[name]
                    mark, i = key.start_mark, j
                    break
            else:
                break
        return f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    def kind_info(self) -> KindInfo:
        """The kind of this document, or an error naming file, document, kind and apiVersion."""
        kind, api = self.obj.get("kind"), self.obj.get("apiVersion")
        if not kind:
            raise CtlError(f"{self.where}: Object 'Kind' is missing")
        info = kinds().get(str(kind))
        if info is None or (api and api != info.api_version):
            raise CtlError(f'{self.where}: no matches for kind "{kind}" in version "{api}"')
        return info

    def _items(self) -> list[yaml.Node]:
        if isinstance(self.node, yaml.MappingNode):
            for key, value in self.node.value:
                if getattr(key, "value", None) == "items" and isinstance(value, yaml.SequenceNode):
                    return list(value.value)
        return []

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name") or "")


def _fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            data: bytes = resp.read()
    except urllib.error.HTTPError as exc:
        raise CtlError(f"{url}: the server answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CtlError(f"{url}: cannot fetch: {getattr(exc, 'reason', exc)}") from None
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise CtlError(f"{url}: not UTF-8 text") from None


def _files(path: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix in SUFFIXES)


def _sources(names: Iterable[str], recursive: bool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in names:
        if name == "-":
            out.append(("<stdin>", sys.stdin.read()))
        elif name.startswith(("http://", "https://")):
            out.append((name, _fetch(name)))
        else:
            path = Path(name)
            if path.is_dir():
                files = _files(path, recursive)
                if not files and not recursive:
                    raise CtlError(f"{name}: no {'/'.join(SUFFIXES)} files (-R reads subdirectories)")
                out += [(str(f), _read(f)) for f in files]
            else:
                out.append((name, _read(path)))
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise CtlError(f'the path "{path}" does not exist') from None
    except UnicodeDecodeError:
        raise CtlError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise CtlError(f"{path}: {exc.strerror}") from None


def parse_text(source: str, text: str) -> list[Doc]:
    docs: list[Doc] = []
    index = 0
    try:
        nodes: list[yaml.Node | None]
        if source.endswith(".json"):
            loaded: Iterable[Any] = [json.loads(text)]
            nodes = [None]
        else:
            # The nodes keep each key's line and column, for errors found later by the schemas.
            nodes = []
            for composed in yaml.compose_all(text, Loader=yaml.SafeLoader):
                nodes.append(composed)
                index += 1  # while composing, for a syntax error's document number
                if composed is not None and expanded_size(composed) > MAX_EXPANDED_NODES:
                    mark = composed.start_mark
                    raise CtlError(
                        f"{source}: document {index}, line {mark.line + 1}, column {mark.column + 1}: "
                        f"YAML aliases expand this document to more than {MAX_EXPANDED_NODES} nodes "
                        "(an alias bomb?); write the repeated parts out"
                    )
            index = 0
            loaded = yaml.safe_load_all(text)
        for doc in loaded:
            node = nodes[index] if index < len(nodes) else None
            index += 1
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise CtlError(f"{source}: document {index}: expected a mapping, got {type(doc).__name__}")
            if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
                item_nodes = Doc(source, index, doc, node)._items()
                docs += [
                    Doc(source, index, item, item_nodes[n] if n < len(item_nodes) else None)
                    for n, item in enumerate(doc["items"])
                    if isinstance(item, dict)
                ]
            else:
                docs.append(Doc(source, index, doc, node))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CtlError(f"{source}: document {index + 1}{where}: {problem}") from None
    except json.JSONDecodeError as exc:
        raise CtlError(f"{source}: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    return docs


def read(names: list[str], recursive: bool) -> list[Doc]:
    """Every document of every source; a syntax error anywhere stops before anything is sent."""
    docs: list[Doc] = []
    for source, text in _sources(names, recursive):
        docs += parse_text(source, text)
    return docs
