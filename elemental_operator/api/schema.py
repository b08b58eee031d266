"""Kinds, their OpenAPI v3 schemas, validation with defaulting, and printer columns.

The kinds and their schemas are defined once, in ``kinds.py``, so the validator, the
generated CRDs/Helm chart and the CLI tables can never disagree.
The validator implements the structural-schema subset Kubernetes uses: types, properties,
additionalProperties, required, enum, pattern, length/minimum/maxItems bounds, defaults, nullable,
x-kubernetes-preserve-unknown-fields and x-kubernetes-int-or-string (``anyOf`` is its CRD
spelling). Unknown fields are refused, as the API server does under strict field validation,
kubectl's default since 1.27 (``--validate=strict``: "strict decoding error: unknown field");
without it Kubernetes would prune them silently.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import re
from dataclasses import dataclass, field
from typing import Any

from elemental_common.consts import GROUP
from elemental_operator.api.kinds import KIND_DEFS, Schema

VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"

KIND_NAMES = tuple(d.kind for d in KIND_DEFS)

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_STR: Schema = {"type": "string"}

# CRD schemas leave metadata to the API server; we are the API server, so we check it here.
METADATA_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "generateName": _STR,
        "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
        "labels": {
            "type": "object",
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE},
        },
        "annotations": {"type": "object", "additionalProperties": _STR},
        "uid": _STR,
        "resourceVersion": _STR,
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": "string", "nullable": True},
        "deletionTimestamp": {"type": "string", "nullable": True},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "finalizers": {"type": "array", "items": _STR},
        "ownerReferences": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["apiVersion", "kind", "name", "uid"],
                "properties": {
                    "apiVersion": _STR,
                    "kind": _STR,
                    "name": _STR,
                    "uid": _STR,
                    "controller": {"type": "boolean"},
                    "blockOwnerDeletion": {"type": "boolean"},
                },
            },
        },
        "managedFields": {"type": "array", "items": {"x-kubernetes-preserve-unknown-fields": True}},
        "selfLink": _STR,
    },
}


@dataclass(frozen=True)
class KindInfo:
    kind: str
    api_version: str
    plural: str
    singular: str
    namespaced: bool
    has_status: bool
    core: bool
    schema: Schema
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    short_names: tuple[str, ...] = ()


class ValidationError(ValueError):
    """An object does not match its kind's schema; the message names the field path."""


@functools.cache
def kinds() -> dict[str, KindInfo]:
    return {
        d.kind: KindInfo(
            kind=d.kind,
            api_version="v1" if d.core else API_VERSION,
            plural=d.plural,
            singular=d.singular,
            namespaced=d.namespaced,
            has_status=d.status_subresource,
            core=d.core,
            schema=copy.deepcopy(d.schema),
            printer_columns=copy.deepcopy(list(d.printer_columns)),
            short_names=d.short_names,
        )
        for d in KIND_DEFS
    }


def kind_info(kind: str) -> KindInfo:
    try:
        return kinds()[kind]
    except KeyError:
        raise ValidationError(f"kind: unknown kind {kind!r}") from None


def resolve_kind(name: str) -> KindInfo:
    """Map a CLI/REST spelling (Kind, plural, singular, short name; any case) to its kind."""
    low = name.lower()
    for info in kinds().values():
        if low in (info.kind.lower(), info.plural, info.singular, *info.short_names):
            return info
    raise ValidationError(f"unknown resource type {name!r}")


def validate(obj: Any, pruned: list[str] | None = None) -> dict[str, Any]:
    """Return a defaulted deep copy of ``obj`` or raise ValidationError naming the bad field.

    With ``pruned`` (a list), unknown fields are dropped and their paths appended to it instead
    of being errors: the API server's ``fieldValidation=Ignore|Warn`` (kubectl ``--validate=false``).
    """
    if not isinstance(obj, dict):
        raise ValidationError("object must be a mapping")
    kind = obj.get("kind")
    if not isinstance(kind, str):
        raise ValidationError("kind: required")
    info = kind_info(kind)
    if obj.get("apiVersion") != info.api_version:
        raise ValidationError(f"apiVersion: must be {info.api_version!r} for kind {kind}")
    out = _check(copy.deepcopy(obj), info.schema, "", metadata=True, pruned=pruned)
    if info.kind == "Secret":
        for key, value in (out.get("data") or {}).items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValidationError(f"data.{key}: not valid base64") from None
    assert isinstance(out, dict)
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _check(
    value: Any, schema: Schema, path: str, metadata: bool = False, pruned: list[str] | None = None
) -> Any:
    where = path or "<root>"
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValidationError(f"{where}: must be an integer or a string, got {_type_name(value)}")
        if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
            raise ValidationError(f"{where}: {value!r} does not match {schema['pattern']}")
        return value
    typ = schema.get("type")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    if typ is None and preserve and "properties" not in schema:
        return value
    if typ == "object" or (typ is None and "properties" in schema):
        if not isinstance(value, dict):
            raise ValidationError(f"{where}: must be an object, got {_type_name(value)}")
        return _check_object(value, schema, path, preserve, metadata, pruned)
    if typ == "array":
        if not isinstance(value, list):
            raise ValidationError(f"{where}: must be an array, got {_type_name(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise ValidationError(f"{where}: more than {schema['maxItems']} items")
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise ValidationError(f"{where}: fewer than {schema['minItems']} items")
        items = schema.get("items") or {"x-kubernetes-preserve-unknown-fields": True}
        return [_check(v, items, f"{path}[{i}]", pruned=pruned) for i, v in enumerate(value)]
    if typ == "string":
        if not isinstance(value, str):
            raise ValidationError(f"{where}: must be a string, got {_type_name(value)}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise ValidationError(f"{where}: longer than {schema['maxLength']} characters")
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise ValidationError(f"{where}: shorter than {schema['minLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise ValidationError(f"{where}: {value!r} does not match {schema['pattern']}")
    elif typ == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"{where}: must be an integer, got {_type_name(value)}")
    elif typ == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"{where}: must be a number, got {_type_name(value)}")
    elif typ == "boolean":
        if not isinstance(value, bool):
            raise ValidationError(f"{where}: must be a boolean, got {_type_name(value)}")
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(str(v) for v in schema["enum"])
        raise ValidationError(f"{where}: {value!r} is not one of [{allowed}]")
    if "minimum" in schema and value < schema["minimum"]:
        raise ValidationError(f"{where}: must be >= {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        raise ValidationError(f"{where}: must be <= {schema['maximum']}")
    return value


def _check_object(
    value: dict[str, Any], schema: Schema, path: str, preserve: bool, metadata: bool, pruned: list[str] | None
) -> dict[str, Any]:
    props: dict[str, Schema] = schema.get("properties") or {}
    if metadata and path == "":
        props = {**props, "metadata": METADATA_SCHEMA}
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, sub in value.items():
        sub_path = _join(path, str(key))
        if not isinstance(key, str):
            raise ValidationError(f"{sub_path}: keys must be strings")
        sub_schema = props.get(key)
        if sub_schema is None:
            if isinstance(extra, dict):
                sub_schema = extra
            elif extra is True or preserve:
                out[key] = sub
                continue
            elif pruned is not None:
                pruned.append(sub_path)
                continue
            else:
                raise ValidationError(f"{sub_path}: unknown field")
        if sub is None:
            # Kubernetes prunes nulls of non-nullable fields (``key:`` with no value in YAML).
            if sub_schema.get("nullable"):
                out[key] = None
            continue
        out[key] = _check(sub, sub_schema, sub_path, pruned=pruned)
    for key, sub_schema in props.items():
        if key not in out and "default" in sub_schema:
            out[key] = _check(copy.deepcopy(sub_schema["default"]), sub_schema, _join(path, key))
    for key in schema.get("required") or ():
        if key not in out:
            raise ValidationError(f"{_join(path, key)}: required")
    return out


# --- printer columns: the tiny JSONPath subset kubectl's additionalPrinterColumns use -------------

_TOKEN = re.compile(
    r"""\.([A-Za-z0-9_-]+)|\[\?\(@\.(\w+)==["']([^"']*)["']\)\]|\[['"]([^'"]+)['"]\]|\[(\d+)\]"""
)


def json_path(obj: Any, path: str) -> Any:
    """Evaluate ``.a.b``, ``['x/y']``, ``[0]`` and ``[?(@.type=="Ready")]``; None when absent."""
    cur: Any = obj
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None:
            raise ValueError(f"unsupported JSONPath {path!r}")
        pos = m.end()
        if cur is None:
            return None
        if m.group(1) is not None or m.group(4) is not None:
            key = m.group(1) if m.group(1) is not None else m.group(4)
            cur = cur.get(key) if isinstance(cur, dict) else None
        elif m.group(2) is not None:
            match = [x for x in cur or [] if isinstance(x, dict) and str(x.get(m.group(2))) == m.group(3)]
            cur = match[0] if match else None
        else:
            idx = int(m.group(5))
            cur = cur[idx] if isinstance(cur, list) and idx < len(cur) else None
    return cur
