"""Operator: store writes, inventory reconciles/s, admin API latency, RSS at 10k inventories.

`python -m bench operator_store`. SQLite (file, WAL, synchronous=FULL) and PostgreSQL (started
in a temp dir, as in the tests), one and two replicas. Baselines measured in the same run:
a bare durable INSERT+COMMIT per row on the same engine (the floor any object store pays) and
the HTTP round trip of /healthz (the floor any admin request pays).
Sizes: BENCH_INVENTORIES (default 2000) for rates, 10000 for the RSS figure.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

N = int(os.environ.get("BENCH_INVENTORIES", "2000"))
NS = "fleet-default"


def _inv(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineInventory",
        "metadata": {"name": f"m-{i:06d}", "namespace": NS, "labels": {"pool": f"p{i % 10}"}},
        "spec": {"tpmHash": f"{i:064x}"},
    }


def _bare_inserts(url: str, n: int) -> float:
    eng = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    if url.startswith("sqlite"):
        with eng.connect() as c:
            c.exec_driver_sql("PRAGMA journal_mode=WAL")
            c.exec_driver_sql("PRAGMA synchronous=FULL")
    with eng.begin() as c:
        c.exec_driver_sql("CREATE TABLE IF NOT EXISTS bare (k TEXT PRIMARY KEY, v TEXT)")
    payload = json.dumps(_inv(0))
    t = time.perf_counter()
    for i in range(n):
        with eng.begin() as c:
            c.execute(sa.text("INSERT INTO bare VALUES (:k, :v)"), {"k": str(i), "v": payload})
    dt = time.perf_counter() - t
    eng.dispose()
    return n / dt


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def _measure(url: str, label: str, state: Path) -> list[tuple[str, str, str]]:
    from operator_fixtures import RunningOperator

    from elemental_operator.context import OperatorContext
    from elemental_operator.controllers import Manager, all_controllers
    from elemental_operator.store.sql import open_store

    rows: list[tuple[str, str, str]] = []
    store = open_store(url)
    bare = _bare_inserts(url, min(N, 500))
    t = time.perf_counter()
    for i in range(N):
        store.create(_inv(i))
    creates = N / (time.perf_counter() - t)
    rows.append(
        (
            f"{label}: creates/s",
            f"{creates:,.0f}",
            f"{creates / bare:.2f}× bare INSERT+COMMIT ({bare:,.0f}/s)",
        )
    )

    ctx = OperatorContext(store=store, public_url="https://bench", secret_key=b"k" * 32)
    mgr = Manager(ctx, all_controllers(ctx, state))
    t = time.perf_counter()
    mgr.resync_all()
    while True:
        ran = mgr.step()
        if ran == 0 and (not mgr._heap or mgr._heap[0][0] > time.monotonic() + 1):
            break  # converged: nothing due except far-future requeues
        if ran == 0:
            time.sleep(0.01)
    dt = time.perf_counter() - t
    done = sum(1 for i in store.list("MachineInventory") if (i.get("status") or {}).get("plan"))
    rows.append(
        (
            f"{label}: inventory reconciles/s",
            f"{mgr.reconciles / dt:,.0f}",
            f"{done}/{N} inventories with plan Secret in {dt:.1f}s ({mgr.reconciles} reconciles)",
        )
    )

    op = RunningOperator(store, state, controllers=False)
    try:

        def get(path: str, token: str | None) -> float:
            req = urllib.request.Request(op.url + path)
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
            return (time.perf_counter() - t0) * 1000

        base = [get("/healthz", None) for _ in range(300)]
        one = [
            get(f"/elemental/admin/v1/namespaces/{NS}/machineinventories/m-{i % N:06d}", op.token)
            for i in range(300)
        ]
        sel = [
            get(f"/elemental/admin/v1/namespaces/{NS}/machineinventories?labelSelector=pool%3Dp3", op.token)
            for _ in range(20)
        ]
        rows.append(
            (
                f"{label}: admin GET one p50/p99 ms",
                f"{_pct(one, 0.5):.1f} / {_pct(one, 0.99):.1f}",
                f"healthz p50/p99 {_pct(base, 0.5):.1f} / {_pct(base, 0.99):.1f}",
            )
        )
        rows.append(
            (
                f"{label}: admin LIST {N // 10} by label p50/p99 ms",
                f"{_pct(sel, 0.5):.0f} / {_pct(sel, 0.99):.0f}",
                f"of {N} objects",
            )
        )
    finally:
        op.stop()
    store.close()
    return rows


RSS_CHILD = r"""
import sys, time, resource
sys.path.insert(0, sys.argv[3])
from sqlalchemy import event
from elemental_operator.store.sql import SqlStore, _sqlite_engine
from elemental_operator.context import OperatorContext
from elemental_operator.controllers import Manager, all_controllers
from operator_fixtures import RunningOperator
from pathlib import Path
engine = _sqlite_engine(sys.argv[1])
# synchronous=OFF: the figure is memory, and 40k fsyncs on a shared disk only add wall time
event.listen(engine, "connect", lambda c, r: c.execute("PRAGMA synchronous=OFF"))
store = SqlStore(engine)
ctx = OperatorContext(store=store, public_url="https://bench", secret_key=b"k" * 32)
op = RunningOperator(store, Path(sys.argv[2]), controllers=False)
mgr = Manager(ctx, all_controllers(ctx, Path(sys.argv[2])))
mgr.resync_all()
while mgr.step():
    pass
# VmHWM, not ru_maxrss: the latter is inherited from the (large) parent across fork+exec
print([int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")][0])
op.stop()
"""


def _rss(url: str, n: int, state: Path) -> int:
    from sqlalchemy import event

    from elemental_operator.store.sql import SqlStore, _sqlite_engine

    engine = _sqlite_engine(url)

    @event.listens_for(engine, "connect")
    def _fast(dbapi_conn: Any, _rec: Any) -> None:
        # Filling only: the figure is about the running operator, not about durable inserts.
        dbapi_conn.execute("PRAGMA synchronous=OFF")

    store = SqlStore(engine)
    for i in range(n):
        store.create(_inv(i))
    store.close()
    out = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, url, str(state), str(REPO / "tests")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return int(out.stdout.split()[-1])


def main() -> None:
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as t:
        tmp = Path(t)
        rows += _measure(f"sqlite:///{tmp / 'a.db'}", "SQLite", tmp / "s1")
        pg = None
        try:
            from operator_fixtures import PostgresServer

            pg = PostgresServer()
            rows += _measure(pg.new_database(), "PostgreSQL", tmp / "s2")
        except Exception as exc:  # no PostgreSQL here: report, do not hide the SQLite figures
            rows.append(("PostgreSQL", "skipped", str(exc)[:80]))
        rss = _rss(f"sqlite:///{tmp / 'rss.db'}", 10_000, tmp / "s3")
        idle = _rss(f"sqlite:///{tmp / 'empty.db'}", 0, tmp / "s4")
        rows.append(
            (
                "RSS, server + controllers, 10k inventories (SQLite)",
                f"{rss / 1024:.0f} MiB",
                f"{rss / idle:.1f}× the same process with no objects ({idle / 1024:.0f} MiB)",
            )
        )
        if pg is not None:
            pg.stop()
    print(f"| measure (N={N}) | value | baseline / note |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    print(
        f"\n(bench process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
        "two replicas: only the lease holder reconciles, so reconciles/s is the one-replica figure; "
        "both serve the admin API)"
    )
