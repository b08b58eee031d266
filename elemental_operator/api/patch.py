"""PATCH bodies: RFC 7386 merge patches, RFC 6902 JSON patches, and a strategic merge that merges
lists of keyed items (conditions by ``type``, containers/env by ``name``) instead of replacing them.

The admin API's PATCH (``server.app``) applies them to the stored object inside one write and
``elementalctl patch`` sends them; both name a bad patch with ``PatchError``.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied (wrong shape, missing path, failed test)."""


# Content types of the Kubernetes API's PATCH, by elementalctl's --type.
CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}

# Strategic merge keys by list field name (Kubernetes' patchMergeKey for the shapes we serve).
MERGE_KEYS = {"conditions": "type", "addresses": "type"}
NAME_KEYED = "name"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field in MERGE_KEYS:
        return MERGE_KEYS[field]
    if items and all(isinstance(i, dict) and NAME_KEYED in i for i in items):
        return NAME_KEYED
    return None


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Like ``merge_patch``, but lists of keyed objects merge item by item; an item with
    ``$patch: delete`` removes the item with its key."""
    if isinstance(patch, list) and isinstance(target, list):
        key = _merge_key(field, patch)
        if key is None or not all(isinstance(i, dict) and key in i for i in target):
            return copy.deepcopy(patch)
        out = [copy.deepcopy(i) for i in target]
        for item in patch:
            pos = next((n for n, cur in enumerate(out) if cur.get(key) == item[key]), None)
            if item.get("$patch") == "delete":
                if pos is not None:
                    del out[pos]
            elif pos is None:
                out.append(copy.deepcopy(item))
            else:
                out[pos] = strategic_merge(out[pos], item)
        return out
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out_obj = dict(target) if isinstance(target, dict) else {}
    for key_, value in patch.items():
        if value is None:
            out_obj.pop(key_, None)
        else:
            out_obj[key_] = strategic_merge(out_obj.get(key_), value, key_)
    return out_obj


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"json patch: path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise PatchError(f"json patch: path {path!r} does not exist")
    return cur


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, last = _parent(doc, parts, path), parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"json patch: path {path!r} does not exist")


def _remove(doc: Any, path: str) -> Any:
    value = _get(doc, path)
    parts = _pointer(path)
    parent = _parent(doc, parts, path)
    if isinstance(parent, dict):
        del parent[parts[-1]]
    else:
        del parent[int(parts[-1])]
    return value


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _parent(doc, parts, path), parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"json patch: index {last!r} out of range in {path!r}")
    else:
        raise PatchError(f"json patch: the parent of {path!r} is not an object or array")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test, applied in order to a copy."""
    if not isinstance(ops, list):
        raise PatchError("json patch: the patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for n, op in enumerate(ops):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"json patch: operation {n}: needs 'op' and 'path'")
        name, path = op["op"], str(op["path"])
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"json patch: operation {n} ({name}): needs 'value'")
        if name == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif name == "remove":
            _remove(doc, path)
        elif name == "replace":
            _get(doc, path)
            if _pointer(path):
                _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif name in ("move", "copy"):
            if "from" not in op:
                raise PatchError(f"json patch: operation {n} ({name}): needs 'from'")
            value = _remove(doc, op["from"]) if name == "move" else copy.deepcopy(_get(doc, op["from"]))
            doc = _add(doc, path, value)
        elif name == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"json patch: test failed at {path!r}")
        else:
            raise PatchError(f"json patch: operation {n}: unknown op {name!r}")
    return doc


def apply(kind: str, obj: dict[str, Any], patch: Any) -> dict[str, Any]:
    if kind == "json":
        out = json_patch(obj, patch)
    elif kind == "merge":
        if not isinstance(patch, dict):
            raise PatchError("merge patch: the patch must be an object")
        out = merge_patch(obj, patch)
    elif kind == "strategic":
        if not isinstance(patch, dict):
            raise PatchError("strategic merge patch: the patch must be an object")
        out = strategic_merge(obj, patch)
    else:
        raise PatchError(f'patch type must be one of [json merge strategic], not "{kind}"')
    if not isinstance(out, dict):
        raise PatchError("patch: the result is not an object")
    return out
