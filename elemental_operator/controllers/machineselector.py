"""MachineInventorySelector: pick one matching inventory, adopt it, write its bootstrap plan (§1.3, §6.2).

Elemental takes the bootstrap script from the selector's owner CAPI Machine. There is no CAPI
here, so the script comes from the selector itself:

* annotation ``elemental.cattle.io/bootstrap-secret: <name>`` — a Secret in the namespace whose
  ``value`` key holds the script (the CAPI bootstrap-data Secret layout), or
* annotation ``elemental.cattle.io/bootstrap-script`` — the script inline,
* else a no-op script: the plan still sets node name, hostname and inventory node labels.

MachineInventorySelectorTemplate has no controller (in Elemental, CAPI clones it into
selectors); it is stored and validated only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any

import yaml

from elemental_common.consts import (
    BOOTSTRAP_SCRIPT_ANNOTATION,
    BOOTSTRAP_SECRET_ANNOTATION,
    PLAN_TYPE_ANNOTATION,
)
from elemental_operator.controllers.base import (
    Controller,
    Key,
    condition_true,
    controller_owner,
    encode_plan,
    get_condition,
    is_deleting,
    owner_ref,
    parse_time,
    plan_checksum,
    plan_file,
    secret_get,
    secret_set,
    set_condition,
)
from elemental_operator.store.base import NotFound, Resource, WatchEvent
from elemental_operator.store.selector import matches, selector_error

ADOPTION_TIMEOUT = 5.0
NO_MATCH_RETRY = 60.0
ADDRESS_LABELS = (
    ("ExternalIP", "elemental.cattle.io/ExternalIP"),
    ("InternalIP", "elemental.cattle.io/InternalIP"),
    ("Hostname", "elemental.cattle.io/Hostname"),
)


def bootstrap_plan(script: bytes, inventory: Resource) -> bytes:
    name = inventory["metadata"]["name"]
    labels = inventory["metadata"].get("labels") or {}
    node_labels = yaml.safe_dump({"node-label+": [f"{k}={v}" for k, v in sorted(labels.items())]})
    return encode_plan(
        {
            "files": [
                plan_file("/var/lib/rancher/bootstrap.sh", script, "0700"),
                plan_file(
                    "/etc/rancher/rke2/config.yaml.d/99-elemental-name.yaml", f"node-name: {name}", "0600"
                ),
                plan_file(
                    "/etc/rancher/rke2/config.yaml.d/99-elemental-inventory-labels.yaml", node_labels, "0600"
                ),
                plan_file(
                    "/etc/rancher/k3s/config.yaml.d/99-elemental-name.yaml", f"node-name: {name}", "0600"
                ),
                plan_file(
                    "/etc/rancher/k3s/config.yaml.d/99-elemental-inventory-labels.yaml", node_labels, "0600"
                ),
                plan_file("/usr/local/etc/hostname", name, "0644"),
                plan_file("/run/elemental/persistent/etc/hostname", name, "0644"),
            ],
            "instructions": [
                {
                    "name": "configure hostname",
                    "command": "hostnamectl",
                    "args": ["set-hostname", "--transient", name],
                },
                {
                    "command": "bash",
                    "args": [
                        "-c",
                        "[ -f /var/lib/rancher/bootstrap_done ] || /var/lib/rancher/bootstrap.sh "
                        "&& touch /var/lib/rancher/bootstrap_done",
                    ],
                },
            ],
        }
    )


class MachineInventorySelectorController(Controller):
    kind = "MachineInventorySelector"
    watches = ("MachineInventory",)
    resync = 600.0

    def map_event(self, event: WatchEvent) -> Iterable[Key]:
        inv = event.object
        ns = inv["metadata"]["namespace"]
        owner = controller_owner(inv, self.kind)
        if owner:
            yield ns, owner["name"]
            return
        labels = inv["metadata"].get("labels") or {}
        for sel in self.store.list(self.kind, ns):
            selector = (sel.get("spec") or {}).get("selector")
            if selector_error(selector):
                continue  # its own reconcile reports it
            if not (sel.get("status") or {}).get("machineInventoryRef") and matches(selector, labels):
                yield ns, sel["metadata"]["name"]

    def reconcile(self, namespace: str, name: str) -> float | None:
        try:
            sel = self.store.get(self.kind, namespace, name)
        except NotFound:
            return None
        if is_deleting(sel):
            return None
        before = copy.deepcopy(sel.get("status"))
        status = sel.setdefault("status", {})
        ref = status.get("machineInventoryRef")
        if not ref:
            delay = self._adopt(sel)
            if sel.get("status") != before:
                self.store.update_status(sel)
            return delay
        try:
            inv = self.store.get("MachineInventory", namespace, ref["name"])
        except NotFound:
            status.pop("machineInventoryRef", None)
            status.pop("bootstrapPlanChecksum", None)
            status["ready"] = False
            set_condition(sel, "InventoryReady", "False", "FailedToAdoptInventory", "inventory is gone")
            self.store.update_status(sel)
            return 0.0
        if not condition_true(sel, "InventoryReady"):
            delay = self._validate(sel, inv)
            if sel.get("status") != before:
                self.store.update_status(sel)
            if delay is not None:
                return delay
        if not status.get("bootstrapPlanChecksum"):
            try:
                self._write_bootstrap(sel, inv)
            except NotFound:
                set_condition(
                    sel, "Ready", "False", "FailedToUpdatePlan", "inventory plan secret not found yet"
                )
                if sel.get("status") != before:
                    self.store.update_status(sel)
                return 2.0
        labels = inv["metadata"].get("labels") or {}
        status["addresses"] = [{"type": t, "address": labels[k]} for t, k in ADDRESS_LABELS if labels.get(k)]
        status["ready"] = True
        set_condition(sel, "Ready", "True", "SelectorReady", "")
        if sel.get("status") != before:
            self.store.update_status(sel)
        return None

    def _adopt(self, sel: Resource) -> float | None:
        ns = sel["metadata"]["namespace"]
        set_condition(sel, "Ready", "False", "WaitingForInventory", "waiting for a matching inventory")
        selector = (sel.get("spec") or {}).get("selector")
        error = selector_error(selector)
        if error:  # upstream's reason and wording; a spec change requeues it
            message = f"failed to convert spec to a label selector: {error}"
            set_condition(sel, "Ready", "False", "FailedToAdoptInventory", message)
            return None
        for inv in self.store.list("MachineInventory", ns, selector or None):
            if is_deleting(inv) or controller_owner(inv, self.kind):
                continue
            # At most one controller owner: existing references stay, demoted to plain owners.
            refs: list[dict[str, Any]] = [
                {**r, "controller": False} for r in inv["metadata"].get("ownerReferences") or []
            ]
            refs.append(owner_ref(sel))
            inv["metadata"]["ownerReferences"] = refs
            self.store.update(inv)  # Conflict → requeue by the manager
            sel["status"]["machineInventoryRef"] = {"name": inv["metadata"]["name"]}
            set_condition(sel, "InventoryReady", "Unknown", "WaitForInventoryCheck", "")
            return 0.5
        return NO_MATCH_RETRY

    def _validate(self, sel: Resource, inv: Resource) -> float | None:
        owner = controller_owner(inv, self.kind)
        owned = owner is not None and owner["uid"] == sel["metadata"]["uid"]
        if owned and condition_true(inv, "AdoptionReady"):
            set_condition(sel, "InventoryReady", "True", "SuccessfullyAdoptedInventory", "")
            return None
        cond = get_condition(sel, "InventoryReady") or {}
        started = parse_time(cond.get("lastTransitionTime")) or time.time()
        if not owned or time.time() - started > ADOPTION_TIMEOUT:
            sel["status"].pop("machineInventoryRef", None)
            set_condition(sel, "InventoryReady", "False", "FailedToAdoptInventory", "adoption not confirmed")
            return 0.0
        return 1.0

    def _bootstrap_script(self, sel: Resource) -> bytes:
        annotations = sel["metadata"].get("annotations") or {}
        if annotations.get(BOOTSTRAP_SECRET_ANNOTATION):
            secret = self.store.get(
                "Secret", sel["metadata"]["namespace"], annotations[BOOTSTRAP_SECRET_ANNOTATION]
            )
            return secret_get(secret, "value").encode()
        if annotations.get(BOOTSTRAP_SCRIPT_ANNOTATION):
            return str(annotations[BOOTSTRAP_SCRIPT_ANNOTATION]).encode()
        return b"#!/bin/sh\nexit 0\n"

    def _write_bootstrap(self, sel: Resource, inv: Resource) -> None:
        meta = inv["metadata"]
        secret = self.store.get("Secret", meta["namespace"], meta["name"])
        plan = bootstrap_plan(self._bootstrap_script(sel), inv)
        secret_set(secret, "plan", plan)
        secret["metadata"].setdefault("annotations", {})[PLAN_TYPE_ANNOTATION] = "bootstrap"
        self.store.update(secret)
        sel["status"]["bootstrapPlanChecksum"] = plan_checksum(plan)
        set_condition(sel, "Ready", "False", "SuccessfullyUpdatedPlan", "")
