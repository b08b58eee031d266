"""What the dashboard shows of a resource: badges, progress, plans and rollouts, from stored objects.

Pure functions over the store's dicts (no I/O), so the table rows the live stream sends and the
pages the server renders are the same values.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import re
from dataclasses import dataclass, field
from typing import Any

from elemental_common.consts import (
    MOS_ANNOTATION,
    PLAN_TYPE_ANNOTATION,
    UPGRADE_CHECKSUM_ANNOTATION,
)

Resource = dict[str, Any]

# How a condition status reads as a badge; the class picks a colour (with a text label: colour is
# never the only signal).
_BADGE_CLASS = {"True": "ok", "False": "bad", "Unknown": "wait"}
# InstallProgress messages are "<stage>: <percent>%[ message]" (server.app._record_progress).
_PROGRESS = re.compile(r"^(?P<stage>[^:]*):\s*(?P<pct>[0-9.]+)%\s*(?P<msg>.*)$", re.S)


def condition(obj: Resource | None, ctype: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


@dataclass(frozen=True)
class Badge:
    text: str
    css: str  # ok | bad | wait | none
    title: str = ""


def badge(obj: Resource | None, ctype: str, true_text: str = "", false_text: str = "") -> Badge:
    cond = condition(obj, ctype)
    if cond is None:
        return Badge("—", "none", f"no {ctype} condition")
    status = str(cond.get("status", "Unknown"))
    reason = str(cond.get("reason") or "")
    text = {"True": true_text, "False": false_text}.get(status) or reason or status
    css = condition_css(cond)  # WaitingForPlan, UpgradeInProgress, …BuildOngoing: not yet, not wrong
    return Badge(text, css, f"{ctype}={status} {reason}: {cond.get('message', '')}")


def condition_css(cond: dict[str, Any]) -> str:
    """The badge class of one condition (see ``badge``)."""
    status, reason = str(cond.get("status", "")), str(cond.get("reason") or "")
    if status == "False" and any(w in reason for w in ("Waiting", "InProgress", "Ongoing")):
        return "wait"
    return _BADGE_CLASS.get(status, "wait")


@dataclass(frozen=True)
class Progress:
    percent: float | None  # None: no report yet
    stage: str
    message: str
    css: str  # ok (done) | bad (failed) | wait (running)


def progress(inv: Resource) -> Progress:
    cond = condition(inv, "InstallProgress")
    if cond is None:
        return Progress(None, "", "", "none")
    text = str(cond.get("message") or "")
    m = _PROGRESS.match(text)
    pct = min(100.0, max(0.0, float(m.group("pct")))) if m else None
    stage = m.group("stage") if m else str(cond.get("reason") or "")
    msg = m.group("msg").strip() if m else text
    css = {"True": "ok", "False": "bad"}.get(str(cond.get("status")), "wait")
    if cond.get("reason") == "Stale":  # controllers.machineinventory: no report for too long
        css, stage = "bad", f"{stage} (stale)"
    return Progress(pct, stage, msg, css)


def secret_value(secret: Resource | None, key: str) -> bytes:
    raw = ((secret or {}).get("data") or {}).get(key)
    if not raw:
        return b""
    try:
        return base64.b64decode(raw)
    except (binascii.Error, ValueError):
        return b""


def decode_output(raw: bytes) -> dict[str, str]:
    """applied-output / failed-output: rancher-system-agent's gzip of JSON {name: base64(output)}
    (the Secret API), or our agent's packed form (the plan endpoint) → {instruction: output}."""
    if not raw:
        return {}
    if raw[:4] == b"H4sI":  # our agent's plan-endpoint packing: base64(gzip(JSON {name: text}))
        try:
            packed = json.loads(gzip.decompress(base64.b64decode(raw)))
            return {str(k): str(v) for k, v in packed.items()} if isinstance(packed, dict) else {}
        except (OSError, ValueError, EOFError, binascii.Error):
            pass
    try:
        doc = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except (OSError, ValueError, EOFError):
        return {"(output)": raw.decode(errors="replace")}
    if not isinstance(doc, dict):
        return {"(output)": json.dumps(doc)}
    out: dict[str, str] = {}
    for name, value in doc.items():
        try:
            out[str(name)] = base64.b64decode(str(value), validate=True).decode(errors="replace")
        except (binascii.Error, ValueError):
            out[str(name)] = str(value)
    return out


@dataclass
class PlanView:
    plan_type: str
    plan: str  # pretty JSON
    checksum: str
    applied_checksum: str
    failed_checksum: str
    state: str  # Applied | Failed | Pending | —
    applied_output: dict[str, str] = field(default_factory=dict)
    failed_output: dict[str, str] = field(default_factory=dict)
    failure_count: str = ""
    os_version: str = ""
    os_slot: str = ""  # a, b or recovery, as the agent reports the booted entry
    last_apply: str = ""


def plan_view(secret: Resource | None) -> PlanView | None:
    if secret is None:
        return None
    import hashlib

    raw = secret_value(secret, "plan")
    checksum = hashlib.sha256(raw).hexdigest() if raw else ""
    try:
        pretty = json.dumps(json.loads(raw), indent=2) if raw.strip() else ""
    except ValueError:
        pretty = raw.decode(errors="replace")
    applied = secret_value(secret, "applied-checksum").decode(errors="replace")
    failed = secret_value(secret, "failed-checksum").decode(errors="replace")
    if checksum and applied == checksum:
        state = "Applied"
    elif checksum and failed == checksum:
        state = "Failed"
    else:
        state = "Pending" if checksum else "—"
    return PlanView(
        plan_type=((secret.get("metadata") or {}).get("annotations") or {}).get(PLAN_TYPE_ANNOTATION, ""),
        plan=pretty,
        checksum=checksum,
        applied_checksum=applied,
        failed_checksum=failed,
        state=state,
        applied_output=decode_output(secret_value(secret, "applied-output")),
        failed_output=decode_output(secret_value(secret, "failed-output")),
        failure_count=secret_value(secret, "failure-count").decode(errors="replace"),
        os_version=secret_value(secret, "os-version").decode(errors="replace"),
        os_slot=secret_value(secret, "os-slot").decode(errors="replace"),
        last_apply=secret_value(secret, "last-apply-time").decode(errors="replace"),
    )


@dataclass
class MachineRow:
    namespace: str
    name: str
    ready: Badge
    adoption: Badge
    plan: Badge
    os_version: str
    os_slot: str
    labels: dict[str, str]
    registered: str
    tpm_hash: str
    progress: Progress
    deleting: bool
    search: str  # lower-case text the filter matches

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def dom_id(self) -> str:
        return "mi-" + re.sub(r"[^a-z0-9-]", "-", f"{self.namespace}--{self.name}")


def machine_row(inv: Resource, secret: Resource | None) -> MachineRow:
    meta = inv.get("metadata") or {}
    spec = inv.get("spec") or {}
    status = inv.get("status") or {}
    plan_state = str((status.get("plan") or {}).get("state") or "")
    pv = plan_view(secret)
    plan_type = pv.plan_type if pv else ""
    plan_badge = Badge(
        f"{plan_type} {plan_state}".strip() or "—",
        {"Applied": "ok", "Failed": "bad"}.get(plan_state, "wait" if plan_state or plan_type else "none"),
        f"plan type {plan_type or '?'}, state {plan_state or 'none'}",
    )
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    annotations = meta.get("annotations") or {}
    registered = str(
        annotations.get("elemental.cattle.io/last-registration") or meta.get("creationTimestamp") or ""
    )
    ident = str(spec.get("tpmHash") or spec.get("machineHash") or "")
    ready = badge(inv, "Ready", "Ready", "")
    row = MachineRow(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        ready=ready,
        adoption=badge(inv, "AdoptionReady", "Adopted", ""),
        plan=plan_badge,
        os_version=pv.os_version if pv else "",
        os_slot=pv.os_slot if pv else "",
        labels=labels,
        registered=registered,
        tpm_hash=ident[:12],
        progress=progress(inv),
        deleting=bool(meta.get("deletionTimestamp")),
        search="",
    )
    words = [row.name, row.namespace, row.os_version, ready.text, plan_badge.text, ident]
    words += [f"{k}={v}" for k, v in labels.items()]
    row.search = " ".join(words).lower()
    return row


def parse_label_filter(text: str) -> dict[str, str | None]:
    """``k=v,k2`` → {k: v, k2: None (present)}: what the label filter box accepts."""
    out: dict[str, str | None] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        out[key.strip()] = value.strip() if eq else None
    return out


def row_matches(row: MachineRow, text: str, labels: dict[str, str | None]) -> bool:
    if text and not all(w in row.search for w in text.lower().split()):
        return False
    for key, value in labels.items():
        if key not in row.labels or (value is not None and row.labels[key] != value):
            return False
    return True


SORT_KEYS = ("name", "namespace", "ready", "plan", "os", "registered", "progress")


def sort_rows(rows: list[MachineRow], key: str, descending: bool) -> list[MachineRow]:
    def k(r: MachineRow) -> Any:
        return {
            "name": r.name,
            "namespace": r.namespace,
            "ready": r.ready.text,
            "plan": r.plan.text,
            "os": r.os_version,
            "registered": r.registered,
            "progress": r.progress.percent if r.progress.percent is not None else -1.0,
        }.get(key, r.name)

    return sorted(rows, key=lambda r: (k(r), r.name), reverse=descending)


@dataclass(frozen=True)
class RolloutMachine:
    name: str
    state: str  # Upgraded | Failed | In progress | Pending | Reset
    css: str
    output: dict[str, str]
    os_version: str


def rollout(mos: Resource, inventories: list[Resource], secrets: dict[str, Resource]) -> list[RolloutMachine]:
    """Per-machine state of a ManagedOSImage, read as its controller counts it: the Secret's
    upgrade checksum annotation against applied-/failed-checksum."""
    from elemental_operator.store.selector import matches

    name = mos["metadata"]["name"]
    selector = (mos.get("spec") or {}).get("nodeSelector") or {}
    out: list[RolloutMachine] = []
    for inv in inventories:
        meta = inv["metadata"]
        if selector and not matches(selector, meta.get("labels")):
            continue
        sec = secrets.get(meta["name"])
        ann = ((sec or {}).get("metadata") or {}).get("annotations") or {}
        pv = plan_view(sec)
        version = pv.os_version if pv else ""
        if sec is None:
            out.append(RolloutMachine(meta["name"], "Not registered", "none", {}, version))
            continue
        if ann.get(PLAN_TYPE_ANNOTATION) == "reset":
            out.append(RolloutMachine(meta["name"], "Resetting", "none", {}, version))
            continue
        checksum = ann.get(UPGRADE_CHECKSUM_ANNOTATION)
        if ann.get(MOS_ANNOTATION) != name or not checksum:
            out.append(RolloutMachine(meta["name"], "Pending", "none", {}, version))
        elif pv and pv.applied_checksum == checksum:
            out.append(RolloutMachine(meta["name"], "Upgraded", "ok", pv.applied_output, version))
        elif pv and pv.failed_checksum == checksum:
            out.append(RolloutMachine(meta["name"], "Failed", "bad", pv.failed_output, version))
        else:
            out.append(RolloutMachine(meta["name"], "In progress", "wait", {}, version))
    return out


_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


def seed_progress(si: Resource) -> Progress:
    """A SeedImage build: its state, and the builder's current step from the SeedImageReady
    condition (a percentage in it, when the step gives one, fills the bar)."""
    state = str((si.get("status") or {}).get("state") or "")
    cond = condition(si, "SeedImageReady") or {}
    text = str(cond.get("message") or "")
    if state == "Completed":
        return Progress(100.0, state, text, "ok")
    if state == "Failed":
        return Progress(None, state, text, "bad")
    m = _PERCENT.search(text)
    return Progress(min(100.0, float(m.group(1))) if m else None, state or "Queued", text, "wait")
