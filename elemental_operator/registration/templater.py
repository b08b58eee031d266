"""``${A/B/C}`` templates over the data a registering machine sends (Elemental pkg/templater).

* ``${A/B/C}`` looks up a path in the merged data map (SMBIOS, SystemDataV2, legacy
  ``System Data``); only string leaves are values, anything else is "value not found".
* ``${Random/UUID}``, ``${Random/Hex/N}`` (first N of 32 hex chars, 1 ≤ N ≤ 32) and
  ``${Random/Int/MAX}`` (crypto-random in [0, MAX)) are generated on the operator.
* An unterminated ``${`` is literal text.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from elemental_common.protocol import LIMITS

MAX_NAME_LEN = 58
MAX_RENDERED = LIMITS["max-rendered-bytes"]


class TemplateError(Exception):
    """The template is invalid (e.g. a bad Random helper)."""


class RenderTooLarge(TemplateError):
    """The rendering would exceed ``max-rendered-bytes``."""


class ValueNotFound(TemplateError):
    """A ``${path}`` does not lead to a string value."""


def is_random_template(template: str) -> bool:
    """Random values are sticky: an existing label rendered from such a template is kept."""
    return "${Random" in template


def _random(parts: list[str]) -> str:
    if len(parts) < 2 or parts[1] not in ("UUID", "Hex", "Int"):
        raise ValueNotFound("/".join(parts))
    kind = parts[1]
    if kind == "UUID":
        if len(parts) != 2:
            raise TemplateError(f"invalid template: {'/'.join(parts)}")
        return str(uuid.uuid4())
    if len(parts) != 3:
        raise TemplateError(f"invalid template: {'/'.join(parts)}")
    try:
        n = int(parts[2])
    except ValueError:
        raise TemplateError(f"unsupported Random/{kind} template: {'/'.join(parts)}") from None
    if kind == "Hex":
        if not 1 <= n <= 32:
            raise TemplateError(f"unsupported Random/Hex length: {'/'.join(parts)}")
        return uuid.uuid4().hex[:n]
    if n < 1:
        raise TemplateError(f"unsupported Random/Int template: {'/'.join(parts)}")
    return str(secrets.randbelow(n))


class Templater:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def fill(self, data: Mapping[str, Any]) -> None:
        """Merge a map sent by the client: top-level keys replace earlier ones (like Go)."""
        for key, value in data.items():
            self.data[key] = value

    def lookup(self, parts: list[str]) -> str:
        node: Any = self.data
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                raise ValueNotFound("/".join(parts))
            node = node[part]
        if not isinstance(node, str):
            raise ValueNotFound("/".join(parts))
        return node

    def render(self, template: str, max_output: int = MAX_RENDERED) -> str:
        """Expand every ``${...}``: one pass over the template (index scanning, no re-slicing of
        the rest, which made a 4 MB label quadratic), output capped at ``max_output`` chars."""
        out: list[str] = []
        size = 0
        pos = 0
        n = len(template)
        while pos < n:
            i = template.find("${", pos)
            j = template.find("}", i + 2) if i >= 0 else -1
            if i < 0 or j < 0:
                piece = template[pos:]
                pos = n
            else:
                parts = template[i + 2 : j].split("/")
                head = template[pos:i]
                value = _random(parts) if parts[0] == "Random" else self.lookup(parts)
                piece = head + value
                pos = j + 1
            size += len(piece)
            if size > max_output:
                raise RenderTooLarge(f"rendered value exceeds the limit max-rendered-bytes={max_output}")
            out.append(piece)
        return "".join(out)


_LABEL_INVALID = re.compile(r"[^0-9a-zA-Z._]")
_NAME_INVALID = re.compile(r"[^0-9a-zA-Z.]")
_DASHES = re.compile(r"--+")
_EDGE = re.compile(r"^[^0-9a-zA-Z]+|[^0-9a-zA-Z]+$")


def _sanitise(value: str, invalid: re.Pattern[str]) -> str:
    s = _DASHES.sub("-", invalid.sub("-", value))
    s = _EDGE.sub("", s)[:MAX_NAME_LEN]
    # Truncation may leave a '-' or '.' at the end, which Kubernetes names do not allow.
    return _EDGE.sub("", s)


def sanitize_label_value(value: str) -> str:
    """Label values: ``[0-9a-zA-Z._]``, others → '-', dashes collapsed, edges trimmed, ≤ 58 chars."""
    return _sanitise(value, _LABEL_INVALID)


def sanitize_machine_name(value: str) -> str:
    """Inventory names double as hostnames: ``[0-9a-zA-Z.]`` (so '_' → '-'), lowercase, ≤ 58."""
    return _sanitise(value, _NAME_INVALID).lower()


def default_machine_name() -> str:
    return f"m-{uuid.uuid4()}"
