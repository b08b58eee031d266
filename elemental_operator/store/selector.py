"""metav1.LabelSelector matching (matchLabels + matchExpressions), shared by store and controllers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """True when ``labels`` satisfy ``selector``; an empty or missing selector matches everything."""
    if not selector:
        return True
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key = expr.get("key", "")
        op = expr.get("operator", "")
        values = expr.get("values") or []
        if op == "In":
            if key not in labels or labels[key] not in values:
                return False
        elif op == "NotIn":
            if key in labels and labels[key] in values:
                return False
        elif op == "Exists":
            if key not in labels:
                return False
        elif op == "DoesNotExist":
            if key in labels:
                return False
        else:
            raise ValueError(f"matchExpressions: unknown operator {op!r}")
    return True


def parse_label_selector(text: str) -> dict[str, Any]:
    """kubectl's string syntax (``a=b,c!=d,e in (x,y),f notin (z),g,!h``) → a LabelSelector dict."""
    match_labels: dict[str, str] = {}
    exprs: list[dict[str, Any]] = []
    parts: list[str] = []
    depth, cur = 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    parts.append(cur)
    for raw in (p.strip() for p in parts):
        if not raw:
            continue
        low = raw.lower()
        for op, name in ((" notin ", "NotIn"), (" in ", "In")):
            if op in low:
                idx = low.index(op)
                values = raw[idx + len(op) :].strip().strip("()")
                exprs.append(
                    {
                        "key": raw[:idx].strip(),
                        "operator": name,
                        "values": [v.strip() for v in values.split(",")],
                    }
                )
                break
        else:
            if "!=" in raw:
                key, _, value = raw.partition("!=")
                exprs.append({"key": key.strip(), "operator": "NotIn", "values": [value.strip()]})
            elif "=" in raw:
                key, _, value = raw.partition("==" if "==" in raw else "=")
                match_labels[key.strip()] = value.strip()
            elif raw.startswith("!"):
                exprs.append({"key": raw[1:].strip(), "operator": "DoesNotExist"})
            else:
                exprs.append({"key": raw, "operator": "Exists"})
    out: dict[str, Any] = {}
    if match_labels:
        out["matchLabels"] = match_labels
    if exprs:
        out["matchExpressions"] = exprs
    return out
