"""The Store on SQLAlchemy Core: one implementation, SQLite and PostgreSQL dialects.

Tables:
* ``objects``  — one row per object (JSON text), keyed by (kind, namespace, name); extra
  indexed columns hold MachineInventory hashes (unique) and lookup tokens.
* ``owners``   — (owner uid → dependent) edges, so cascading delete never scans.
* ``changes``  — the change log; its ``seq`` is the resourceVersion. Watches poll it,
  which is what makes them work across processes and replicas.
* ``leases``   — leader election rows (holder + expiry).

Writers are serialised (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-scoped
advisory lock) so sequence numbers commit in order and a watcher reading ``seq > since``
can never skip a row that commits later with a smaller number.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from elemental_operator.api import kind_info, validate
from elemental_operator.store.base import (
    AlreadyExists,
    Conflict,
    EventType,
    NotFound,
    Resource,
    StorageFull,
    Store,
    StoreError,
    WatchEvent,
)
from elemental_operator.store.selector import matches


class Gone(StoreError):
    """A watch asked for a resourceVersion older than the retained change log (HTTP 410)."""


_meta = sa.MetaData()
objects = sa.Table(
    "objects",
    _meta,
    sa.Column("kind", sa.String(64), primary_key=True),
    sa.Column("namespace", sa.String(63), primary_key=True),
    sa.Column("name", sa.String(253), primary_key=True),
    sa.Column("uid", sa.String(36), nullable=False, unique=True),
    sa.Column("rv", sa.BigInteger, nullable=False),
    sa.Column("tpm_hash", sa.String(128), nullable=True, unique=True),
    sa.Column("machine_hash", sa.String(128), nullable=True, unique=True),
    sa.Column("token", sa.String(255), nullable=True),
    sa.Column("data", sa.Text, nullable=False),
    sa.Index("ix_objects_token", "kind", "token"),
)
owners = sa.Table(
    "owners",
    _meta,
    sa.Column("owner_uid", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(64), primary_key=True),
    sa.Column("namespace", sa.String(63), primary_key=True),
    sa.Column("name", sa.String(253), primary_key=True),
)
changes = sa.Table(
    "changes",
    _meta,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)
leases = sa.Table(
    "leases",
    _meta,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
)

# Statements on the hot paths (registration, agent, watches) are built once: building a Core
# expression and its cache key per call cost more than the SQLite statement itself.
_B = sa.bindparam
_SEL_OBJECT = sa.select(objects.c.data).where(
    objects.c.kind == _B("b_kind"), objects.c.namespace == _B("b_ns"), objects.c.name == _B("b_name")
)
_SEL_BY_TPM_HASH = sa.select(objects.c.data).where(objects.c.tpm_hash == _B("b_hash"))
_SEL_BY_MACHINE_HASH = sa.select(objects.c.data).where(objects.c.machine_hash == _B("b_hash"))
_SEL_BY_TOKEN = sa.select(objects.c.data).where(
    objects.c.kind == _B("b_kind"), objects.c.token == _B("b_token")
)
_SEL_MAX_SEQ = sa.select(sa.func.coalesce(sa.func.max(changes.c.seq), 0))
_INS_OBJECT = objects.insert()
_UPD_OBJECT = objects.update().where(
    objects.c.kind == _B("b_kind"), objects.c.namespace == _B("b_ns"), objects.c.name == _B("b_name")
)
_DEL_OWNED = owners.delete().where(
    owners.c.kind == _B("b_kind"), owners.c.namespace == _B("b_ns"), owners.c.name == _B("b_name")
)
_INS_OWNER = owners.insert()
_INS_CHANGE = changes.insert()

_PG_WRITE_LOCK = 0x454C454D  # "ELEM": one advisory lock id shared by every writer
_KEEP_CHANGES = 100_000  # change-log rows retained for watches that fall behind
_PRUNE_EVERY = 1_000


# Set by SqlStore.dry_run(): every write transaction in this context rolls back instead of committing.
_DRY_RUN: ContextVar[bool] = ContextVar("elemental_store_dry_run", default=False)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(obj: Resource) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _token_of(obj: Resource) -> str | None:
    status = obj.get("status") or {}
    if obj["kind"] == "MachineRegistration":
        return status.get("registrationToken") or None
    if obj["kind"] == "SeedImage":
        return status.get("downloadToken") or None
    return None


def _hashes(obj: Resource) -> tuple[str | None, str | None]:
    if obj["kind"] != "MachineInventory":
        return None, None
    spec = obj.get("spec") or {}
    return spec.get("tpmHash") or None, spec.get("machineHash") or None


class SqlStore(Store):
    """Store on any SQLAlchemy engine; use ``open_store`` to build one from a URL."""

    def __init__(self, engine: Engine, poll_interval: float = 0.1) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.poll_interval = poll_interval
        self._writes = 0
        self._lock = threading.Lock()
        self.full_since: float | None = None
        database = engine.url.database or ""
        self.db_dir = (
            os.path.dirname(os.path.abspath(database)) if self.dialect == "sqlite" and database else None
        )
        self.where = f"database {database}" if self.dialect == "sqlite" else f"database {engine.url.host}"
        try:
            _meta.create_all(engine)
        except DBAPIError as exc:
            if _disk_full(exc):
                raise StorageFull(
                    f"{self.where}: the disk is full ({_first_line(exc.orig)}); free space"
                ) from None
            raise

    # ---- transactions -------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn.info["write"] = True
                try:
                    with conn.begin() as trans:
                        if self.dialect == "postgresql":
                            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_WRITE_LOCK})
                        yield conn
                        if _DRY_RUN.get():
                            trans.rollback()
                finally:
                    conn.info["write"] = False
        except DBAPIError as exc:
            if _disk_full(exc):
                self.full_since = time.monotonic()
                raise StorageFull(
                    f"{self.where}: the disk is full ({_first_line(exc.orig)}); free space"
                ) from None
            raise
        self.full_since = None

    @contextmanager
    def dry_run(self) -> Iterator[None]:
        """Writes in this context run every check and return their result, then roll back
        (the admin API's ``?dryRun=All``, as the Kubernetes API server's dry run): nothing is
        stored and no watcher sees an event."""
        token = _DRY_RUN.set(True)
        try:
            yield
        finally:
            _DRY_RUN.reset(token)

    def health(self) -> str | None:
        """Why writes cannot succeed now (None = healthy): a full disk, seen by the last write
        or (SQLite) by the free space left where the database lives."""
        if self.db_dir is not None:
            try:
                st = os.statvfs(self.db_dir)
            except OSError as exc:
                return f"database directory {self.db_dir}: {exc.strerror}"
            free = st.f_bavail * st.f_frsize
            if free < MIN_FREE_BYTES:
                return f"{self.where}: disk full ({free} bytes free in {self.db_dir})"
        if self.full_since is not None and time.monotonic() - self.full_since < FULL_REPORT_SECONDS:
            return f"{self.where}: the disk is full (a write failed just now)"
        return None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _read_one(self, stmt: sa.Select[Any], params: dict[str, Any]) -> builtins.list[Any]:
        """Rows of one SELECT. A single statement is atomic on its own: SQLite runs it without
        an explicit BEGIN/COMMIT round trip (PostgreSQL's driver still wraps it)."""
        with self.engine.connect() as conn:
            conn.info["autocommit"] = True
            try:
                return builtins.list(conn.execute(stmt, params).all())
            finally:
                conn.info["autocommit"] = False

    def _next_seq(self, conn: Connection) -> int:
        return int(conn.execute(_SEL_MAX_SEQ).scalar_one()) + 1

    def _log(self, conn: Connection, type_: EventType, obj: Resource, seq: int) -> None:
        conn.execute(_INS_CHANGE, {"seq": seq, "kind": obj["kind"], "type": type_, "data": _dumps(obj)})
        with self._lock:
            self._writes += 1
            prune = self._writes % _PRUNE_EVERY == 0
        if prune:
            conn.execute(changes.delete().where(changes.c.seq <= seq - _KEEP_CHANGES))

    def _load(self, conn: Connection, kind: str, namespace: str, name: str) -> Resource | None:
        row = conn.execute(_SEL_OBJECT, {"b_kind": kind, "b_ns": namespace, "b_name": name}).first()
        return None if row is None else dict(json.loads(row[0]))

    def _store_row(
        self, conn: Connection, obj: Resource, insert: bool, old_refs: set[str] | None = None
    ) -> None:
        """Write the object row and its owner edges. ``old_refs``: the owner uids stored before
        (None = unknown), so an update that keeps them skips rewriting the edges."""
        meta = obj["metadata"]
        tpm, mach = _hashes(obj)
        values = {
            "uid": meta["uid"],
            "rv": int(meta["resourceVersion"]),
            "tpm_hash": tpm,
            "machine_hash": mach,
            "token": _token_of(obj),
            "data": _dumps(obj),
        }
        key = {"b_kind": obj["kind"], "b_ns": meta.get("namespace", ""), "b_name": meta["name"]}
        stmt: sa.Insert | sa.Update = _UPD_OBJECT
        params = key
        if insert:
            stmt, params = (
                _INS_OBJECT,
                {"kind": key["b_kind"], "namespace": key["b_ns"], "name": key["b_name"]},
            )
        try:
            if self.dialect == "sqlite":
                # SQLite undoes just the failing statement; the transaction stays usable.
                conn.execute(stmt, {**params, **values})
            else:
                # A savepoint keeps a unique-index clash from aborting the PostgreSQL transaction.
                with conn.begin_nested():
                    conn.execute(stmt, {**params, **values})
        except IntegrityError as exc:
            raise Conflict(
                f"{obj['kind']} {key['b_ns']}/{key['b_name']}: another object already has this identity "
                f"(tpmHash/machineHash/uid): {exc.orig}"
            ) from None
        refs = {r["uid"] for r in meta.get("ownerReferences") or ()}
        if insert or old_refs != refs:
            if not insert:
                conn.execute(_DEL_OWNED, key)
            if refs:
                conn.execute(
                    _INS_OWNER,
                    [
                        {
                            "owner_uid": u,
                            "kind": key["b_kind"],
                            "namespace": key["b_ns"],
                            "name": key["b_name"],
                        }
                        for u in refs
                    ],
                )

    @staticmethod
    def _namespace(obj: Resource) -> str:
        info = kind_info(obj["kind"])
        return (obj["metadata"].get("namespace") or "default") if info.namespaced else ""

    # ---- Store API ----------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Resource:
        ns = namespace if kind_info(kind).namespaced else ""
        rows = self._read_one(_SEL_OBJECT, {"b_kind": kind, "b_ns": ns, "b_name": name})
        if not rows:
            raise NotFound(f"{kind} {namespace}/{name} not found")
        return dict(json.loads(rows[0][0]))

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: Mapping[str, Any] | None = None,
    ) -> list[Resource]:
        return self.list_with_version(kind, namespace, label_selector)[0]

    def list_with_version(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: Mapping[str, Any] | None = None,
    ) -> tuple[builtins.list[Resource], int]:
        """Like ``list`` plus the change-log position it reflects (start a watch from there)."""
        query = sa.select(objects.c.data).where(objects.c.kind == kind)
        if namespace is not None and kind_info(kind).namespaced:
            query = query.where(objects.c.namespace == namespace)
        query = query.order_by(objects.c.namespace, objects.c.name)
        with self._read() as conn:
            rows = conn.execute(query).all()
            rv = int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(changes.c.seq), 0))).scalar_one())
        out = [json.loads(r[0]) for r in rows]
        if label_selector:
            out = [o for o in out if matches(label_selector, o["metadata"].get("labels"))]
        return out, rv

    def current_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(changes.c.seq), 0))).scalar_one())

    def find_by_token(self, kind: str, token: str) -> builtins.list[Resource]:
        """Objects whose lookup token (registrationToken / downloadToken) equals ``token``."""
        rows = self._read_one(_SEL_BY_TOKEN, {"b_kind": kind, "b_token": token})
        return [json.loads(r[0]) for r in rows]

    def create(self, obj: Resource) -> Resource:
        obj = self._prepare_create(obj)
        with self._write() as conn:
            return self._insert_locked(conn, obj)

    def _prepare_create(self, obj: Resource) -> Resource:
        obj = validate(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise StoreError("metadata.name: required")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            obj = validate(obj)
            meta = obj["metadata"]
        ns = self._namespace(obj)
        if ns:
            meta["namespace"] = ns
        if obj["kind"] == "Secret":
            _merge_string_data(obj)
        meta.pop("deletionTimestamp", None)
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        meta["creationTimestamp"] = now_rfc3339()
        return obj

    def _insert_locked(self, conn: Connection, obj: Resource) -> Resource:
        meta = obj["metadata"]
        ns = self._namespace(obj)
        if self._load(conn, obj["kind"], ns, meta["name"]) is not None:
            raise AlreadyExists(f"{obj['kind']} {ns}/{meta['name']} already exists")
        seq = self._next_seq(conn)
        meta["resourceVersion"] = str(seq)
        self._store_row(conn, obj, insert=True)
        self._log(conn, "ADDED", obj, seq)
        return obj

    def update(self, obj: Resource) -> Resource:
        return self._update(obj, status_only=False)

    def update_status(self, obj: Resource) -> Resource:
        return self._update(obj, status_only=True)

    def _update(self, obj: Resource, status_only: bool) -> Resource:
        obj = validate(obj)
        with self._write() as conn:
            return self._update_locked(conn, obj, status_only)

    def _update_locked(
        self, conn: Connection, obj: Resource, status_only: bool, cur: Resource | None = None
    ) -> Resource:
        """Apply a validated ``obj`` over the stored one (``cur`` when already loaded in ``conn``)."""
        meta = obj["metadata"]
        ns = self._namespace(obj)
        name = meta.get("name", "")
        if cur is None or (cur["metadata"].get("namespace", ""), cur["metadata"]["name"]) != (ns, name):
            cur = self._load(conn, obj["kind"], ns, name)
        if cur is None:
            raise NotFound(f"{obj['kind']} {ns}/{name} not found")
        cmeta = cur["metadata"]
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != cmeta["resourceVersion"]:
            raise Conflict(
                f"{obj['kind']} {ns}/{cmeta['name']}: resourceVersion {want_rv} is stale "
                f"(now {cmeta['resourceVersion']})"
            )
        if meta.get("uid") and meta["uid"] != cmeta["uid"]:
            raise Conflict(f"{obj['kind']} {ns}/{cmeta['name']}: uid precondition failed")
        # Shallow: top-level values are replaced, never mutated, and ``cur`` is private to this call.
        new = dict(cur)
        new["metadata"] = dict(cmeta)
        if status_only:
            if obj.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = obj["status"]
        else:
            for key in set(new) | set(obj):
                if key in ("apiVersion", "kind", "metadata", "status"):
                    continue
                if key in obj:
                    new[key] = obj[key]
                else:
                    new.pop(key, None)
            if new["kind"] == "Secret":
                _merge_string_data(new)
            nmeta = {k: v for k, v in meta.items() if k not in _SERVER_FIELDS}
            nmeta.update({k: cmeta[k] for k in _SERVER_FIELDS if k in cmeta})
            nmeta["namespace"] = cmeta.get("namespace", "")
            if not nmeta["namespace"]:
                nmeta.pop("namespace")
            if new.get("spec") != cur.get("spec"):
                nmeta["generation"] = int(cmeta.get("generation", 1)) + 1
            new["metadata"] = nmeta
        if new == cur:
            return cur  # no-op writes do not bump resourceVersion (keeps reconcilers quiet)
        nmeta = new["metadata"]
        seq = self._next_seq(conn)
        if nmeta.get("deletionTimestamp") and not nmeta.get("finalizers"):
            nmeta["resourceVersion"] = str(seq)
            self._remove(conn, new, seq)
            return new
        nmeta["resourceVersion"] = str(seq)
        old_refs = {r["uid"] for r in cmeta.get("ownerReferences") or ()}
        self._store_row(conn, new, insert=False, old_refs=old_refs)
        self._log(conn, "MODIFIED", new, seq)
        return new

    def delete(self, kind: str, namespace: str, name: str) -> Resource | None:
        ns = namespace if kind_info(kind).namespaced else ""
        with self._write() as conn:
            cur = self._load(conn, kind, ns, name)
            if cur is None:
                raise NotFound(f"{kind} {namespace}/{name} not found")
            return self._delete_locked(conn, cur)

    def _delete_locked(self, conn: Connection, cur: Resource) -> Resource | None:
        meta = cur["metadata"]
        seq = self._next_seq(conn)
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return cur
            meta["deletionTimestamp"] = now_rfc3339()
            meta["resourceVersion"] = str(seq)
            refs = {r["uid"] for r in meta.get("ownerReferences") or ()}
            self._store_row(conn, cur, insert=False, old_refs=refs)
            self._log(conn, "MODIFIED", cur, seq)
            return cur
        meta["resourceVersion"] = str(seq)
        self._remove(conn, cur, seq)
        return None

    def _remove(self, conn: Connection, obj: Resource, seq: int) -> None:
        """Delete a finalizer-free object, then garbage-collect its dependents (background GC)."""
        meta = obj["metadata"]
        ns = meta.get("namespace", "")
        conn.execute(
            objects.delete().where(
                objects.c.kind == obj["kind"], objects.c.namespace == ns, objects.c.name == meta["name"]
            )
        )
        conn.execute(
            owners.delete().where(
                owners.c.kind == obj["kind"], owners.c.namespace == ns, owners.c.name == meta["name"]
            )
        )
        self._log(conn, "DELETED", obj, seq)
        deps = conn.execute(
            sa.select(owners.c.kind, owners.c.namespace, owners.c.name).where(
                owners.c.owner_uid == meta["uid"]
            )
        ).all()
        for kind, dns, dname in deps:
            dep = self._load(conn, kind, dns, dname)
            if dep is None:
                continue
            refs = dep["metadata"].get("ownerReferences") or []
            alive = [
                r
                for r in refs
                if r["uid"] != meta["uid"]
                and conn.execute(sa.select(objects.c.uid).where(objects.c.uid == r["uid"])).first()
                is not None
            ]
            if alive:
                # Another owner still exists: only drop the dangling reference, as Kubernetes does.
                dep["metadata"]["ownerReferences"] = [r for r in refs if r["uid"] != meta["uid"]]
                dseq = self._next_seq(conn)
                dep["metadata"]["resourceVersion"] = str(dseq)
                self._store_row(conn, dep, insert=False)
                self._log(conn, "MODIFIED", dep, dseq)
            else:
                self._delete_locked(conn, dep)

    def find_inventory_by_hash(
        self, *, tpm_hash: str | None = None, machine_hash: str | None = None
    ) -> Resource | None:
        stmt = _hash_query(tpm_hash, machine_hash)
        if stmt is None:
            return None
        rows = self._read_one(stmt, {"b_hash": tpm_hash or machine_hash})
        return dict(json.loads(rows[0][0])) if rows else None

    def upsert_inventory(
        self,
        *,
        tpm_hash: str | None = None,
        machine_hash: str | None = None,
        new: Callable[[], Resource] | None,
        modify: Callable[[Resource], Resource],
        retries: int = 5,
    ) -> tuple[Resource, bool]:
        """One write transaction: look the hash up, then update or create (see Store)."""
        stmt = _hash_query(tpm_hash, machine_hash)
        if stmt is None:
            raise StoreError("upsert_inventory: a tpm_hash or machine_hash is required")
        with self._write() as conn:
            row = conn.execute(stmt, {"b_hash": tpm_hash or machine_hash}).first()
            if row is None:
                if new is None:
                    raise NotFound("MachineInventory not found")
                return self._insert_locked(conn, self._prepare_create(new())), True
            # Two parses of the row: cheaper than a deep copy, and ``cur`` stays pristine.
            cur = json.loads(row[0])
            obj = validate(modify(json.loads(row[0])))
            return self._update_locked(conn, obj, status_only=False, cur=cur), False

    def watch(
        self,
        kinds: tuple[str, ...] | None = None,
        since: int = 0,
        timeout: float | None = None,
    ) -> Iterator[WatchEvent]:
        last = since
        idle_since = time.monotonic()
        first = True
        while True:
            query = sa.select(changes.c.seq, changes.c.type, changes.c.data).where(changes.c.seq > last)
            if kinds:
                query = query.where(changes.c.kind.in_(kinds))
            query = query.order_by(changes.c.seq).limit(500)
            with self._read() as conn:
                if first and since > 0:
                    oldest = conn.execute(sa.select(sa.func.min(changes.c.seq))).scalar()
                    if oldest is not None and since < int(oldest) - 1:
                        raise Gone(f"resourceVersion {since} is older than the retained change log")
                first = False
                rows = conn.execute(query).all()
            for seq, type_, data in rows:
                last = int(seq)
                yield WatchEvent(type=type_, object=json.loads(data), resource_version=last)
            if rows:
                idle_since = time.monotonic()
                continue
            if timeout is not None and time.monotonic() - idle_since >= timeout:
                return
            time.sleep(self.poll_interval)

    # ---- leader election ------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew lease ``name`` for ``ttl`` seconds; False while someone else holds it."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                sa.select(leases.c.holder, leases.c.expires).where(leases.c.name == name)
            ).first()
            if row is None:
                conn.execute(leases.insert().values(name=name, holder=holder, expires=now + ttl))
                return True
            if row[0] != holder and row[1] > now and not (self.dialect == "sqlite" and holder_gone(row[0])):
                return False
            conn.execute(
                leases.update().where(leases.c.name == name).values(holder=holder, expires=now + ttl)
            )
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._write() as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))

    def lease_holder(self, name: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(leases.c.holder, leases.c.expires).where(leases.c.name == name)
            ).first()
        return row[0] if row is not None and row[1] > time.time() else None

    def close(self) -> None:
        self.engine.dispose()


# Below this much free space a SQLite write may fail half-way: /healthz reports the disk full.
MIN_FREE_BYTES = 1 << 20
# How long a failed write keeps /healthz at 503 (no successful write since clears it at once).
FULL_REPORT_SECONDS = 5.0
_DISK_FULL_TEXT = (
    "database or disk is full",
    "no space left on device",
    "disk full",
    "could not extend file",
)


def _first_line(exc: object) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _disk_full(exc: DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlite_errorcode", None) == 13:  # SQLITE_FULL
        return True
    if getattr(orig, "sqlstate", None) in ("53100", "53000"):  # disk_full, insufficient_resources
        return True
    if isinstance(orig, OSError) and orig.errno == errno.ENOSPC:
        return True
    return any(t in str(orig).lower() for t in _DISK_FULL_TEXT)


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    # Field 22 (starttime), counted after the parenthesised command name (which may hold spaces).
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def lease_identity() -> str:
    """``<host>-pidns<inode>-start<ticks>-<pid>``: enough to prove, on the same host, that the
    holder process is gone (pid absent, or reused by a process that started later). Ends in
    ``-<pid>`` like the plain ``<host>-<pid>`` identities before it."""
    pid = os.getpid()
    return f"{socket.gethostname()}-pidns{_pid_namespace()}-start{_proc_start_time(pid) or ''}-{pid}"


def holder_gone(holder: str) -> bool:
    """True only when ``holder`` (a ``lease_identity``) is provably dead: same host and pid
    namespace, and its pid is gone or now belongs to a process started at another time. Any
    doubt (another host, container, an identity of another format) is False: wait the TTL."""
    parts = holder.rsplit("-", 3)
    if len(parts) != 4:
        return False
    host, ns, start, pid_text = parts
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    if ns != f"pidns{_pid_namespace()}" or not start.startswith("start") or len(start) <= len("start"):
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    now = _proc_start_time(pid)
    return now is None or now != start[len("start") :]


def _hash_query(tpm_hash: str | None, machine_hash: str | None) -> sa.Select[Any] | None:
    if tpm_hash:
        return _SEL_BY_TPM_HASH
    if machine_hash:
        return _SEL_BY_MACHINE_HASH
    return None


_SERVER_FIELDS = ("uid", "creationTimestamp", "deletionTimestamp", "generation", "resourceVersion")


def _merge_string_data(obj: Resource) -> None:
    import base64

    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(value.encode()).decode()


def _sqlite_engine(url: str) -> Engine:
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so we can issue BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # a commit that returned survives kill -9 and power loss
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        if conn.info.get("autocommit"):
            return  # one SELECT (_read_one): atomic by itself, no transaction round trips
        # Writers take the lock up front: no deadlock-prone read→write upgrades, ordered seqs.
        # Straight to the driver: exec_driver_sql costs a full SQLAlchemy execution per BEGIN.
        driver: Any = conn.connection.driver_connection
        driver.execute("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

    return engine


def open_store(url: str, poll_interval: float = 0.1) -> SqlStore:
    """``sqlite:///path.db`` or ``postgresql://user@host:port/db`` (psycopg 3)."""
    if url.startswith("sqlite"):
        return SqlStore(_sqlite_engine(url), poll_interval)
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return SqlStore(sa.create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True), poll_interval)
