"""Our generated CRDs against Elemental's own (tests/data/upstream-crds): every difference is allow-listed.

The comparison walks both openAPIV3Schema property trees and every other part of the CRD spec
(names, scope, versions, subresources, printer columns). Descriptions are ours to write and are not
compared. Every difference found must be named, with its reason, in ``allow-list.yaml``; an entry
that no longer matches a difference fails too, so the list never outlives what it excuses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from elemental_operator.api import ValidationError, validate
from elemental_operator.api.crds import all_crds

UPSTREAM = Path(__file__).parent / "data" / "upstream-crds"
IGNORED = {"description"}


def upstream_crds() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(UPSTREAM.glob("elemental.cattle.io_*.yaml")):
        doc = yaml.safe_load(path.read_text())
        out[doc["spec"]["names"]["kind"]] = doc
    return out


def ours() -> dict[str, dict[str, Any]]:
    return {c["spec"]["names"]["kind"]: c for c in all_crds()}


def schema_diff(a: Any, b: Any, path: str) -> Iterator[str]:
    """Differences between two schema nodes, as ``path: what`` lines (``a`` ours, ``b`` upstream's)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        if a != b:
            yield f"{path}: ours {a!r}, upstream {b!r}"
        return
    for key in sorted((set(a) | set(b)) - IGNORED):
        if key == "properties":
            pa, pb = a.get(key) or {}, b.get(key) or {}
            for name in sorted(set(pa) | set(pb)):
                sub = f"{path}.{name}"
                if name not in pb:
                    yield f"{sub}: only ours"
                elif name not in pa:
                    yield f"{sub}: only upstream's"
                else:
                    yield from schema_diff(pa[name], pb[name], sub)
        elif (
            key in ("items", "additionalProperties")
            and isinstance(a.get(key), dict)
            and isinstance(b.get(key), dict)
        ):
            yield from schema_diff(a[key], b[key], path + ("[]" if key == "items" else "{}"))
        elif key == "required":
            if sorted(a.get(key) or []) != sorted(b.get(key) or []):
                yield f"{path}: required ours {sorted(a.get(key) or [])}, upstream {sorted(b.get(key) or [])}"
        elif key not in b:
            yield f"{path}: {key} only ours ({a[key]!r})"
        elif key not in a:
            yield f"{path}: {key} only upstream's ({b[key]!r})"
        elif a[key] != b[key]:
            yield f"{path}: {key} ours {a[key]!r}, upstream {b[key]!r}"


def crd_diff(kind: str, a: dict[str, Any], b: dict[str, Any]) -> Iterator[str]:
    sa, sb = a["spec"], b["spec"]
    for key in ("group", "scope"):
        if sa.get(key) != sb.get(key):
            yield f"{kind} spec.{key}: ours {sa.get(key)!r}, upstream {sb.get(key)!r}"
    for key in sorted(set(sa["names"]) | set(sb["names"])):
        if key not in sb["names"]:
            yield f"{kind} names.{key}: only ours {sa['names'][key]!r}"
        elif sa["names"].get(key) != sb["names"].get(key):
            yield f"{kind} names.{key}: ours {sa['names'].get(key)!r}, upstream {sb['names'].get(key)!r}"
    va = {v["name"]: v for v in sa["versions"]}
    vb = {v["name"]: v for v in sb["versions"]}
    if set(va) != set(vb):
        yield f"{kind} versions: ours {sorted(va)}, upstream {sorted(vb)}"
    for name in sorted(set(va) & set(vb)):
        x, y = va[name], vb[name]
        for key in sorted((set(x) | set(y)) - {"schema", "name"}):
            if key not in y:
                yield f"{kind} {name}.{key}: only ours"
            elif x.get(key) != y.get(key):
                yield f"{kind} {name}.{key}: ours {x.get(key)!r}, upstream {y.get(key)!r}"
        yield from schema_diff(
            x["schema"]["openAPIV3Schema"], y["schema"]["openAPIV3Schema"], f"{kind} {name} <root>"
        )


def differences() -> list[str]:
    up, our = upstream_crds(), ours()
    out = [f"{k}: only ours" for k in sorted(set(our) - set(up))]
    out += [f"{k}: only upstream's" for k in sorted(set(up) - set(our))]
    for kind in sorted(set(up) & set(our)):
        out.extend(crd_diff(kind, our[kind], up[kind]))
    return out


def allow_list() -> list[dict[str, str]]:
    entries = yaml.safe_load((UPSTREAM / "allow-list.yaml").read_text())
    assert isinstance(entries, list)
    for e in entries:
        assert set(e) == {"difference", "reason"} and e["reason"].strip(), e
    return entries


def test_upstream_copy_is_complete() -> None:
    assert set(upstream_crds()) == {
        "MachineInventory",
        "MachineInventorySelector",
        "MachineInventorySelectorTemplate",
        "MachineRegistration",
        "ManagedOSImage",
        "ManagedOSVersion",
        "ManagedOSVersionChannel",
        "Metadata",
        "SeedImage",
    }


def test_generated_crds_match_upstream_but_for_the_allow_list() -> None:
    found = differences()
    allowed = {e["difference"] for e in allow_list()}
    unexplained = [d for d in found if d not in allowed]
    stale = sorted(allowed - set(found))
    assert not unexplained, "differences from upstream's CRDs not in allow-list.yaml:\n" + "\n".join(
        unexplained
    )
    assert not stale, "allow-list.yaml entries that are no longer differences:\n" + "\n".join(stale)


def test_the_comparison_sees_a_difference() -> None:
    """The walk is not blind: a changed type, a dropped field and a new enum are all reported."""
    up = upstream_crds()["SeedImage"]
    schema = up["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    import copy

    changed = copy.deepcopy(schema)
    changed["properties"]["spec"]["properties"]["retriggerBuild"]["type"] = "string"
    del changed["properties"]["spec"]["properties"]["baseImage"]
    changed["properties"]["status"]["properties"]["downloadURL"]["enum"] = ["x"]
    got = list(schema_diff(changed, schema, "S"))
    assert got == [
        "S.spec.baseImage: only upstream's",
        "S.spec.retriggerBuild: type ours 'string', upstream 'boolean'",
        "S.status.downloadURL: enum only ours (['x'])",
    ]


# --- what upstream's schemas accept, ours accept (structural validation and strict field validation) ----


def _ready_image(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "ManagedOSImage",
        "metadata": {"name": "up", "namespace": "fleet-default"},
        "spec": spec,
    }


@pytest.mark.parametrize(
    "spec,error",
    [
        ({"upgradeContainer": {"imagee": "x"}}, r"^spec\.upgradeContainer\.imagee: unknown field"),
        (
            {"clusterTargets": [{"clusterNmae": "a"}]},
            r"^spec\.clusterTargets\[0\]\.clusterNmae: unknown field",
        ),
        (
            {"prepare": {"envs": [{"name": "A", "valu": "1"}]}},
            r"^spec\.prepare\.envs\[0\]\.valu: unknown field",
        ),
        (
            {"upgradeContainer": {"securityContext": {"privilegd": True}}},
            r"securityContext\.privilegd: unknown",
        ),
        (
            {"clusterRolloutStrategy": {"maxUnavailible": 1}},
            r"clusterRolloutStrategy\.maxUnavailible: unknown",
        ),
        (
            {"upgradeContainer": {"envFrom": [{"secretRef": {"nmae": "s"}}]}},
            r"secretRef\.nmae: unknown field",
        ),
    ],
)
def test_typos_in_typed_parts_are_refused_as_strict_field_validation_does(
    spec: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValidationError, match=error):
        validate(_ready_image(spec))


def test_values_upstream_accepts_are_accepted() -> None:
    img = validate(
        _ready_image(
            {
                "osImage": "registry/os:1",
                "nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
                "clusterTargets": [{"clusterName": "c", "helm": {"values": {"a": {"b": 1}}}}],
                "clusterRolloutStrategy": {
                    "maxUnavailable": "10%",
                    "partitions": [{"name": "p", "maxUnavailable": 1}],
                },
                "upgradeContainer": {
                    "image": "x",
                    "envs": [{"name": "A", "valueFrom": {"secretKeyRef": {"key": "k"}}}],
                    "envFrom": [{"configMapRef": {}}],
                    "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
                },
            }
        )
    )["spec"]
    assert img["drain"] == {
        "force": True,
        "skipWaitForDeleteTimeout": 60,
        "ignoreDaemonSets": True,
        "deleteLocalData": True,
    }
    assert img["upgradeContainer"]["envFrom"] == [{"configMapRef": {"name": ""}}]  # name's default ""
    assert img["upgradeContainer"]["envs"][0]["valueFrom"]["secretKeyRef"] == {"key": "k", "name": ""}
    assert img["clusterTargets"][0]["helm"]["values"] == {"a": {"b": 1}}
    reg = validate(
        {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "MachineRegistration",
            "metadata": {"name": "r", "namespace": "fleet-default"},
            "spec": {"config": {"elemental": {"install": {"snapshotter": {"type": "overlay"}}}}},
        }
    )
    assert reg["spec"]["config"]["elemental"]["install"]["snapshotter"] == {"type": "overlay", "maxSnaps": 2}
    ver = validate(
        {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "ManagedOSVersion",
            "metadata": {"name": "v", "namespace": "fleet-default"},
            "spec": {"metadata": {"upgradeImage": 5, "anything": [1]}},
        }
    )
    assert ver["spec"]["metadata"] == {"upgradeImage": 5, "anything": [1]}  # schemaless upstream
    seed = validate(
        {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "SeedImage",
            "metadata": {"name": "s", "namespace": "fleet-default"},
            "spec": {"registrationRef": {"name": "r"}},
        }
    )["spec"]
    assert seed["size"] == 6442450944 and seed["type"] == "iso"
    tpl = validate(
        {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "MachineInventorySelectorTemplate",
            "metadata": {"name": "t", "namespace": "fleet-default"},
            "spec": {
                "template": {
                    "apiVersion": "elemental.cattle.io/v1beta1",
                    "kind": "MachineInventorySelector",
                    "metadata": {},
                    "spec": {"selector": {"matchLabels": {"a": "b"}}},
                    "status": {"ready": False},
                }
            },
        }
    )
    assert tpl["spec"]["template"]["kind"] == "MachineInventorySelector"
    # Upstream's nested metadata is a bare object: Kubernetes keeps nothing under it (strict: refused).
    tpl["spec"]["template"]["metadata"] = {"labels": {"a": "b"}}
    with pytest.raises(ValidationError, match=r"^spec\.template\.metadata\.labels: unknown field"):
        validate(tpl)


# --- what upstream's CRDs leave to the controllers is reported in a condition, not refused -------------


def test_unknown_selector_operator_is_a_condition_not_a_refusal(tmp_path: Path) -> None:
    from waiting import wait_until

    from elemental_operator.context import OperatorContext
    from elemental_operator.controllers import Manager, all_controllers
    from elemental_operator.store.sql import open_store

    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        ctx = OperatorContext(store=store, public_url="https://op.test:8443", secret_key=b"k" * 32)
        mgr = Manager(ctx, all_controllers(ctx, tmp_path / "state", seedimage_command="true"))
        meta = {"namespace": "fleet-default"}
        bad = {"matchExpressions": [{"key": "site", "operator": "Like", "values": ["lab"]}]}
        store.create(
            {
                "apiVersion": "elemental.cattle.io/v1beta1",
                "kind": "MachineInventory",
                "metadata": {"name": "m1", "labels": {"site": "lab"}, **meta},
            }
        )
        store.create(
            {
                "apiVersion": "elemental.cattle.io/v1beta1",
                "kind": "MachineInventorySelector",
                "metadata": {"name": "sel", **meta},
                "spec": {"selector": bad},
            }
        )
        store.create(_ready_image({"osImage": "registry/os:2", "nodeSelector": bad}))

        def ready(kind: str, name: str) -> dict[str, Any]:
            obj = store.get(kind, "fleet-default", name)
            return next(
                (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {}
            )

        def reported() -> bool:
            mgr.step()
            return bool(
                ready("MachineInventorySelector", "sel").get("reason") == "FailedToAdoptInventory"
            ) and bool(ready("ManagedOSImage", "up").get("reason") == "InvalidConfiguration")

        wait_until(reported, 10.0, interval=0.02, what="the conditions")
        sel = ready("MachineInventorySelector", "sel")
        assert (sel["status"], sel["message"]) == (
            "False",
            'failed to convert spec to a label selector: "Like" is not a valid label selector operator',
        )
        assert (
            ready("ManagedOSImage", "up")["message"]
            == 'nodeSelector: "Like" is not a valid label selector operator'
        )
        assert (
            "machineInventoryRef"
            not in (store.get("MachineInventorySelector", "fleet-default", "sel")["status"])
        )
    finally:
        store.close()


def test_schemaless_channel_options_are_checked_by_the_controller(tmp_path: Path) -> None:
    from waiting import wait_until

    from elemental_operator.context import OperatorContext
    from elemental_operator.controllers import Manager, all_controllers
    from elemental_operator.store.sql import open_store

    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        ctx = OperatorContext(store=store, public_url="https://op.test:8443", secret_key=b"k" * 32)
        mgr = Manager(ctx, all_controllers(ctx, tmp_path / "state", seedimage_command="true"))
        cases = {"not-an-object": "just a string", "uri-not-a-string": {"uri": ["a", "b"]}}
        for name, options in cases.items():
            store.create(
                {
                    "apiVersion": "elemental.cattle.io/v1beta1",
                    "kind": "ManagedOSVersionChannel",
                    "metadata": {"name": name, "namespace": "fleet-default"},
                    "spec": {"type": "json", "options": options},
                }
            )

        def reasons() -> dict[str, str]:
            mgr.step()
            out = {}
            for name in cases:
                conds = (store.get("ManagedOSVersionChannel", "fleet-default", name).get("status") or {}).get(
                    "conditions"
                ) or []
                out[name] = next((c["message"] for c in conds if c["reason"] == "InvalidConfiguration"), "")
            return out

        wait_until(lambda: all(reasons().values()), 10.0, interval=0.02, what="InvalidConfiguration")
        assert reasons() == {
            "not-an-object": "options must be an object",
            "uri-not-a-string": "options.uri (a string) is required for json channels",
        }
    finally:
        store.close()
