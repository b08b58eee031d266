"""ManagedOSVersionChannel (types json and custom) and ManagedOSVersion (brief §1.5, §1.6, §5.2).

Elemental runs a syncer pod per sync. For ``json`` we fetch ``options.uri`` in-process (an
http(s) URL or a local file path) with ``options.timeout`` seconds (default 30); for ``custom``
elemental_operator.channel_runner runs ``options.image`` in a bubblewrap sandbox on a worker
thread (Ready=False Syncing while it runs, as upstream's pod). Both outputs then take the same
path: the JSON list becomes ManagedOSVersions, with the same status, conditions, sync interval and
failed-attempt counting (docs/channels.md).
"""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.request
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elemental_common import consts
from elemental_common.consts import (
    CHANNEL_LABEL,
    LAST_SYNC_ANNOTATION,
    MANAGEDOSVERSION_FINALIZER,
    NO_LONGER_IN_SYNC_ANNOTATION,
    VERSION_NAME_LABEL,
)
from elemental_operator.channel_runner import (
    DEFAULT_TIMEOUT,
    NETWORK_ANNOTATION,
    ChannelRunError,
    ChannelRunner,
    InvalidChannel,
    parse_options,
)
from elemental_operator.context import OperatorContext
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


def _timeout(value: Any, default: float = 30.0) -> float:
    """options.timeout: seconds as a number, or a Go duration string ("30s", "1m")."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str) and value:
        return parse_go_duration(value) or default
    return default


def with_registry(registry: str, ref: str) -> str:
    """Upstream's concatenation (createManagedOSVersions): a "/" between them unless one side has it."""
    if not registry:
        return ref
    sep = "" if registry.endswith("/") or ref.startswith("/") else "/"
    return f"{registry}{sep}{ref}"


def parse_versions(raw: bytes) -> list[dict[str, Any]]:
    """A channel's output (the file json channels download, custom channel images write)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the channel's output is not JSON: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ValueError("the channel's output must be a JSON array of ManagedOSVersions")
    return data


def fetch_versions(uri: str, timeout: float) -> list[dict[str, Any]]:
    if uri.startswith(("http://", "https://")):
        # Channels are public metadata; accept the operator's trust store only.
        with urllib.request.urlopen(uri, timeout=timeout, context=ssl.create_default_context()) as resp:
            raw = resp.read()
    else:
        raw = Path(uri.removeprefix("file://")).read_bytes()
    return parse_versions(raw)


@dataclass
class _Job:
    """A custom channel's image run in flight, for one generation of one channel object."""

    uid: str
    generation: int
    image: str
    future: Future[bytes]


class ManagedOSVersionChannelController(Controller):
    kind = "ManagedOSVersionChannel"
    resync = 300.0
    POLL = 0.5  # seconds between looks at a running channel image

    def __init__(self, ctx: OperatorContext, cache_dir: Path | None = None) -> None:
        super().__init__(ctx)
        self.runner = ChannelRunner(cache_dir or Path(consts.state_dir()) / "channel-images")
        # Image runs are slow (pull, up to options.timeout): they run beside the single reconcile
        # worker, which polls them, so other objects keep reconciling meanwhile.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="channel-image")
        self._jobs: dict[tuple[str, str], _Job] = {}

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
        # upstream lower-cases the type (syncer.go NewOSVersionsSyncer)
        ctype = str(spec.get("type") or "").lower()
        if ctype not in ("json", "custom"):
            why = (
                "spec.type is empty" if not ctype else f"unsupported channel type {ctype!r} (json or custom)"
            )
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
        if not isinstance(options, dict):  # schemaless in the CRD (as upstream's): checked here
            set_condition(ch, "Ready", "False", "InvalidConfiguration", "options must be an object")
            return self._save(ch, before, None)
        if ctype == "json":
            source = options.get("uri") or options.get("URI") or ""
            if not source or not isinstance(source, str):
                set_condition(
                    ch,
                    "Ready",
                    "False",
                    "InvalidConfiguration",
                    "options.uri (a string) is required for json channels",
                )
                return self._save(ch, before, None)
            try:
                entries = fetch_versions(source, _timeout(options.get("timeout")))
            except Exception as exc:
                return self._failed(ch, before, interval, failures, exc)
        else:
            annotations = ch["metadata"].get("annotations") or {}
            try:
                opts = parse_options(
                    options,
                    _timeout(options.get("timeout"), DEFAULT_TIMEOUT),
                    network=annotations.get(NETWORK_ANNOTATION) == "true",
                )
            except (InvalidChannel, ValueError) as exc:
                set_condition(ch, "Ready", "False", "InvalidConfiguration", str(exc))
                return self._save(ch, before, None)
            source = opts.image
            key = (namespace, name)
            job = self._jobs.get(key)
            if job and (job.uid, job.generation) != (ch["metadata"]["uid"], ch["metadata"]["generation"]):
                job = None  # a stale run (old spec, or a recreated object): its result is dropped
            if job is None:
                self._jobs[key] = _Job(
                    ch["metadata"]["uid"],
                    ch["metadata"]["generation"],
                    opts.image,
                    self._pool.submit(self.runner.fetch, opts),
                )
                set_condition(ch, "Ready", "False", "Syncing", f"running channel image {opts.image}")
                return self._save(ch, before, self.POLL)
            if not job.future.done():
                return self.POLL
            del self._jobs[key]
            try:
                entries = parse_versions(job.future.result())
            except Exception as exc:
                return self._failed(ch, before, interval, failures, exc)
        try:
            self._apply(ch, spec, entries)
        except Exception as exc:
            return self._failed(ch, before, interval, failures, exc)
        status["failedSynchronizationAttempts"] = 0
        status["lastSyncedTime"] = now_rfc3339()
        status["syncedGeneration"] = ch["metadata"]["generation"]
        set_condition(ch, "Ready", "True", "Synchronized", f"synced {len(entries)} versions from {source}")
        return self._save(ch, before, interval)

    def _failed(
        self, ch: Resource, before: str, interval: float, failures: int, exc: Exception
    ) -> float | None:
        status = ch["status"]
        failures += 1
        status["failedSynchronizationAttempts"] = failures
        # Our own errors are sentences already; anything else is named by its type.
        text = str(exc) if isinstance(exc, ChannelRunError | ValueError) else f"{type(exc).__name__}: {exc}"
        set_condition(ch, "Ready", "False", "FailedToSync", text[:2000])
        # Exponential back-off (4 s → 512 s); after more than 4 failures wait a whole interval.
        delay = interval if failures > MAX_CONSECUTIVE_FAILURES else min(4.0 * 2 ** (failures - 1), 512.0)
        if failures > MAX_CONSECUTIVE_FAILURES:
            status["lastSyncedTime"] = now_rfc3339()
            status["syncedGeneration"] = ch["metadata"]["generation"]
        return self._save(ch, before, delay)

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
            if registry:
                # upstream prefixes the image of a container version and the uri of an iso one
                vtype = str(vspec.get("type") or "").lower()
                field = {"container": "upgradeImage", "iso": "uri"}.get(vtype)
                if field is None:
                    raise ValueError(f"version {name}: cannot apply the channel's registry to type {vtype!r}")
                vmeta[field] = with_registry(registry, str(vmeta.get(field) or ""))
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
