"""The admin API's PATCH (merge, JSON and strategic patch content types) and ``?dryRun=All``, as the
Kubernetes API server takes them: dry runs run every check and answer, and store nothing."""

# ruff: noqa: F811  (pytest fixtures imported from operator_fixtures)

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from operator_fixtures import RunningOperator, operator, postgres_server, store, store_url  # noqa: F401

NS = "fleet-default"
COLL = f"/elemental/admin/v1/namespaces/{NS}/metadata"
MERGE, JSON_PATCH, STRATEGIC = (
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
)


def call(
    op: RunningOperator, method: str, path: str, body: Any = None, ctype: str = "application/json"
) -> tuple[int, Any]:
    req = urllib.request.Request(
        op.url + path, data=json.dumps(body).encode() if body is not None else None, method=method
    )
    req.add_header("Authorization", f"Bearer {op.token}")
    if body is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def meta(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "Metadata",
        "metadata": {"name": name, "labels": {"a": "1"}},
        "spec": {"appVersion": "1.0", "annotations": {"x": "y"}},
    }


def stored(op: RunningOperator, name: str) -> dict[str, Any] | None:
    code, body = call(op, "GET", f"{COLL}/{name}")
    return body if code == 200 else None


def test_patch_content_types(operator: RunningOperator) -> None:
    assert call(operator, "POST", COLL, meta("m"))[0] == 201
    code, out = call(
        operator,
        "PATCH",
        f"{COLL}/m",
        {"metadata": {"labels": {"a": None, "b": "2"}}, "spec": {"appVersion": "1.1"}},
        MERGE,
    )
    assert (
        code == 200
        and out["metadata"]["labels"] == {"b": "2"}
        and out["spec"] == {"appVersion": "1.1", "annotations": {"x": "y"}}
    )
    code, out = call(
        operator,
        "PATCH",
        f"{COLL}/m",
        [
            {"op": "replace", "path": "/spec/appVersion", "value": "2.0"},
            {"op": "remove", "path": "/spec/annotations"},
        ],
        JSON_PATCH,
    )
    assert code == 200 and out["spec"] == {"appVersion": "2.0"}
    assert stored(operator, "m")["spec"] == {"appVersion": "2.0"}  # type: ignore[index]
    # status subresource (an inventory: its status has conditions): they merge by type under the
    # strategic type, where a merge patch replaces the list
    inv = f"/elemental/admin/v1/namespaces/{NS}/machineinventories/i"
    body = {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineInventory",
        "metadata": {"name": "i"},
    }
    assert call(operator, "POST", inv.rsplit("/", 1)[0], body)[0] == 201
    cond = {
        "type": "Foo",
        "status": "True",
        "reason": "Ok",
        "message": "",
        "lastTransitionTime": "2026-12-02T00:00:00Z",
    }
    code, out = call(
        operator,
        "PATCH",
        inv + "/status",
        {"status": {"conditions": [cond, {**cond, "type": "Bar"}]}},
        STRATEGIC,
    )
    assert code == 200
    code, out = call(
        operator,
        "PATCH",
        inv + "/status",
        {"status": {"conditions": [{**cond, "status": "False"}]}},
        STRATEGIC,
    )
    mine = {c["type"]: c["status"] for c in out["status"]["conditions"] if c["type"] in ("Foo", "Bar")}
    assert code == 200 and mine == {"Foo": "False", "Bar": "True"}
    # a main-resource patch does not touch status (status subresource)
    code, out = call(operator, "PATCH", inv, {"status": {"conditions": []}, "spec": {"tpmHash": "t"}}, MERGE)
    assert (
        code == 200
        and out["spec"]["tpmHash"] == "t"
        and any(c["type"] == "Bar" for c in out["status"]["conditions"])
    )
    code, err = call(operator, "PATCH", f"{COLL}/m", {"spec": {"appVersoin": "3"}}, MERGE)
    assert (code, err["reason"], err["message"]) == (422, "Invalid", "spec.appVersoin: unknown field")
    code, err = call(
        operator, "PATCH", f"{COLL}/m", [{"op": "test", "path": "/spec/appVersion", "value": "9"}], JSON_PATCH
    )
    assert (code, err["message"]) == (422, "json patch: test failed at '/spec/appVersion'")
    code, err = call(operator, "PATCH", f"{COLL}/m", {"spec": {}}, "application/json")
    assert (code, err["reason"]) == (415, "UnsupportedMediaType") and MERGE in err["message"]
    code, err = call(operator, "PATCH", f"{COLL}/m", {"metadata": {"name": "other"}}, MERGE)
    assert code == 422 and "metadata.name" in err["message"]
    # a patch that pins a resourceVersion is a precondition: stale → 409, as in Kubernetes
    rv = stored(operator, "m")["metadata"]["resourceVersion"]  # type: ignore[index]
    assert (
        call(
            operator,
            "PATCH",
            f"{COLL}/m",
            {"metadata": {"resourceVersion": rv}, "spec": {"appVersion": "4"}},
            MERGE,
        )[0]
        == 200
    )
    code, err = call(
        operator,
        "PATCH",
        f"{COLL}/m",
        {"metadata": {"resourceVersion": rv}, "spec": {"appVersion": "5"}},
        MERGE,
    )
    assert (code, err["reason"]) == (409, "Conflict")
    assert call(operator, "PATCH", f"{COLL}/nope", {"spec": {}}, MERGE)[0] == 404


def test_dry_run_all_checks_everything_and_stores_nothing(operator: RunningOperator) -> None:
    version = operator.ctx.store.current_version()
    code, out = call(operator, "POST", COLL + "?dryRun=All", meta("d"))
    assert code == 201 and out["metadata"]["name"] == "d" and out["spec"]["appVersion"] == "1.0"
    assert stored(operator, "d") is None
    code, err = call(operator, "POST", COLL + "?dryRun=All", {**meta("d"), "spec": {"bogus": 1}})
    assert (code, err["message"]) == (422, "spec.bogus: unknown field")
    assert operator.ctx.store.current_version() == version  # no event for any watcher either
    assert call(operator, "POST", COLL, meta("d"))[0] == 201
    code, err = call(operator, "POST", COLL + "?dryRun=All", meta("d"))
    assert (code, err["reason"], err["message"]) == (
        409,
        "AlreadyExists",
        'metadata.elemental.cattle.io "d" already exists',
    )
    cur = stored(operator, "d")
    assert cur is not None
    code, out = call(operator, "PUT", f"{COLL}/d?dryRun=All", {**cur, "spec": {"appVersion": "9"}})
    assert code == 200 and out["spec"] == {"appVersion": "9"}
    code, out = call(operator, "PATCH", f"{COLL}/d?dryRun=All", {"spec": {"appVersion": "8"}}, MERGE)
    assert code == 200 and out["spec"]["appVersion"] == "8"
    stale = {**cur, "metadata": {**cur["metadata"], "resourceVersion": "999999"}}
    assert call(operator, "PUT", f"{COLL}/d?dryRun=All", stale)[0] == 409
    assert call(operator, "DELETE", f"{COLL}/d?dryRun=All")[0] in (200, 202)
    assert stored(operator, "d") == cur  # nothing of the above was written
    code, err = call(operator, "DELETE", f"{COLL}/d?dryRun=yes")
    assert (code, err["reason"]) == (400, "BadRequest") and "dryRun" in err["message"]
    assert call(operator, "DELETE", f"{COLL}/nope?dryRun=All")[0] == 404


def _raw(
    op: RunningOperator, method: str, path: str, body: Any, ctype: str = "application/json"
) -> tuple[int, Any, list[str]]:
    req = urllib.request.Request(op.url + path, data=json.dumps(body).encode(), method=method)
    req.add_header("Authorization", f"Bearer {op.token}")
    req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get_all("Warning") or []
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers.get_all("Warning") or []


def test_field_validation_strict_warn_ignore(operator: RunningOperator) -> None:
    typo = {**meta("f"), "spec": {"appVersion": "1", "appVersoin": "2", "annotations": {"a": "b"}}}
    code, err, _ = _raw(operator, "POST", COLL, typo)
    assert (code, err["message"]) == (422, "spec.appVersoin: unknown field")  # Strict: our default
    code, err, _ = _raw(operator, "POST", COLL + "?fieldValidation=Strict", typo)
    assert code == 422
    code, out, warnings = _raw(operator, "POST", COLL + "?fieldValidation=Warn&dryRun=All", typo)
    assert code == 201 and "appVersoin" not in out["spec"]
    assert warnings == ['299 - "unknown field \\"spec.appVersoin\\""']
    code, out, warnings = _raw(operator, "POST", COLL + "?fieldValidation=Ignore", typo)
    assert (code, out["spec"], warnings) == (201, {"appVersion": "1", "annotations": {"a": "b"}}, [])
    code, out, warnings = _raw(
        operator, "PATCH", f"{COLL}/f?fieldValidation=Warn", {"spec": {"nope": 1, "appVersion": "3"}}, MERGE
    )
    assert (code, out["spec"]["appVersion"], warnings) == (
        200,
        "3",
        ['299 - "unknown field \\"spec.nope\\""'],
    )
    cur = stored(operator, "f")
    assert cur is not None
    code, out, warnings = _raw(operator, "PUT", f"{COLL}/f?fieldValidation=Ignore", {**cur, "extra": 1})
    assert code == 200 and "extra" not in out and warnings == []
    code, err, _ = _raw(operator, "POST", COLL + "?fieldValidation=Loose", typo)
    assert (code, err["reason"]) == (400, "BadRequest") and "fieldValidation" in err["message"]
