"""ManagedOSImage: roll an OS upgrade plan out to the selected inventories (brief §1.4, §5.1).

Elemental goes through Fleet and system-upgrade-controller. Here the upgrade is a plan in
each machine's plan Secret — the same channel bootstrap and reset plans use — whose
instruction runs ``elemental upgrade --system <image>`` and then schedules a reboot. At most
``concurrency`` machines have an unfinished upgrade plan at any time; progress is shown in
the Ready condition (``UpgradeInProgress`` / ``UpgradeComplete`` / ``UpgradeFailed``).

Overlapping selectors: a machine matched by several ManagedOSImages belongs to the newest one
(creationTimestamp, then name). Elemental leaves this undefined (each Fleet bundle re-asserts its
own plan, so the machine flips between versions); here the older images leave such machines
alone and say how many were taken over, and get them back when the newer image is deleted.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import yaml

from elemental_common.consts import MOS_ANNOTATION, PLAN_TYPE_ANNOTATION, UPGRADE_CHECKSUM_ANNOTATION
from elemental_operator.controllers.base import (
    Controller,
    Key,
    encode_plan,
    is_deleting,
    plan_checksum,
    plan_file,
    secret_get,
    secret_set,
    set_condition,
)
from elemental_operator.controllers.managedosversionchannel import VERSION_NAME_LABEL
from elemental_operator.store.base import NotFound, Resource, WatchEvent
from elemental_operator.store.selector import selector_error


def marshal_cloud_config(cloud_config: dict[str, Any] | None) -> str:
    """Elemental's MarshalCloudConfig: yip if it has ``stages``, else cloud-init with a header."""
    if not cloud_config:
        return ""
    body = yaml.safe_dump(cloud_config, sort_keys=False)
    return body if "stages" in cloud_config else "#cloud-config\n" + body


def upgrade_plan(image: str, cloud_config: dict[str, Any] | None, env: list[str]) -> bytes:
    files = []
    rendered = marshal_cloud_config(cloud_config)
    if rendered:
        files.append(plan_file("/oem/90_operator.yaml", rendered, "0600"))
    instruction: dict[str, Any] = {
        "name": "os upgrade",
        "command": "elemental",
        "args": ["upgrade", "--system", image],
    }
    if env:
        instruction["env"] = env
    plan: dict[str, Any] = {
        "instructions": [
            instruction,
            {"name": "schedule reboot", "command": "shutdown", "args": ["-r", "+1"]},
        ]
    }
    if files:
        plan["files"] = files
    return encode_plan(plan)


class ManagedOSImageController(Controller):
    kind = "ManagedOSImage"
    watches = ("Secret", "MachineInventory", "ManagedOSVersion", "ManagedOSImage")
    resync = 300.0

    def map_event(self, event: WatchEvent) -> Iterable[Key]:
        obj = event.object
        ns = obj["metadata"].get("namespace", "")
        if obj["kind"] == "Secret":
            ref = (obj["metadata"].get("annotations") or {}).get(MOS_ANNOTATION)
            if ref:
                yield ns, ref
        elif obj["kind"] == "MachineInventory" and event.type == "ADDED":
            for mos in self.store.list(self.kind, ns):
                yield ns, mos["metadata"]["name"]
        elif obj["kind"] == self.kind:
            # a new or deleted image changes which machines the others own
            if event.type in ("ADDED", "DELETED") or is_deleting(obj):
                for mos in self.store.list(self.kind, ns):
                    if mos["metadata"]["name"] != obj["metadata"]["name"]:
                        yield ns, mos["metadata"]["name"]
        elif obj["kind"] == "ManagedOSVersion":
            for mos in self.store.list(
                self.kind, ns, {"matchLabels": {VERSION_NAME_LABEL: obj["metadata"]["name"]}}
            ):
                yield ns, mos["metadata"]["name"]

    def reconcile(self, namespace: str, name: str) -> float | None:
        try:
            mos = self.store.get(self.kind, namespace, name)
        except NotFound:
            return None
        if is_deleting(mos):
            return None
        spec = mos.get("spec") or {}
        status_before = copy.deepcopy(mos.get("status"))
        image, env = spec.get("osImage") or "", []
        version_name = spec.get("managedOSVersionName") or ""
        container = spec.get("upgradeContainer") or {}
        if version_name:
            labels = mos["metadata"].setdefault("labels", {})
            if labels.get(VERSION_NAME_LABEL) != version_name:
                labels[VERSION_NAME_LABEL] = version_name
                mos = self.store.update(mos)
            try:
                version = self.store.get("ManagedOSVersion", namespace, version_name)
            except NotFound:
                set_condition(
                    mos, "Ready", "False", "ManagedOSVersionNotFound", f"version {version_name} not found"
                )
                self._save(mos, status_before)
                return 30.0
            vspec = version.get("spec") or {}
            vmeta = vspec.get("metadata") or {}
            image = image or vmeta.get("upgradeImage") or ""
            container = container or vspec.get("upgradeContainer") or {}
            env = [f"METADATA_{str(k).upper()}={v}" for k, v in sorted(vmeta.items())]
        # Upstream's CRD leaves these to the controller: version metadata is schemaless and a
        # selector's operator a plain string.
        problem = "" if image else "neither osImage nor a version image set"
        if not isinstance(image, str):
            problem = f"metadata.upgradeImage of version {version_name} is not a string"
        if not problem and selector_error(spec.get("nodeSelector")):
            problem = f"nodeSelector: {selector_error(spec.get('nodeSelector'))}"
        if problem:
            set_condition(mos, "Ready", "False", "InvalidConfiguration", problem)
            self._save(mos, status_before)
            return None
        taken = {e.split("=", 1)[0] for e in env}
        env += [
            f"{e['name']}={e.get('value', '')}"
            for e in container.get("envs") or []
            if e.get("name") and e["name"] not in taken
        ]
        env.sort()
        plan = upgrade_plan(image, spec.get("cloudConfig"), env)
        checksum = plan_checksum(plan)
        concurrency = max(1, int(spec.get("concurrency") or 1))

        done = failed = in_progress = eligible = 0
        pending: list[Resource] = []
        claimed = self._claimed_by_newer(mos)
        targets = [
            i
            for i in self.store.list("MachineInventory", namespace, spec.get("nodeSelector") or None)
            if not is_deleting(i) and i["metadata"]["name"] not in claimed
        ]
        for inv in targets:
            try:
                secret = self.store.get("Secret", namespace, inv["metadata"]["name"])
            except NotFound:
                continue  # not registered far enough to take plans yet
            annotations = secret["metadata"].get("annotations") or {}
            if annotations.get(PLAN_TYPE_ANNOTATION) == "reset":
                continue
            eligible += 1
            if annotations.get(UPGRADE_CHECKSUM_ANNOTATION) != checksum:
                pending.append(secret)
            elif secret_get(secret, "applied-checksum") == checksum:
                done += 1
            elif secret_get(secret, "failed-checksum") == checksum:
                failed += 1
            else:
                in_progress += 1
        for secret in pending:
            if in_progress >= concurrency:
                break
            secret_set(secret, "plan", plan)
            annotations = secret["metadata"].setdefault("annotations", {})
            annotations.update(
                {PLAN_TYPE_ANNOTATION: "upgrade", MOS_ANNOTATION: name, UPGRADE_CHECKSUM_ANNOTATION: checksum}
            )
            self.store.update(secret)
            in_progress += 1
        total = eligible
        msg = f"{image}: {done}/{total} upgraded, {in_progress} in progress, {failed} failed"
        if claimed:
            newer = ", ".join(sorted(set(claimed.values())))
            msg += f", {len(claimed)} taken over by newer ManagedOSImages ({newer})"
        if total and done == total:
            set_condition(mos, "Ready", "True", "UpgradeComplete", msg)
        elif failed and not in_progress:
            set_condition(mos, "Ready", "False", "UpgradeFailed", msg)
        elif total:
            set_condition(mos, "Ready", "False", "UpgradeInProgress", msg)
        else:
            set_condition(mos, "Ready", "True", "NoMatchingMachines", msg)
        self._save(mos, status_before)
        return 15.0 if in_progress else None

    def _claimed_by_newer(self, mos: Resource) -> dict[str, str]:
        """Inventories (name → image) that a newer, live ManagedOSImage also selects."""
        meta = mos["metadata"]
        mine = (meta.get("creationTimestamp") or "", meta["name"])
        claimed: dict[str, str] = {}
        for other in self.store.list(self.kind, meta.get("namespace", "")):
            ometa = other["metadata"]
            if is_deleting(other) or (ometa.get("creationTimestamp") or "", ometa["name"]) <= mine:
                continue
            selector = (other.get("spec") or {}).get("nodeSelector") or None
            if selector_error(selector):
                continue  # selects nothing until fixed (its own condition says why)
            for inv in self.store.list("MachineInventory", meta.get("namespace", ""), selector):
                claimed.setdefault(inv["metadata"]["name"], ometa["name"])
        return claimed

    def _save(self, mos: Resource, before: Any) -> None:
        if mos.get("status") != before:
            self.store.update_status(mos)
