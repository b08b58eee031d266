"""Live updates: one store watch per operator process, fanned out to every open dashboard page.

A browser never polls the table. One thread follows the store's change log (the same one the
admin API's ``?watch=1`` reads) and turns each change into a small message — for a machine, its
table row rendered once — that every Server-Sent Events stream receives. A client that falls
too far behind is told to reload instead of holding an unbounded queue.
Secrets never leave the server: a plan Secret's change only re-renders its machine's row.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from elemental_common.consts import PLAN_SECRET_TYPE
from elemental_operator.store.base import NotFound, Store, StoreError, WatchEvent

log = logging.getLogger(__name__)

KINDS = (
    "MachineInventory",
    "Secret",
    "MachineRegistration",
    "SeedImage",
    "ManagedOSImage",
    "ManagedOSVersion",
    "ManagedOSVersionChannel",
)
QUEUE_LIMIT = 2000  # messages a slow client may lag behind before it is told to reload
REPLAY = 2048  # recent messages kept for pages that connect after they were rendered
HISTORY = 20  # condition changes kept per machine, per process since start (10k machines: ≤ 60 MB)

RowRenderer = Callable[[dict[str, Any], dict[str, Any] | None], str]


class Hub:
    def __init__(self, store: Store, render_row: RowRenderer) -> None:
        self.store = store
        self.render_row = render_row
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        # A page is rendered at store version V and opens its stream a moment later: what
        # changed in between is replayed from here (``since``), or the page is told to reload.
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=REPLAY)
        self._start = 0  # the version the watch began after
        self._evicted = 0  # newest version no longer in _recent
        # Condition changes of each machine as this watcher saw them go by: the store keeps only
        # the current conditions, so this is the history a machine page can show (per process).
        self.history: dict[tuple[str, str], collections.deque[dict[str, str]]] = {}
        self._last: dict[tuple[str, str], dict[str, tuple[str, str, str]]] = {}

    # ---- lifecycle (aiohttp on_startup / on_cleanup) ------------------------------------------

    async def start(self, _app: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        since = await asyncio.to_thread(self.store.current_version)
        self._start = self._evicted = since
        self._thread = threading.Thread(
            target=self._follow, args=(since,), name="dashboard-watch", daemon=True
        )
        self._thread.start()

    async def stop(self, _app: Any = None) -> None:
        self._stop.set()
        for q in list(self._subscribers):
            self._offer(q, None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    # ---- subscribers ----------------------------------------------------------------------------

    def subscribe(self, since: int | None = None) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue of every message from now on, preceded by those after version ``since``."""
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.add(q)
        if since is not None:
            if since < self._evicted:
                self._offer(q, {"type": "reload"})  # older than what is kept: start afresh
            else:
                for msg in self._recent:
                    if msg["rv"] > since:
                        self._offer(q, msg)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(q)

    def _offer(self, q: asyncio.Queue[dict[str, Any] | None], msg: dict[str, Any] | None) -> None:
        try:
            q.put_nowait(msg)
        except asyncio.QueueFull:
            # Too far behind: drop what it holds and tell the page to reload once.
            self._subscribers.discard(q)
            while not q.empty():
                q.get_nowait()
            q.put_nowait({"type": "reload"})
            q.put_nowait(None)

    def _publish(self, msg: dict[str, Any]) -> None:
        self.published += 1
        if "rv" in msg:
            if len(self._recent) == self._recent.maxlen:
                self._evicted = self._recent[0]["rv"]
            self._recent.append(msg)
        for q in list(self._subscribers):
            self._offer(q, msg)

    # ---- the one watcher ------------------------------------------------------------------------

    def _follow(self, since: int) -> None:
        while not self._stop.is_set():
            try:
                for ev in self.store.watch(KINDS, since=since, timeout=1.0):
                    since = ev.resource_version
                    msg = self._message(ev)
                    if msg is not None and self._loop is not None:
                        self._loop.call_soon_threadsafe(self._publish, msg)
                    if self._stop.is_set():
                        return
            except StoreError as exc:  # the change log moved past us (Gone): start at its head
                log.warning("dashboard watch restarts: %s", exc)
                since = self.store.current_version()
                self._evicted = since
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self._publish, {"type": "reload"})
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("dashboard watch failed; restarting")
                self._stop.wait(1.0)

    def _message(self, ev: WatchEvent) -> dict[str, Any] | None:
        obj = ev.object
        meta = obj.get("metadata") or {}
        kind = obj.get("kind") or ""
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if kind == "Secret":
            if obj.get("type") != PLAN_SECRET_TYPE:
                return None  # keys, tokens, viewers: nothing a page shows
            try:
                inv = self.store.get("MachineInventory", ns, name)
            except NotFound:
                return None
            return self._row_message("MODIFIED", inv, obj, ev.resource_version)
        if kind == "MachineInventory":
            self._record_conditions(ns, name, obj, ev.type)
            if ev.type == "DELETED":
                return {
                    "type": ev.type,
                    "kind": kind,
                    "namespace": ns,
                    "name": name,
                    "rv": ev.resource_version,
                }
            try:
                secret: dict[str, Any] | None = self.store.get("Secret", ns, name)
            except NotFound:
                secret = None
            return self._row_message(ev.type, obj, secret, ev.resource_version)
        return {"type": ev.type, "kind": kind, "namespace": ns, "name": name, "rv": ev.resource_version}

    def _record_conditions(self, ns: str, name: str, obj: dict[str, Any], type_: str) -> None:
        key = (ns, name)
        if type_ == "DELETED":
            self.history.pop(key, None)
            self._last.pop(key, None)
            return
        seen = self._last.setdefault(key, {})
        log_ = self.history.setdefault(key, collections.deque(maxlen=HISTORY))
        for cond in (obj.get("status") or {}).get("conditions") or []:
            ctype = str(cond.get("type", ""))
            now = (str(cond.get("status", "")), str(cond.get("reason", "")), str(cond.get("message", "")))
            if seen.get(ctype) != now:
                seen[ctype] = now
                log_.append(
                    {
                        "type": ctype,
                        "status": now[0],
                        "reason": now[1],
                        "message": now[2],
                        "time": str(cond.get("lastTransitionTime") or ""),
                        "seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                )

    def conditions_history(self, ns: str, name: str) -> list[dict[str, str]]:
        return list(self.history.get((ns, name), ()))[::-1]  # newest first

    def _row_message(
        self, type_: str, inv: dict[str, Any], secret: dict[str, Any] | None, rv: int
    ) -> dict[str, Any]:
        meta = inv["metadata"]
        return {
            "type": type_,
            "kind": "MachineInventory",
            "namespace": meta.get("namespace", ""),
            "name": meta["name"],
            "rv": rv,
            "row": self.render_row(inv, secret),
        }


def sse(msg: dict[str, Any]) -> bytes:
    return b"event: change\ndata: " + json.dumps(msg, separators=(",", ":")).encode() + b"\n\n"
