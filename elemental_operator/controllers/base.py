"""Controller plumbing: a work queue fed by the store's watch plus periodic resync.

Each controller reconciles one kind by (namespace, name) and returns an optional requeue
delay. Reconciles must be idempotent: the manager may run them again at any time (resync,
restart in the middle of a reconcile, another replica taking over).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar

from elemental_operator.context import OperatorContext
from elemental_operator.store.base import Conflict, NotFound, Resource, WatchEvent

log = logging.getLogger("elemental_operator.controllers")

Key = tuple[str, str]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


# ---- conditions ------------------------------------------------------------------------------


def get_condition(obj: Resource, ctype: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def condition_true(obj: Resource, ctype: str) -> bool:
    cond = get_condition(obj, ctype)
    return cond is not None and cond.get("status") == "True"


def set_condition(obj: Resource, ctype: str, status: str, reason: str, message: str = "") -> None:
    """meta.SetStatusCondition: lastTransitionTime moves only when the status changes."""
    conds = obj.setdefault("status", {}).setdefault("conditions", [])
    # Elemental's util.RemoveInvalidConditions, applied on every write.
    conds[:] = [c for c in conds if c.get("type") and c.get("status") and c.get("reason")]
    for cond in conds:
        if cond["type"] == ctype:
            if cond["status"] != status:
                cond["lastTransitionTime"] = now_rfc3339()
            cond.update(status=status, reason=reason, message=message)
            cond.setdefault("lastTransitionTime", now_rfc3339())
            return
    conds.append(
        {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_rfc3339(),
        }
    )


def remove_condition(obj: Resource, ctype: str) -> None:
    status = obj.get("status") or {}
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != ctype]


# ---- metadata helpers -----------------------------------------------------------------------


def has_finalizer(obj: Resource, name: str) -> bool:
    return name in (obj["metadata"].get("finalizers") or [])


def add_finalizer(obj: Resource, name: str) -> None:
    fins = obj["metadata"].setdefault("finalizers", [])
    if name not in fins:
        fins.append(name)


def remove_finalizer(obj: Resource, name: str) -> None:
    obj["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or [] if f != name]


def owner_ref(owner: Resource, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def controller_owner(obj: Resource, kind: str | None = None) -> dict[str, Any] | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and (kind is None or ref.get("kind") == kind):
            return dict(ref)
    return None


def is_deleting(obj: Resource) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def random_token(length: int = 54) -> str:
    """wrangler randomtoken.Generate: characters from a confusion-free alphabet."""
    import secrets

    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


# ---- Secrets and plans ----------------------------------------------------------------------


def secret_get(secret: Resource, key: str) -> str:
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else ""


def secret_set(secret: Resource, key: str, value: str | bytes) -> None:
    raw = value.encode() if isinstance(value, str) else value
    secret.setdefault("data", {})[key] = base64.b64encode(raw).decode()


def encode_plan(plan: dict[str, Any]) -> bytes:
    """Plan JSON bytes as the agent reads them (Go's encoder adds a trailing newline)."""
    return (json.dumps(plan, separators=(",", ":")) + "\n").encode()


def plan_checksum(plan: bytes) -> str:
    return hashlib.sha256(plan).hexdigest()


def plan_file(path: str, content: str | bytes, permissions: str) -> dict[str, Any]:
    raw = content.encode() if isinstance(content, str) else content
    return {"content": base64.b64encode(raw).decode(), "path": path, "permissions": permissions}


# ---- controllers and the manager ------------------------------------------------------------


class Controller:
    kind: ClassVar[str]
    # Other kinds whose changes may affect objects of ``kind`` (see ``map_event``).
    watches: ClassVar[tuple[str, ...]] = ()
    # The change-log watch does not drop events, so resync is only a safety net (time-based work
    # uses the requeue delay a reconcile returns).
    resync: ClassVar[float] = 600.0

    def __init__(self, ctx: OperatorContext) -> None:
        self.ctx = ctx
        self.store = ctx.store

    def reconcile(self, namespace: str, name: str) -> float | None:
        """Bring one object towards its desired state; return seconds until the next look, or None."""
        raise NotImplementedError

    def map_event(self, event: WatchEvent) -> Iterable[Key]:
        return ()


class Manager:
    """Single worker: one reconcile at a time, so no two reconciles of a key ever overlap."""

    LEASE = "elemental-operator-controllers"

    def __init__(
        self,
        ctx: OperatorContext,
        controllers: list[Controller],
        identity: str | None = None,
        lease_ttl: float = 15.0,
    ) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.controllers = {c.kind: c for c in controllers}
        self.identity = identity or f"operator-{uuid.uuid4().hex[:8]}"
        self.lease_ttl = lease_ttl
        self._heap: list[tuple[float, int, str, str, str]] = []
        self._due: dict[tuple[str, str, str], float] = {}
        self._failures: dict[tuple[str, str, str], int] = {}
        self._seq = 0
        self._since = 0
        self._next_resync: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.is_leader = False
        self.reconciles = 0

    # -- queue --

    def enqueue(self, kind: str, namespace: str, name: str, delay: float = 0.0) -> None:
        key = (kind, namespace, name)
        due = time.monotonic() + delay
        with self._lock:
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, kind, namespace, name))

    def _pop_due(self) -> tuple[str, str, str] | None:
        now = time.monotonic()
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                due, _, kind, ns, name = heapq.heappop(self._heap)
                key = (kind, ns, name)
                if self._due.get(key) == due:
                    del self._due[key]
                    return key
        return None

    def resync_all(self) -> None:
        self._since = self.store.current_version()
        for kind, ctrl in self.controllers.items():
            for obj in self.store.list(kind):
                self.enqueue(kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            self._next_resync[kind] = time.monotonic() + ctrl.resync

    def _handle(self, ev: WatchEvent) -> None:
        okind = ev.object["kind"]
        meta = ev.object["metadata"]
        for kind, ctrl in self.controllers.items():
            if okind == kind:
                self.enqueue(kind, meta.get("namespace", ""), meta["name"])
            if okind in ctrl.watches:
                for ns, name in ctrl.map_event(ev):
                    self.enqueue(kind, ns, name)

    def poll_events(self) -> int:
        n = 0
        for ev in self.store.watch(None, since=self._since, timeout=0):
            self._since = ev.resource_version
            self._handle(ev)
            n += 1
        now = time.monotonic()
        for kind, ctrl in self.controllers.items():
            if now >= self._next_resync.get(kind, 0):
                self._next_resync[kind] = now + ctrl.resync
                for obj in self.store.list(kind):
                    self.enqueue(kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        return n

    def run_one(self) -> bool:
        key = self._pop_due()
        if key is None:
            return False
        kind, ns, name = key
        ctrl = self.controllers[kind]
        try:
            delay = ctrl.reconcile(ns, name)
            self._failures.pop(key, None)
        except Conflict:
            delay = 0.05  # someone else wrote first; re-read and try again
        except NotFound:
            delay = None
        except Exception:
            fails = self._failures.get(key, 0) + 1
            self._failures[key] = fails
            delay = min(0.5 * 2**fails, 60.0)
            log.exception("reconcile %s %s/%s failed (retry in %.1fs)", kind, ns, name, delay)
        self.reconciles += 1
        if delay is not None:
            self.enqueue(kind, ns, name, delay)
        return True

    def step(self) -> int:
        """Take in new events and run every reconcile that is due now; returns how many ran."""
        self.poll_events()
        ran = 0
        while self.run_one():
            ran += 1
            if ran % 50 == 0:
                self.poll_events()
        return ran

    # -- threads --

    def start(self, leader_election: bool = True) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(leader_election,), name="controllers", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        if self.is_leader:
            try:
                self.store.release_lease(self.LEASE, self.identity)
            except Exception:
                log.exception("releasing the controller lease")
            self.is_leader = False

    def _run(self, leader_election: bool) -> None:
        next_renew = 0.0
        while not self._stop.is_set():
            try:
                if leader_election and time.monotonic() >= next_renew:
                    leader = self.store.acquire_lease(self.LEASE, self.identity, self.lease_ttl)
                    next_renew = time.monotonic() + self.lease_ttl / 3
                    if leader and not self.is_leader:
                        log.info("%s: became leader; running controllers", self.identity)
                        self.resync_all()
                    elif not leader and self.is_leader:
                        log.warning("%s: lost the controller lease", self.identity)
                    self.is_leader = leader
                elif not leader_election and not self.is_leader:
                    self.is_leader = True
                    self.resync_all()
                if self.is_leader:
                    if self.step() == 0:
                        self._stop.wait(0.1)
                else:
                    self._stop.wait(1.0)
            except Exception:
                log.exception("controller loop")
                self._stop.wait(1.0)
