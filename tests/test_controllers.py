"""Controllers against both stores (SQLite, PostgreSQL), driven synchronously by the Manager."""

# ruff: noqa: F811  (pytest fixtures imported from operator_fixtures)

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from operator_fixtures import postgres_server, run_until, store, store_url  # noqa: F401
from waiting import wait_until

from elemental_operator.context import OperatorContext
from elemental_operator.controllers import Manager, all_controllers
from elemental_operator.controllers.base import (
    condition_true,
    get_condition,
    now_rfc3339,
    plan_checksum,
    secret_get,
    secret_set,
)
from elemental_operator.store.base import NotFound
from elemental_operator.store.sql import SqlStore

NS = "fleet-default"
API = "elemental.cattle.io/v1beta1"
ALPHABET = set("bcdfghjklmnpqrstvwxz2456789")


@pytest.fixture
def ctx(store: SqlStore) -> OperatorContext:
    return OperatorContext(store=store, public_url="https://op.test:8443", secret_key=b"k" * 32)


@pytest.fixture
def mgr(ctx: OperatorContext, tmp_path: Path) -> Manager:
    cmd = f"sh -c 'echo run >> {tmp_path}/builds; cp {{registration}} {{output}}'"
    return Manager(ctx, all_controllers(ctx, tmp_path / "state", seedimage_command=cmd))


def registration(name: str = "reg", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "MachineRegistration",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def inventory(
    name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "MachineInventory",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}, "annotations": annotations or {}},
        "spec": spec,
    }


def get(store: SqlStore, kind: str, name: str) -> dict[str, Any]:
    return store.get(kind, NS, name)


def gone(store: SqlStore, kind: str, name: str) -> bool:
    try:
        store.get(kind, NS, name)
    except NotFound:
        return True
    return False


def agent_reports(
    store: SqlStore, name: str, key: str = "applied-checksum", checksum: str | None = None
) -> None:
    secret = get(store, "Secret", name)
    secret_set(secret, key, checksum or plan_checksum(secret_get(secret, "plan").encode()))
    store.update(secret)


# ---- MachineRegistration -------------------------------------------------------------------


def test_registration_token_url_ready(store: SqlStore, mgr: Manager) -> None:
    store.create(registration())
    run_until(mgr, lambda: condition_true(get(store, "MachineRegistration", "reg"), "Ready"))
    reg = get(store, "MachineRegistration", "reg")
    token = reg["status"]["registrationToken"]
    assert len(token) == 54 and set(token) <= ALPHABET
    assert reg["status"]["registrationURL"] == f"https://op.test:8443/elemental/registration/{token}"
    assert get_condition(reg, "Ready")["reason"] == "SuccessfullyCreated"  # type: ignore[index]
    assert reg["metadata"]["finalizers"] == ["machineregistration.elemental.cattle.io"]
    assert store.find_by_token("MachineRegistration", token)[0]["metadata"]["name"] == "reg"


def test_registration_static_token_and_duplicate(store: SqlStore, mgr: Manager) -> None:
    store.create(registration("a", token="fixed-token"))
    run_until(mgr, lambda: condition_true(get(store, "MachineRegistration", "a"), "Ready"))
    assert get(store, "MachineRegistration", "a")["status"]["registrationToken"] == "fixed-token"
    store.create(registration("b", token="fixed-token"))
    run_until(
        mgr,
        lambda: (
            (get_condition(get(store, "MachineRegistration", "b"), "Ready") or {}).get("reason")
            == "DuplicateToken"
        ),
    )
    # deleting the registration lets the finalizer go
    store.delete("MachineRegistration", NS, "a")
    run_until(mgr, lambda: gone(store, "MachineRegistration", "a"))


# ---- MachineInventory -----------------------------------------------------------------------


def test_inventory_plan_secret_and_plan_state(store: SqlStore, mgr: Manager) -> None:
    store.create(inventory("m1", tpmHash="t1"))
    run_until(
        mgr,
        lambda: (
            not gone(store, "Secret", "m1")
            and (get_condition(get(store, "MachineInventory", "m1"), "Ready") or {}).get("reason")
            == "WaitingForPlan"
        ),
    )
    inv = get(store, "MachineInventory", "m1")
    assert "machineinventory.elemental.cattle.io" in inv["metadata"]["finalizers"]
    assert inv["status"]["plan"]["secretRef"] == {"namespace": NS, "name": "m1"}
    assert condition_true(inv, "NetworkConfigReady")
    assert get_condition(inv, "AdoptionReady")["reason"] == "WaitingToBeAdopted"  # type: ignore[index]
    secret = get(store, "Secret", "m1")
    assert secret["type"] == "elemental.cattle.io/plan"
    assert secret["metadata"]["annotations"]["elemental.cattle.io/plan.type"] == "empty"
    assert secret_get(secret, "plan") == "{}"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == inv["metadata"]["uid"]

    agent_reports(store, "m1", "failed-checksum")
    run_until(mgr, lambda: get(store, "MachineInventory", "m1")["status"]["plan"].get("state") == "Failed")
    assert get_condition(get(store, "MachineInventory", "m1"), "Ready")["reason"] == "PlanFailure"  # type: ignore[index]
    agent_reports(store, "m1")
    run_until(mgr, lambda: condition_true(get(store, "MachineInventory", "m1"), "Ready"))
    inv = get(store, "MachineInventory", "m1")
    assert inv["status"]["plan"] == {
        "secretRef": {"namespace": NS, "name": "m1"},
        "state": "Applied",
        "checksum": plan_checksum(b"{}"),
    }
    assert get_condition(inv, "Ready")["reason"] == "PlanSuccessfullyApplied"  # type: ignore[index]


def test_inventory_delete_not_resettable(store: SqlStore, mgr: Manager) -> None:
    store.create(inventory("m1"))
    run_until(mgr, lambda: not gone(store, "Secret", "m1"))
    store.delete("MachineInventory", NS, "m1")
    run_until(mgr, lambda: gone(store, "MachineInventory", "m1"))
    assert gone(store, "Secret", "m1")  # garbage-collected with its owner


@pytest.mark.parametrize(
    "annotations,unmanaged",
    [
        ({"elemental.cattle.io/resettable": "true"}, False),
        ({"elemental.cattle.io/resettable": "true", "elemental.cattle.io/os.unmanaged": "true"}, True),
        # labelPrefix "-": Elemental (#1023) misses this key and sends the managed reset plan
        ({"elemental.cattle.io/resettable": "true", "os.unmanaged": "true"}, True),
        ({"elemental.cattle.io/resettable": "true", "edge.example.com/os.unmanaged": "true"}, True),
    ],
)
def test_inventory_delete_resettable_writes_reset_plan(
    store: SqlStore, mgr: Manager, annotations: dict[str, str], unmanaged: bool
) -> None:
    store.create(inventory("m1", annotations=annotations))
    run_until(mgr, lambda: not gone(store, "Secret", "m1"))
    store.delete("MachineInventory", NS, "m1")
    run_until(
        mgr,
        lambda: (
            get(store, "Secret", "m1")["metadata"]["annotations"]["elemental.cattle.io/plan.type"] == "reset"
        ),
    )
    secret = get(store, "Secret", "m1")
    plan = json.loads(secret_get(secret, "plan"))
    paths = [f["path"] for f in plan["files"]]
    if unmanaged:
        assert paths == ["/var/lib/elemental/.unmanaged_reset"] and "instructions" not in plan
    else:
        assert paths == ["/oem/reset-cloud-config.yaml"]
        assert [i["command"] for i in plan["instructions"]] == ["bootctl", "shutdown"]
        assert "elemental-register-reset" in base64.b64decode(plan["files"][0]["content"]).decode()
    inv = get(store, "MachineInventory", "m1")
    assert inv["status"]["plan"]["checksum"] == plan_checksum(secret_get(secret, "plan").encode())
    assert secret_get(secret, "applied-checksum") == ""
    mgr.step()
    assert not gone(store, "MachineInventory", "m1")  # waits for the agent
    agent_reports(store, "m1")
    run_until(mgr, lambda: gone(store, "MachineInventory", "m1"))
    assert gone(store, "Secret", "m1")


# ---- MachineInventorySelector ---------------------------------------------------------------


def test_selector_adopts_and_writes_bootstrap_plan(store: SqlStore, mgr: Manager) -> None:
    store.create(inventory("water", labels={"element": "water"}))
    store.create(inventory("fire", labels={"element": "fire", "elemental.cattle.io/InternalIP": "10.0.0.5"}))
    store.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "boot", "namespace": NS},
            "stringData": {"value": "#!/bin/sh\necho bootstrap\n"},
        }
    )
    store.create(
        {
            "apiVersion": API,
            "kind": "MachineInventorySelector",
            "metadata": {
                "name": "sel",
                "namespace": NS,
                "annotations": {"elemental.cattle.io/bootstrap-secret": "boot"},
            },
            "spec": {
                "selector": {"matchExpressions": [{"key": "element", "operator": "In", "values": ["fire"]}]}
            },
        }
    )
    run_until(
        mgr,
        lambda: (get(store, "MachineInventorySelector", "sel").get("status") or {}).get("ready") is True,
        timeout=20,
    )
    sel = get(store, "MachineInventorySelector", "sel")
    assert sel["status"]["machineInventoryRef"] == {"name": "fire"}
    assert get_condition(sel, "Ready")["reason"] == "SelectorReady"  # type: ignore[index]
    assert condition_true(sel, "InventoryReady")
    assert sel["status"]["addresses"] == [{"type": "InternalIP", "address": "10.0.0.5"}]
    inv = get(store, "MachineInventory", "fire")
    assert condition_true(inv, "AdoptionReady")
    assert [r["kind"] for r in inv["metadata"]["ownerReferences"] if r.get("controller")] == [
        "MachineInventorySelector"
    ]
    secret = get(store, "Secret", "fire")
    assert secret["metadata"]["annotations"]["elemental.cattle.io/plan.type"] == "bootstrap"
    assert sel["status"]["bootstrapPlanChecksum"] == plan_checksum(secret_get(secret, "plan").encode())
    plan = json.loads(secret_get(secret, "plan"))
    files = {f["path"]: base64.b64decode(f["content"]).decode() for f in plan["files"]}
    assert files["/var/lib/rancher/bootstrap.sh"] == "#!/bin/sh\necho bootstrap\n"
    assert files["/etc/rancher/k3s/config.yaml.d/99-elemental-name.yaml"] == "node-name: fire"
    assert "element=fire" in files["/etc/rancher/rke2/config.yaml.d/99-elemental-inventory-labels.yaml"]
    assert plan["instructions"][0]["args"] == ["set-hostname", "--transient", "fire"]
    assert not (get(store, "MachineInventory", "water")["metadata"].get("ownerReferences"))
    # Deleting the selector garbage-collects the adopted inventory (→ its reset/finalizer flow).
    store.delete("MachineInventorySelector", NS, "sel")
    run_until(mgr, lambda: gone(store, "MachineInventory", "fire"))


# ---- channels and versions ------------------------------------------------------------------


def channel(uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ManagedOSVersionChannel",
        "metadata": {"name": "ch", "namespace": NS},
        "spec": {"type": "json", "options": {"uri": uri}, **spec},
    }


def versions_file(path: Path, names: list[str]) -> None:
    path.write_text(
        json.dumps(
            [
                {
                    "metadata": {"name": n},
                    "spec": {
                        "version": n,
                        "type": "container",
                        "metadata": {"upgradeImage": f"elemental/os:{n}"},
                    },
                }
                for n in names
            ]
        )
    )


def test_channel_sync_registry_and_deprecation(store: SqlStore, mgr: Manager, tmp_path: Path) -> None:
    vf = tmp_path / "versions.json"
    versions_file(vf, ["v1", "v2"])
    store.create(channel(str(vf), registry="registry.local:5000", syncInterval="1s"))
    run_until(mgr, lambda: condition_true(get(store, "ManagedOSVersionChannel", "ch"), "Ready"))
    ch = get(store, "ManagedOSVersionChannel", "ch")
    assert get_condition(ch, "Ready")["reason"] == "Synchronized"  # type: ignore[index]
    assert ch["status"]["syncedGeneration"] == 1 and ch["status"]["failedSynchronizationAttempts"] == 0
    v1 = get(store, "ManagedOSVersion", "v1")
    assert v1["spec"]["metadata"]["upgradeImage"] == "registry.local:5000/elemental/os:v1"
    assert v1["metadata"]["labels"] == {"elemental.cattle.io/channel": "ch"}
    assert v1["metadata"]["ownerReferences"][0]["kind"] == "ManagedOSVersionChannel"
    versions_file(vf, ["v2"])
    run_until(
        mgr,
        lambda: (
            (get(store, "ManagedOSVersion", "v1")["metadata"].get("annotations") or {}).get(
                "elemental.cattle.io/channel-no-longer-in-sync"
            )
            == "true"
        ),
        timeout=15,
    )
    ch = get(store, "ManagedOSVersionChannel", "ch")
    ch["spec"]["deleteNoLongerInSyncVersions"] = True
    store.update(ch)
    run_until(mgr, lambda: gone(store, "ManagedOSVersion", "v1"), timeout=15)
    assert not gone(store, "ManagedOSVersion", "v2")


def test_channel_failures_and_disable(store: SqlStore, mgr: Manager, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    store.create(channel(str(bad)))
    run_until(
        mgr,
        lambda: (
            (get_condition(get(store, "ManagedOSVersionChannel", "ch"), "Ready") or {}).get("reason")
            == "FailedToSync"
        ),
    )
    assert get(store, "ManagedOSVersionChannel", "ch")["status"]["failedSynchronizationAttempts"] >= 1
    ch = get(store, "ManagedOSVersionChannel", "ch")
    ch["spec"]["enabled"] = False
    store.update(ch)
    run_until(
        mgr,
        lambda: (
            (get_condition(get(store, "ManagedOSVersionChannel", "ch"), "Ready") or {}).get("reason")
            == "ChannelDisabled"
        ),
    )
    store.create({**channel("x"), "metadata": {"name": "c2", "namespace": NS}, "spec": {"type": "custom"}})
    run_until(
        mgr,
        lambda: (
            (get_condition(get(store, "ManagedOSVersionChannel", "c2"), "Ready") or {}).get("reason")
            == "InvalidConfiguration"
        ),
    )


def test_version_finalizer_while_referenced(store: SqlStore, mgr: Manager) -> None:
    store.create(
        {
            "apiVersion": API,
            "kind": "ManagedOSVersion",
            "metadata": {"name": "v1", "namespace": NS},
            "spec": {"version": "v1", "type": "container", "metadata": {"upgradeImage": "os:v1"}},
        }
    )
    store.create(
        {
            "apiVersion": API,
            "kind": "ManagedOSImage",
            "metadata": {"name": "up", "namespace": NS},
            "spec": {"managedOSVersionName": "v1"},
        }
    )
    run_until(
        mgr,
        lambda: (
            (get(store, "ManagedOSImage", "up")["metadata"].get("labels") or {}).get(
                "elemental.cattle.io/managed-os-version-name"
            )
            == "v1"
            and "managedosversion.elemental.cattle.io"
            in get(store, "ManagedOSVersion", "v1")["metadata"].get("finalizers", [])
        ),
    )
    store.delete("ManagedOSVersion", NS, "v1")
    mgr.step()
    assert get(store, "ManagedOSVersion", "v1")["metadata"]["deletionTimestamp"]
    store.delete("ManagedOSImage", NS, "up")
    run_until(mgr, lambda: gone(store, "ManagedOSVersion", "v1"))


# ---- ManagedOSImage -------------------------------------------------------------------------


def test_os_image_rollout_respects_concurrency(store: SqlStore, mgr: Manager) -> None:
    for i in range(3):
        store.create(inventory(f"m{i}", labels={"pool": "a"}))
    store.create(inventory("other", labels={"pool": "b"}))
    run_until(mgr, lambda: all(not gone(store, "Secret", n) for n in ("m0", "m1", "m2", "other")))
    store.create(
        {
            "apiVersion": API,
            "kind": "ManagedOSImage",
            "metadata": {"name": "up", "namespace": NS},
            "spec": {
                "osImage": "registry/os:v2",
                "concurrency": 2,
                "nodeSelector": {"matchLabels": {"pool": "a"}},
                "cloudConfig": {"users": [{"name": "root"}]},
            },
        }
    )

    def upgrading() -> list[str]:
        return [
            n
            for n in ("m0", "m1", "m2", "other")
            if get(store, "Secret", n)["metadata"]["annotations"].get("elemental.cattle.io/plan.type")
            == "upgrade"
        ]

    run_until(mgr, lambda: len(upgrading()) == 2)
    assert "other" not in upgrading()
    plan = json.loads(secret_get(get(store, "Secret", upgrading()[0]), "plan"))
    assert plan["instructions"][0]["command"] == "elemental"
    assert plan["instructions"][0]["args"] == ["upgrade", "--system", "registry/os:v2"]
    assert plan["files"][0]["path"] == "/oem/90_operator.yaml"
    assert base64.b64decode(plan["files"][0]["content"]).decode().startswith("#cloud-config\n")
    mos = get(store, "ManagedOSImage", "up")
    assert get_condition(mos, "Ready")["reason"] == "UpgradeInProgress"  # type: ignore[index]
    for n in upgrading():
        agent_reports(store, n)
    run_until(mgr, lambda: len(upgrading()) == 3)
    for n in upgrading():
        agent_reports(store, n)
    run_until(mgr, lambda: condition_true(get(store, "ManagedOSImage", "up"), "Ready"))
    assert "3/3 upgraded" in get_condition(get(store, "ManagedOSImage", "up"), "Ready")["message"]  # type: ignore[index]


def os_image(name: str, image: str, pool: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ManagedOSImage",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"osImage": image, "concurrency": 5, "nodeSelector": {"matchLabels": {"pool": pool}}},
    }


def test_overlapping_os_images_newest_wins(store: SqlStore, mgr: Manager) -> None:
    """Two images select the same machines: the newer one owns them, the older one stops
    re-asserting its plan (no flip-flop) and takes them back when the newer one is deleted."""
    for i in range(2):
        store.create(inventory(f"m{i}", labels={"pool": "a"}))
    run_until(mgr, lambda: all(not gone(store, "Secret", n) for n in ("m0", "m1")))

    def images() -> set[str]:
        return {
            json.loads(secret_get(get(store, "Secret", n), "plan"))["instructions"][0]["args"][-1]
            for n in ("m0", "m1")
        }

    # the older one sorts last by name: ownership must follow creation time, not names
    store.create(os_image("z-old", "registry/os:v1", "a"))
    run_until(mgr, lambda: images() == {"registry/os:v1"})
    # creationTimestamp has second precision: the newer image must be created in a later second
    older = get(store, "ManagedOSImage", "z-old")["metadata"]["creationTimestamp"]
    wait_until(lambda: now_rfc3339() > older, 3, what="the clock to pass z-old's creation second")
    store.create(os_image("a-new", "registry/os:v2", "a"))
    run_until(mgr, lambda: images() == {"registry/os:v2"})
    for n in ("m0", "m1"):
        agent_reports(store, n)
    run_until(mgr, lambda: condition_true(get(store, "ManagedOSImage", "a-new"), "Ready"))
    run_until(
        mgr,
        lambda: (
            "2 taken over"
            in (get_condition(get(store, "ManagedOSImage", "z-old"), "Ready") or {}).get("message", "")
        ),
    )
    for _ in range(3):  # a resync of the older image must not write its plan back
        mgr.enqueue("ManagedOSImage", NS, "z-old")
        mgr.step()
    assert images() == {"registry/os:v2"}
    store.delete("ManagedOSImage", NS, "a-new")
    run_until(mgr, lambda: images() == {"registry/os:v1"})


# ---- SeedImage ------------------------------------------------------------------------------


def seed(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "SeedImage",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"registrationRef": {"name": "reg", "namespace": NS}, **spec},
    }


def test_seedimage_build_cache_retrigger_cleanup(store: SqlStore, mgr: Manager, tmp_path: Path) -> None:
    store.create(registration())
    store.create(seed("s1"))
    run_until(mgr, lambda: condition_true(get(store, "SeedImage", "s1"), "SeedImageReady"), timeout=20)
    si = get(store, "SeedImage", "s1")
    assert si["metadata"]["ownerReferences"][0]["kind"] == "MachineRegistration"
    url = si["status"]["downloadURL"]
    assert url.startswith("https://op.test:8443/elemental/seedimage/") and url.endswith("/reg.iso")
    assert si["status"]["checksumURL"] == url + ".sha256"
    digest, _, fname = si["metadata"]["annotations"]["elemental.cattle.io/seedimage-artifact"].partition("/")
    artifact = tmp_path / "state" / "seedimages" / digest / fname
    assert "elemental:" in artifact.read_text()  # our fake builder copies the registration file
    assert (tmp_path / "builds").read_text().count("run") == 1
    # identical inputs reuse the artifact
    store.create(seed("s2"))
    run_until(mgr, lambda: condition_true(get(store, "SeedImage", "s2"), "SeedImageReady"), timeout=20)
    assert (tmp_path / "builds").read_text().count("run") == 1
    # retriggerBuild resets state and flips back
    si = get(store, "SeedImage", "s1")
    si["spec"]["retriggerBuild"] = True
    store.update(si)
    run_until(
        mgr,
        lambda: (
            get(store, "SeedImage", "s1")["spec"]["retriggerBuild"] is False
            and condition_true(get(store, "SeedImage", "s1"), "SeedImageReady")
        ),
        timeout=20,
    )
    # cleanupAfterMinutes: pretend it became ready long ago
    si = get(store, "SeedImage", "s2")
    for c in si["status"]["conditions"]:
        c["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    store.update_status(si)
    run_until(
        mgr,
        lambda: (
            (get_condition(get(store, "SeedImage", "s2"), "SeedImageReady") or {}).get("reason")
            == "SeedImageBuildDeadline"
        ),
        timeout=20,
    )
    assert "downloadURL" not in get(store, "SeedImage", "s2")["status"]
    # deleting the registration cascades to its seed images
    store.delete("MachineRegistration", NS, "reg")
    run_until(mgr, lambda: gone(store, "SeedImage", "s1") and gone(store, "SeedImage", "s2"))


def test_seedimage_failed_build_is_not_restarted(
    store: SqlStore, ctx: OperatorContext, tmp_path: Path
) -> None:
    """A failed build stays Failed (no restart on its own status write) until retriggerBuild."""
    cmd = f"sh -c 'echo run >> {tmp_path}/fails; echo no xorriso here; exit 3'"
    mgr = Manager(ctx, all_controllers(ctx, tmp_path / "state", seedimage_command=cmd))
    store.create(registration())
    store.create(seed("bad"))

    def reason() -> str:
        return str((get_condition(get(store, "SeedImage", "bad"), "SeedImageReady") or {}).get("reason"))

    run_until(mgr, lambda: reason() == "SeedImageBuildFailure", timeout=20)
    si = get(store, "SeedImage", "bad")
    assert si["status"]["state"] == "Failed"
    assert "no xorriso here" in get_condition(si, "SeedImageReady")["message"]  # type: ignore[index]
    for _ in range(5):
        mgr.enqueue("SeedImage", NS, "bad")
        mgr.step()
    assert (tmp_path / "fails").read_text().count("run") == 1
    assert reason() == "SeedImageBuildFailure"
    si["spec"]["retriggerBuild"] = True
    store.update(si)
    run_until(mgr, lambda: (tmp_path / "fails").read_text().count("run") == 2, timeout=20)
    run_until(mgr, lambda: reason() == "SeedImageBuildFailure", timeout=20)


# ---- restarts ------------------------------------------------------------------------------


def test_restart_in_the_middle_of_a_reconcile(store: SqlStore, ctx: OperatorContext, tmp_path: Path) -> None:
    """Crash after the plan Secret was created but before status was written; a new manager converges."""
    store.create(inventory("m1"))
    first = Manager(ctx, all_controllers(ctx, tmp_path))
    real = store.update_status
    calls = {"n": 0}

    def crash(obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "MachineInventory":
            calls["n"] += 1
            raise SystemExit("killed mid-reconcile")
        return real(obj)

    store.update_status = crash  # type: ignore[method-assign]
    first.resync_all()
    with pytest.raises(SystemExit):
        first.step()
    store.update_status = real  # type: ignore[method-assign]
    assert calls["n"] == 1 and not gone(store, "Secret", "m1")
    assert not (get(store, "MachineInventory", "m1").get("status") or {}).get("plan")
    second = Manager(ctx, all_controllers(ctx, tmp_path))
    run_until(
        second,
        lambda: (
            ((get(store, "MachineInventory", "m1").get("status") or {}).get("plan") or {}).get("secretRef")
            is not None
        ),
    )
    assert len([s for s in store.list("Secret", NS) if s["metadata"]["name"] == "m1"]) == 1
    agent_reports(store, "m1")
    run_until(second, lambda: condition_true(get(store, "MachineInventory", "m1"), "Ready"))
