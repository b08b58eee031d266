"""metav1.LabelSelector matching (matchLabels + matchExpressions), shared by store and controllers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def selector_error(selector: Mapping[str, Any] | None) -> str | None:
    """Why ``selector`` cannot be evaluated, in metav1.LabelSelectorAsSelector's words; None if it can.

    The CRDs leave the operator a plain string (as upstream's do), so a controller reports this
    in a condition instead of the API refusing the object.
    """
    for expr in (selector or {}).get("matchExpressions") or ():
        op = expr.get("operator", "")
        if op not in OPERATORS:
            return f'"{op}" is not a valid label selector operator'
        values = expr.get("values") or []
        if op in ("In", "NotIn") and not values:
            return "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
        if op in ("Exists", "DoesNotExist") and values:
            return f"values: Invalid value: {values}: values set must be empty for exists and does not exist"
    return None


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """True when ``labels`` satisfy ``selector``; an empty or missing selector matches everything.

    Raises ValueError (``selector_error``'s message) for a selector that cannot be evaluated.
    """
    if not selector:
        return True
    error = selector_error(selector)
    if error:
        raise ValueError(error)
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
