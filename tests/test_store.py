"""Store semantics, run against SQLite and a real PostgreSQL."""

# ruff: noqa: F811  (pytest fixtures imported from operator_fixtures)

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from operator_fixtures import postgres_server, store, store_url  # noqa: F401
from waiting import wait_until

from elemental_operator.api import ValidationError
from elemental_operator.store.base import AlreadyExists, Conflict, NotFound
from elemental_operator.store.sql import SqlStore, open_store

NS = "fleet-default"


def inv(
    name: str, tpm: str | None = None, labels: dict[str, str] | None = None, **meta: Any
) -> dict[str, Any]:
    spec = {"tpmHash": tpm} if tpm else {}
    return {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineInventory",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}, **meta},
        "spec": spec,
    }


def test_create_get_fills_metadata(store: SqlStore) -> None:
    obj = store.create(inv("m1", tpm="aa"))
    meta = obj["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) > 0
    assert "network" not in obj["spec"]  # defaults apply only inside present parents, as in k8s
    assert store.get("MachineInventory", NS, "m1") == obj
    with pytest.raises(AlreadyExists):
        store.create(inv("m1"))
    with pytest.raises(NotFound):
        store.get("MachineInventory", NS, "nope")


def test_validation_refuses_unknown_and_wrong_types(store: SqlStore) -> None:
    bad = inv("m1")
    bad["spec"]["tpmhash"] = "x"
    with pytest.raises(ValidationError, match=r"spec\.tpmhash: unknown field"):
        store.create(bad)
    bad = inv("m1")
    bad["spec"]["network"] = {"configurator": "bogus"}
    with pytest.raises(ValidationError, match=r"spec\.network\.configurator"):
        store.create(bad)


def test_update_optimistic_concurrency_and_generation(store: SqlStore) -> None:
    obj = store.create(inv("m1"))
    stale = dict(obj)
    obj["metadata"]["labels"] = {"a": "b"}
    upd = store.update(obj)
    assert upd["metadata"]["generation"] == 1  # metadata-only change
    assert int(upd["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
    with pytest.raises(Conflict):
        store.update(stale)
    upd["spec"]["machineHash"] = "bb"
    upd2 = store.update(upd)
    assert upd2["metadata"]["generation"] == 2
    # no-op update keeps the resourceVersion
    assert store.update(upd2)["metadata"]["resourceVersion"] == upd2["metadata"]["resourceVersion"]


def test_update_status_keeps_spec(store: SqlStore) -> None:
    obj = store.create(inv("m1", tpm="aa"))
    obj["status"] = {"plan": {"state": "Applied"}}
    obj["spec"]["tpmHash"] = "changed"
    out = store.update_status(obj)
    assert out["status"]["plan"]["state"] == "Applied"
    assert out["spec"]["tpmHash"] == "aa"
    # update keeps status
    out["spec"]["tpmHash"] = "cc"
    out.pop("status")
    assert store.update(out)["status"]["plan"]["state"] == "Applied"


def test_two_writers_one_conflict(store: SqlStore, store_url: str) -> None:
    store.create(inv("m1"))
    other = open_store(store_url)
    try:
        a = store.get("MachineInventory", NS, "m1")
        b = other.get("MachineInventory", NS, "m1")
        a["metadata"]["labels"] = {"who": "a"}
        b["metadata"]["labels"] = {"who": "b"}
        results = []
        for s, o in ((store, a), (other, b)):
            try:
                s.update(o)
                results.append("ok")
            except Conflict:
                results.append("conflict")
        assert sorted(results) == ["conflict", "ok"]
        assert store.get("MachineInventory", NS, "m1")["metadata"]["labels"] == {"who": "a"}
    finally:
        other.close()


def test_concurrent_threads_exactly_one_wins(store: SqlStore) -> None:
    store.create(inv("m1"))
    base = store.get("MachineInventory", NS, "m1")
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def writer(i: int) -> None:
        o = {**base, "metadata": {**base["metadata"], "labels": {"w": str(i)}}}
        barrier.wait()
        try:
            store.update(o)
            outcomes.append("ok")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1 and outcomes.count("conflict") == 3


def test_finalizers_and_deletion_timestamp(store: SqlStore) -> None:
    store.create(inv("m1", finalizers=["x/y"]))
    out = store.delete("MachineInventory", NS, "m1")
    assert out is not None and out["metadata"]["deletionTimestamp"]
    assert store.get("MachineInventory", NS, "m1")["metadata"]["deletionTimestamp"]
    obj = store.get("MachineInventory", NS, "m1")
    obj["metadata"]["finalizers"] = []
    store.update(obj)
    with pytest.raises(NotFound):
        store.get("MachineInventory", NS, "m1")
    store.create(inv("m2"))
    assert store.delete("MachineInventory", NS, "m2") is None


def test_cascading_delete(store: SqlStore) -> None:
    reg = store.create(
        {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "MachineRegistration",
            "metadata": {"name": "r", "namespace": NS},
            "spec": {},
        }
    )
    ref = {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineRegistration",
        "name": "r",
        "uid": reg["metadata"]["uid"],
        "controller": True,
    }
    m = store.create(inv("m1", ownerReferences=[ref], finalizers=["f"]))
    mref = {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineInventory",
        "name": "m1",
        "uid": m["metadata"]["uid"],
        "controller": True,
    }
    store.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "m1", "namespace": NS, "ownerReferences": [mref]},
            "stringData": {"plan": "{}"},
        }
    )
    # a dependent with a second live owner only loses the reference
    other = store.create(inv("keep"))
    kref = {**mref, "name": "keep", "uid": other["metadata"]["uid"], "controller": False}
    store.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "shared", "namespace": NS, "ownerReferences": [mref, kref]},
        }
    )
    assert store.delete("MachineRegistration", NS, "r") is None
    # m1 has a finalizer → marked, not removed; its Secret stays until it goes
    m1 = store.get("MachineInventory", NS, "m1")
    assert m1["metadata"]["deletionTimestamp"]
    assert store.get("Secret", NS, "m1")
    m1["metadata"]["finalizers"] = []
    store.update(m1)
    with pytest.raises(NotFound):
        store.get("Secret", NS, "m1")
    shared = store.get("Secret", NS, "shared")
    assert [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["keep"]


def test_secret_string_data_and_base64(store: SqlStore) -> None:
    s = store.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "elemental.cattle.io/plan",
            "metadata": {"name": "s", "namespace": NS},
            "stringData": {"plan": "{}"},
        }
    )
    assert s["data"] == {"plan": "e30="} and "stringData" not in s
    with pytest.raises(ValidationError, match="data.x"):
        store.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "t", "namespace": NS},
                "data": {"x": "not base64!"},
            }
        )


def test_unique_hash_index(store: SqlStore) -> None:
    store.create(inv("m1", tpm="hash1"))
    with pytest.raises(Conflict):
        store.create(inv("m2", tpm="hash1"))
    found = store.find_inventory_by_hash(tpm_hash="hash1")
    assert found is not None and found["metadata"]["name"] == "m1"
    assert store.find_inventory_by_hash(tpm_hash="zzz") is None
    m3 = inv("m3")
    m3["spec"] = {"machineHash": "mh"}
    store.create(m3)
    found = store.find_inventory_by_hash(machine_hash="mh")
    assert found is not None and found["metadata"]["name"] == "m3"
    # the failed create left nothing behind and the store still works (PostgreSQL savepoint)
    with pytest.raises(NotFound):
        store.get("MachineInventory", NS, "m2")
    store.create(inv("m4", tpm="hash4"))


def test_label_selectors(store: SqlStore) -> None:
    store.create(inv("a", labels={"element": "fire", "zone": "1"}))
    store.create(inv("b", labels={"element": "water"}))
    store.create(inv("c", labels={}))

    def names(sel: dict[str, Any]) -> list[str]:
        return [o["metadata"]["name"] for o in store.list("MachineInventory", NS, sel)]

    assert names({"matchLabels": {"element": "fire"}}) == ["a"]
    assert names(
        {"matchExpressions": [{"key": "element", "operator": "In", "values": ["fire", "water"]}]}
    ) == ["a", "b"]
    assert names({"matchExpressions": [{"key": "element", "operator": "NotIn", "values": ["fire"]}]}) == [
        "b",
        "c",
    ]
    assert names({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}) == ["a"]
    assert names({"matchExpressions": [{"key": "element", "operator": "DoesNotExist"}]}) == ["c"]
    assert names({}) == ["a", "b", "c"]
    assert store.list("MachineInventory", "other-ns") == []


def test_watch_sees_changes_across_store_instances(store: SqlStore, store_url: str) -> None:
    since = store.current_version()
    other = open_store(store_url, poll_interval=0.02)
    got: list[tuple[str, str]] = []

    def reader() -> None:
        for ev in other.watch(("MachineInventory",), since=since, timeout=1.0):
            got.append((ev.type, ev.object["metadata"]["name"]))

    t = threading.Thread(target=reader)
    t.start()
    store.create(inv("w1"))
    obj = store.get("MachineInventory", NS, "w1")
    obj["metadata"]["labels"] = {"x": "y"}
    store.update(obj)
    store.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ignored", "namespace": NS}})
    store.delete("MachineInventory", NS, "w1")
    t.join(10)
    other.close()
    assert got == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]


def test_leases(store: SqlStore) -> None:
    assert store.acquire_lease("controllers", "a", ttl=0.5)
    assert not store.acquire_lease("controllers", "b", ttl=0.5)
    assert store.acquire_lease("controllers", "a", ttl=0.5)  # renew
    assert store.lease_holder("controllers") == "a"
    # b gets it once a's 0.5 s have run out (and not before: checked above, well within them)
    wait_until(lambda: store.acquire_lease("controllers", "b", ttl=5), 5, what="a's lease to expire")
    store.release_lease("controllers", "b")
    assert store.lease_holder("controllers") is None


WRITER = r"""
import sys
from elemental_operator.store.sql import open_store
s = open_store(sys.argv[1])
i = 0
while True:
    s.create({"apiVersion": "elemental.cattle.io/v1beta1", "kind": "MachineInventory",
              "metadata": {"name": f"k{i}", "namespace": "fleet-default"}, "spec": {"tpmHash": f"h{i}"}})
    print(i, flush=True)
    i += 1
"""


def test_kill_9_during_writes_loses_nothing_committed(store_url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, store_url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = -1
    deadline = time.monotonic() + 30
    while acked < 40 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # anything the writer printed before the kill had committed; it must all be there
    rest = proc.stdout.read().split()
    acked = max([acked, *(int(x) for x in rest)])
    assert acked >= 40
    s = open_store(store_url)
    try:
        names = {o["metadata"]["name"] for o in s.list("MachineInventory")}
        assert {f"k{i}" for i in range(acked + 1)} <= names
        s.create(
            {
                "apiVersion": "elemental.cattle.io/v1beta1",
                "kind": "MachineInventory",
                "metadata": {"name": "after", "namespace": NS},
            }
        )
    finally:
        s.close()
