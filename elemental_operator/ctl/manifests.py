"""``-f FILE|DIR|URL|-`` (``-R`` recursive): manifests read into documents that know where they came
from, so that every error names the file, the document and, for YAML, the line and column."""

from __future__ import annotations

import json
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


@dataclass
class Doc:
    source: str
    index: int  # 1-based position in its file
    obj: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source}: document {self.index}"

    def kind_info(self) -> KindInfo:
        """The kind of this document, or an error naming file, document, kind and apiVersion."""
        kind, api = self.obj.get("kind"), self.obj.get("apiVersion")
        if not kind:
            raise CtlError(f"{self.where}: Object 'Kind' is missing")
        info = kinds().get(str(kind))
        if info is None or (api and api != info.api_version):
            raise CtlError(f'{self.where}: no matches for kind "{kind}" in version "{api}"')
        return info

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
        if source.endswith(".json"):
            loaded: Iterable[Any] = [json.loads(text)]
        else:
            loaded = yaml.safe_load_all(text)
        for doc in loaded:
            index += 1
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise CtlError(f"{source}: document {index}: expected a mapping, got {type(doc).__name__}")
            if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
                docs += [
                    Doc(source, index, item) for item in doc.get("items") or [] if isinstance(item, dict)
                ]
            else:
                docs.append(Doc(source, index, doc))
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
