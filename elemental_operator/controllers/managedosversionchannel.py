"""ManagedOSVersionChannel (type json) and ManagedOSVersion (brief §1.5, §1.6, §5.2).

Elemental runs a syncer pod that downloads ``options.uri``; we fetch it in-process (an
http(s) URL or a local file path), with ``options.timeout`` seconds (default 30).
``custom`` channels need a container runtime and are refused with InvalidConfiguration.
"""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from elemental_common.consts import (
    CHANNEL_LABEL,
    LAST_SYNC_ANNOTATION,
    MANAGEDOSVERSION_FINALIZER,
    NO_LONGER_IN_SYNC_ANNOTATION,
    VERSION_NAME_LABEL,
)
from elemental_operator.controllers.base import (
    Controller,
    Key,
    add_finalizer,
    controller_owner,
    get_condition,
    has_finalizer,
    is_deleting,
    now_rfc3339,
    owner_ref,
    parse_time,
    remove_finalizer,
    set_condition,
)
from elemental_operator.store.base import AlreadyExists, NotFound, Resource, WatchEvent

MAX_CONSECUTIVE_FAILURES = 4

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """time.ParseDuration for the forms people write: 1h, 30m, 1h30m, 90s, 500ms."""
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"invalid duration {text!r}")
    return total


def _timeout(value: Any) -> float:
    """options.timeout: seconds as a number, or a Go duration string ("30s", "1m")."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str) and value:
        return parse_go_duration(value) or 30.0
    return 30.0


def with_registry(registry: str, ref: str) -> str:
    if not registry or not ref:
        return ref
    return registry + ref if registry.endswith("/") else f"{registry}/{ref}"


def fetch_versions(uri: str, timeout: float) -> list[dict[str, Any]]:
    if uri.startswith(("http://", "https://")):
        # Channels are public metadata; accept the operator's trust store only.
        with urllib.request.urlopen(uri, timeout=timeout, context=ssl.create_default_context()) as resp:
            raw = resp.read()
    else:
        raw = Path(uri.removeprefix("file://")).read_bytes()
    data = json.loads(raw)
    if not isinstance(data, list):
        raise ValueError("channel data must be a JSON array of ManagedOSVersions")
    return data


class ManagedOSVersionChannelController(Controller):
    kind = "ManagedOSVersionChannel"
    resync = 300.0

    def reconcile(self, namespace: str, name: str) -> float | None:
        try:
            ch = self.store.get(self.kind, namespace, name)
        except NotFound:
            return None
        if is_deleting(ch):
            return None
        spec = ch.get("spec") or {}
        status = ch.setdefault("status", {})
        before = json.dumps(status, sort_keys=True)
        try:
            interval = parse_go_duration(spec.get("syncInterval") or "1h")
        except ValueError as exc:
            set_condition(ch, "Ready", "False", "InvalidConfiguration", str(exc))
            return self._save(ch, before, None)
        ctype = spec.get("type") or ""
        if ctype != "json":
            why = "spec.type is empty" if not ctype else f"unsupported channel type {ctype!r} (only json)"
            set_condition(ch, "Ready", "False", "InvalidConfiguration", why)
            return self._save(ch, before, None)
        if not spec.get("enabled", True):
            self._deprecate_all(ch, spec)
            set_condition(ch, "Ready", "True", "ChannelDisabled", "channel is disabled")
            return self._save(ch, before, None)

        last = parse_time(status.get("lastSyncedTime"))
        due = (
            get_condition(ch, "Ready") is None
            or status.get("syncedGeneration") != ch["metadata"]["generation"]
            or last is None
            or time.time() >= last + interval
        )
        failures = int(status.get("failedSynchronizationAttempts") or 0)
        if not due and not (0 < failures <= MAX_CONSECUTIVE_FAILURES):
            return max(1.0, last + interval - time.time()) if last else interval
        options = spec.get("options") or {}
        uri = options.get("uri") or options.get("URI") or ""
        if not uri:
            set_condition(
                ch, "Ready", "False", "InvalidConfiguration", "options.uri is required for json channels"
            )
            return self._save(ch, before, None)
        try:
            entries = fetch_versions(uri, _timeout(options.get("timeout")))
            self._apply(ch, spec, entries)
        except Exception as exc:
            failures += 1
            status["failedSynchronizationAttempts"] = failures
            set_condition(ch, "Ready", "False", "FailedToSync", f"{type(exc).__name__}: {exc}"[:2000])
            # Exponential back-off (4 s → 512 s); after more than 4 failures wait a whole interval.
            delay = interval if failures > MAX_CONSECUTIVE_FAILURES else min(4.0 * 2 ** (failures - 1), 512.0)
            if failures > MAX_CONSECUTIVE_FAILURES:
                status["lastSyncedTime"] = now_rfc3339()
                status["syncedGeneration"] = ch["metadata"]["generation"]
            return self._save(ch, before, delay)
        status["failedSynchronizationAttempts"] = 0
        status["lastSyncedTime"] = now_rfc3339()
        status["syncedGeneration"] = ch["metadata"]["generation"]
        set_condition(ch, "Ready", "True", "Synchronized", f"synced {len(entries)} versions from {uri}")
        return self._save(ch, before, interval)

    def _save(self, ch: Resource, before: str, delay: float | None) -> float | None:
        if json.dumps(ch.get("status"), sort_keys=True) != before:
            self.store.update_status(ch)
        return delay

    def _owned_versions(self, ch: Resource) -> list[Resource]:
        ns = ch["metadata"]["namespace"]
        out = []
        for v in self.store.list(
            "ManagedOSVersion", ns, {"matchLabels": {CHANNEL_LABEL: ch["metadata"]["name"]}}
        ):
            owner = controller_owner(v, self.kind)
            if owner and owner["uid"] == ch["metadata"]["uid"]:
                out.append(v)
        return out

    def _deprecate(self, version: Resource, delete: bool) -> None:
        meta = version["metadata"]
        if delete:
            try:
                self.store.delete("ManagedOSVersion", meta["namespace"], meta["name"])
            except NotFound:
                pass
            return
        if (meta.get("annotations") or {}).get(NO_LONGER_IN_SYNC_ANNOTATION) != "true":
            meta.setdefault("annotations", {})[NO_LONGER_IN_SYNC_ANNOTATION] = "true"
            self.store.update(version)

    def _deprecate_all(self, ch: Resource, spec: dict[str, Any]) -> None:
        for v in self._owned_versions(ch):
            self._deprecate(v, bool(spec.get("deleteNoLongerInSyncVersions")))

    def _apply(self, ch: Resource, spec: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        ns, cname = ch["metadata"]["namespace"], ch["metadata"]["name"]
        sync_stamp = now_rfc3339()
        registry = spec.get("registry") or ""
        seen: set[str] = set()
        for entry in entries:
            name = (entry.get("metadata") or {}).get("name")
            if not name:
                raise ValueError("a channel entry has no metadata.name")
            vspec = dict(entry.get("spec") or {})
            vmeta = dict(vspec.get("metadata") or {})
            for key in ("upgradeImage", "uri"):
                if vmeta.get(key):
                    vmeta[key] = with_registry(registry, vmeta[key])
            if vmeta:
                vspec["metadata"] = vmeta
            if spec.get("upgradeContainer"):
                vspec["upgradeContainer"] = spec["upgradeContainer"]
            seen.add(name)
            try:
                cur = self.store.get("ManagedOSVersion", ns, name)
                cur["spec"] = vspec
                cur["metadata"].setdefault("annotations", {})[LAST_SYNC_ANNOTATION] = sync_stamp
                cur["metadata"]["annotations"].pop(NO_LONGER_IN_SYNC_ANNOTATION, None)
                self.store.update(cur)
            except NotFound:
                try:
                    self.store.create(
                        {
                            "apiVersion": "elemental.cattle.io/v1beta1",
                            "kind": "ManagedOSVersion",
                            "metadata": {
                                "name": name,
                                "namespace": ns,
                                "labels": {CHANNEL_LABEL: cname},
                                "annotations": {LAST_SYNC_ANNOTATION: sync_stamp},
                                "ownerReferences": [owner_ref(ch)],
                            },
                            "spec": vspec,
                        }
                    )
                except AlreadyExists:
                    pass
        for v in self._owned_versions(ch):
            if v["metadata"]["name"] not in seen:
                self._deprecate(v, bool(spec.get("deleteNoLongerInSyncVersions")))


class ManagedOSVersionController(Controller):
    """Keeps a version while any ManagedOSImage in its namespace references it."""

    kind = "ManagedOSVersion"
    watches = ("ManagedOSImage",)

    def map_event(self, event: WatchEvent) -> Iterable[Key]:
        obj = event.object
        name = (obj["metadata"].get("labels") or {}).get(VERSION_NAME_LABEL) or (obj.get("spec") or {}).get(
            "managedOSVersionName"
        )
        if name:
            yield obj["metadata"]["namespace"], name

    def reconcile(self, namespace: str, name: str) -> float | None:
        try:
            v = self.store.get(self.kind, namespace, name)
        except NotFound:
            return None
        if not is_deleting(v):
            if not has_finalizer(v, MANAGEDOSVERSION_FINALIZER):
                add_finalizer(v, MANAGEDOSVERSION_FINALIZER)
                self.store.update(v)
            return None
        users = self.store.list("ManagedOSImage", namespace, {"matchLabels": {VERSION_NAME_LABEL: name}})
        if users:
            return 10.0  # still referenced: deletion waits (the watch on ManagedOSImage also wakes us)
        if has_finalizer(v, MANAGEDOSVERSION_FINALIZER):
            remove_finalizer(v, MANAGEDOSVERSION_FINALIZER)
            self.store.update(v)
        return None
