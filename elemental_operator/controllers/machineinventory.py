"""MachineInventory: plan Secret, plan state, adoption handshake, reset on delete (brief §1.2, §6.3)."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable
from typing import Any

import yaml

from elemental_common.consts import (
    MACHINEINVENTORY_FINALIZER,
    PLAN_SECRET_TYPE,
    PLAN_TYPE_ANNOTATION,
    RECOVERY_ENTRY_ID,
    RESET_UNIT,
    RESETTABLE_ANNOTATION,
    UNMANAGED_RESET_MARKER,
)
from elemental_operator.context import OperatorContext
from elemental_operator.controllers.base import (
    Controller,
    Key,
    add_finalizer,
    controller_owner,
    encode_plan,
    get_condition,
    has_finalizer,
    is_deleting,
    owner_ref,
    parse_time,
    plan_checksum,
    plan_file,
    remove_finalizer,
    secret_get,
    secret_set,
    set_condition,
)
from elemental_operator.store.base import AlreadyExists, NotFound, Resource, WatchEvent

UNMANAGED_NAME = "os.unmanaged"
ADOPTION_TIMEOUT = 5.0
LOCAL_RESET_PLAN_PATH = "/oem/reset-cloud-config.yaml"
RECOVERY_ENTRY = f"{RECOVERY_ENTRY_ID}.conf"


# InstallProgress of a machine that stopped reporting (a power cut, a crash) would show its last
# "50 %" for good: unchanged for this long, the controller marks it Stale; the next report (the
# server's progress endpoint rewrites reason and message) clears it. The longest silent install
# step is the image unpack (about a minute under TCG).
STALE_AFTER_ENV = "ELEMENTAL_OPERATOR_PROGRESS_STALE_AFTER"
STALE_AFTER_DEFAULT = 600.0
STALE_REASON = "Stale"


def stale_after() -> float:
    try:
        return max(1.0, float(os.environ.get(STALE_AFTER_ENV, "") or STALE_AFTER_DEFAULT))
    except ValueError:
        return STALE_AFTER_DEFAULT


def _progress_condition(inv: Resource) -> dict[str, Any] | None:
    """The InstallProgress condition itself (get_condition returns a copy)."""
    for cond in (inv.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "InstallProgress":
            result: dict[str, Any] = cond
            return result
    return None


# (reason, message) of an unfinished InstallProgress and when this process first saw it
ProgressSeen = dict[tuple[str, str], tuple[tuple[str, str], float]]


def mark_stale_progress(inv: Resource, seen: ProgressSeen, now: float | None = None) -> float | None:
    """Mark an unfinished InstallProgress Stale once it has not changed for stale_after() seconds
    (status stays Unknown; the last message is kept and says since when); returns the delay until
    it would turn stale, or None when there is nothing to watch.

    metav1.Condition has no update time (lastTransitionTime moves only with the status), so the
    controller remembers when it first saw each report: every report enqueues the inventory. After
    an operator restart a report counts from when it is first seen again (never marked early)."""
    now = time.time() if now is None else now
    key = (inv["metadata"].get("namespace", ""), inv["metadata"]["name"])
    cond = _progress_condition(inv)
    if cond is None or cond.get("status") != "Unknown" or cond.get("reason") == STALE_REASON:
        seen.pop(key, None)
        return None
    report = (str(cond.get("reason", "")), str(cond.get("message", "")))
    bound = stale_after()
    first = seen.get(key)
    if first is None or first[0] != report:
        seen[key] = (report, now)
        return bound + 1.0
    age = now - first[1]
    if age < bound:
        return bound - age + 1.0
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first[1]))
    cond["reason"] = STALE_REASON
    cond["message"] = f"{report[1]} (stale: no progress since {since}, over {bound:g}s)"
    seen.pop(key, None)
    return None


def is_unmanaged(inventory: Resource) -> bool:
    """The os.unmanaged annotation under whatever labelPrefix the registration used.

    Elemental only looks at ``elemental.cattle.io/os.unmanaged`` (issue #1023), so with
    ``labelPrefix: "-"`` (key ``os.unmanaged``) or a custom prefix it sends the wrong plan.
    """
    for key, value in (inventory["metadata"].get("annotations") or {}).items():
        if key.rpartition("/")[2] == UNMANAGED_NAME and value == "true":
            return True
    return False


def reset_plan(inventory: Resource) -> bytes:
    if is_unmanaged(inventory):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        return encode_plan({"files": [plan_file(UNMANAGED_RESET_MARKER, stamp, "0600")]})
    cloud_config = {
        "name": "Elemental Reset",
        "stages": {
            "network.after": [
                {
                    "if": "[ -f /run/cos/recovery_mode ] || [ -f /run/elemental/recovery_mode ]",
                    "name": "Runs elemental reset",
                    "commands": [f"systemctl start {RESET_UNIT}"],
                }
            ]
        },
    }
    instructions: list[dict[str, Any]] = []
    if ((inventory.get("spec") or {}).get("network") or {}).get("configurator", "none") != "none":
        instructions.append(
            {
                "name": "restore first boot config",
                "command": "elemental-register",
                "args": ["--debug", "--reset-network"],
            }
        )
    # Our OS boots with systemd-boot: a one-shot boot of the recovery entry is what our agent runs.
    # (Elemental's plan says `grub2-editenv /oem/grubenv set next_entry=recovery`; our agent still
    # understands that form, for an OS of ours managed by Elemental's own operator.)
    instructions.append(
        {
            "name": "configure next boot to recovery mode",
            "command": "bootctl",
            "args": ["set-oneshot", RECOVERY_ENTRY],
        }
    )
    # One minute of grace so the agent can report applied-checksum before the reboot.
    instructions.append({"name": "schedule reboot", "command": "shutdown", "args": ["-r", "+1"]})
    return encode_plan(
        {
            "files": [
                plan_file(LOCAL_RESET_PLAN_PATH, yaml.safe_dump(cloud_config, sort_keys=False), "0600")
            ],
            "instructions": instructions,
        }
    )


class MachineInventoryController(Controller):
    kind = "MachineInventory"
    watches = ("Secret", "MachineInventorySelector")
    resync = 600.0

    def map_event(self, event: WatchEvent) -> Iterable[Key]:
        obj = event.object
        meta = obj["metadata"]
        if obj["kind"] == "Secret":
            owner = controller_owner(obj, "MachineInventory")
            if owner:
                yield meta["namespace"], owner["name"]
        elif obj["kind"] == "MachineInventorySelector":
            ref = (obj.get("status") or {}).get("machineInventoryRef") or {}
            if ref.get("name"):
                yield meta["namespace"], ref["name"]

    def __init__(self, ctx: OperatorContext) -> None:
        super().__init__(ctx)
        self._progress_seen: ProgressSeen = {}

    def reconcile(self, namespace: str, name: str) -> float | None:
        try:
            inv = self.store.get(self.kind, namespace, name)
        except NotFound:
            self._progress_seen.pop((namespace, name), None)
            return None
        if is_deleting(inv):
            return self._reconcile_delete(inv)
        if not has_finalizer(inv, MACHINEINVENTORY_FINALIZER):
            add_finalizer(inv, MACHINEINVENTORY_FINALIZER)
            inv = self.store.update(inv)

        before = copy.deepcopy(inv.get("status"))
        ready = get_condition(inv, "Ready")
        if ready is None or ready.get("reason") == "PlanCreationFailure":
            self._create_plan_secret(inv)
        requeue = self._network(inv)
        stale_in = mark_stale_progress(inv, self._progress_seen)
        self._plan_status(inv)
        adoption = self._adoption(inv)
        if adoption == "dropped":
            return 0.0  # ownerReferences changed; re-read the object
        if inv.get("status") != before:
            self.store.update_status(inv)
        return min(
            (
                d
                for d in (requeue, stale_in, adoption if isinstance(adoption, float) else None)
                if d is not None
            ),
            default=None,
        )

    # -- steps --

    def _create_plan_secret(self, inv: Resource) -> None:
        meta = inv["metadata"]
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": PLAN_SECRET_TYPE,
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "annotations": {PLAN_TYPE_ANNOTATION: "empty"},
                "labels": {"elemental.cattle.io/managed": "true"},
                "ownerReferences": [owner_ref(inv)],
            },
        }
        secret_set(secret, "plan", "{}")
        try:
            self.store.create(secret)
        except AlreadyExists:
            pass
        except Exception as exc:
            set_condition(inv, "Ready", "False", "PlanCreationFailure", f"failed creating plan secret: {exc}")
            return
        plan = inv.setdefault("status", {}).setdefault("plan", {})
        plan["secretRef"] = {"namespace": meta["namespace"], "name": meta["name"]}
        set_condition(inv, "Ready", "False", "WaitingForPlan", "waiting for plan to be applied")

    def _network(self, inv: Resource) -> float | None:
        spec = inv.get("spec") or {}
        pools = spec.get("ipAddressPools") or {}
        addresses = (spec.get("network") or {}).get("ipAddresses") or {}
        missing = [p for p in pools if p not in addresses]
        if not missing:
            set_condition(inv, "NetworkConfigReady", "True", "ReconcilingNetworkConfig", "")
            return None
        # No CAPI IPAM provider here: addresses must be filled into spec.network.ipAddresses by hand.
        set_condition(
            inv,
            "NetworkConfigReady",
            "False",
            "WaitingForIPAddress",
            f"waiting for addresses of pools {', '.join(sorted(missing))} in spec.network.ipAddresses",
        )
        return 10.0

    def _plan_status(self, inv: Resource) -> None:
        meta = inv["metadata"]
        try:
            secret = self.store.get("Secret", meta["namespace"], meta["name"])
        except NotFound:
            return
        applied = secret_get(secret, "applied-checksum")
        failed = secret_get(secret, "failed-checksum")
        plan = inv.setdefault("status", {}).setdefault("plan", {})
        plan.setdefault("secretRef", {"namespace": meta["namespace"], "name": meta["name"]})
        if applied:
            plan.update(state="Applied", checksum=applied)
            set_condition(inv, "Ready", "True", "PlanSuccessfullyApplied", "plan successfully applied")
        elif failed:
            plan.update(state="Failed", checksum=failed)
            set_condition(inv, "Ready", "False", "PlanFailure", "failed to apply plan")
        else:
            set_condition(inv, "Ready", "False", "WaitingForPlan", "waiting for plan to be applied")

    def _adoption(self, inv: Resource) -> float | str | None:
        meta = inv["metadata"]
        owner = controller_owner(inv, "MachineInventorySelector")
        if owner is None:
            set_condition(inv, "AdoptionReady", "False", "WaitingToBeAdopted", "waiting to be adopted")
            return None
        try:
            selector = self.store.get("MachineInventorySelector", meta["namespace"], owner["name"])
        except NotFound:
            selector = None
        ref = ((selector or {}).get("status") or {}).get("machineInventoryRef") or {}
        if (
            selector is not None
            and selector["metadata"]["uid"] == owner["uid"]
            and ref.get("name") == meta["name"]
        ):
            set_condition(inv, "AdoptionReady", "True", "SuccessfullyAdopted", "")
            return None
        cond = get_condition(inv, "AdoptionReady")
        if cond is None or cond.get("reason") != "ValidatingAdoption":
            set_condition(inv, "AdoptionReady", "Unknown", "ValidatingAdoption", "validating adoption")
            return 1.0
        started = parse_time(cond.get("lastTransitionTime")) or time.time()
        if time.time() - started < ADOPTION_TIMEOUT:
            return 1.0
        # The selector never confirmed: drop its ownerReference so another selector can adopt.
        inv["metadata"]["ownerReferences"] = [
            r for r in meta.get("ownerReferences") or [] if r.get("uid") != owner["uid"]
        ]
        status = inv.get("status")
        inv = self.store.update(inv)
        inv["status"] = status
        set_condition(
            inv, "AdoptionReady", "False", "AdoptionFailure", "selector did not confirm adoption in time"
        )
        self.store.update_status(inv)
        return "dropped"

    def _reconcile_delete(self, inv: Resource) -> float | None:
        if not has_finalizer(inv, MACHINEINVENTORY_FINALIZER):
            return None
        meta = inv["metadata"]
        annotations = meta.get("annotations") or {}
        if annotations.get(RESETTABLE_ANNOTATION) != "true":
            remove_finalizer(inv, MACHINEINVENTORY_FINALIZER)
            self.store.update(inv)
            return None
        try:
            secret = self.store.get("Secret", meta["namespace"], meta["name"])
        except NotFound:
            remove_finalizer(inv, MACHINEINVENTORY_FINALIZER)
            self.store.update(inv)
            return None
        owner = controller_owner(secret, "MachineInventory")
        if owner is None or owner["uid"] != meta["uid"]:
            # not our plan record: nothing we may reset through it
            remove_finalizer(inv, MACHINEINVENTORY_FINALIZER)
            self.store.update(inv)
            return None
        if (secret["metadata"].get("annotations") or {}).get(PLAN_TYPE_ANNOTATION) != "reset":
            plan = reset_plan(inv)
            checksum = plan_checksum(plan)
            secret_set(secret, "plan", plan)
            secret_set(secret, "applied-checksum", "")
            secret_set(secret, "failed-checksum", "")
            secret["metadata"]["annotations"] = {PLAN_TYPE_ANNOTATION: "reset"}
            self.store.update(secret)
            inv.setdefault("status", {})["plan"] = {
                "checksum": checksum,
                "secretRef": {"namespace": meta["namespace"], "name": meta["name"]},
            }
            set_condition(inv, "Ready", "False", "WaitingForPlan", "waiting for reset plan to be applied")
            self.store.update_status(inv)
            return 5.0
        if secret_get(secret, "applied-checksum"):
            remove_finalizer(inv, MACHINEINVENTORY_FINALIZER)
            self.store.update(inv)  # the store's GC removes the plan Secret with it
            return None
        return 5.0
