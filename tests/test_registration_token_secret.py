"""MachineRegistration ``status.serviceAccountRef`` (issue 13 item 5): the registration's token
Secret ``<name>-token``, kept by the real controller on a real store (docs/compatibility.md)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_fixtures import run_until

from elemental_operator.context import OperatorContext
from elemental_operator.controllers import Manager
from elemental_operator.controllers.base import condition_true, get_condition
from elemental_operator.controllers.machineregistration import MachineRegistrationController
from elemental_operator.store.base import NotFound
from elemental_operator.store.sql import SqlStore, open_store

NS = "fleet-default"
API = "elemental.cattle.io/v1beta1"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}", poll_interval=0.02)
    yield s
    s.close()


@pytest.fixture
def mgr(store: SqlStore) -> Manager:
    ctx = OperatorContext(store=store, public_url="https://op.test:8443", secret_key=b"k" * 32)
    return Manager(ctx, [MachineRegistrationController(ctx)])


def secret_token(store: SqlStore, name: str) -> str | None:
    try:
        data = store.get("Secret", NS, name).get("data") or {}
    except NotFound:
        return None
    return base64.b64decode(data.get("token", "")).decode()


def test_service_account_ref_names_the_token_secret(store: SqlStore, mgr: Manager) -> None:
    store.create(
        {"apiVersion": API, "kind": "MachineRegistration", "metadata": {"name": "reg", "namespace": NS}}
    )
    run_until(mgr, lambda: condition_true(store.get("MachineRegistration", NS, "reg"), "Ready"))
    reg = store.get("MachineRegistration", NS, "reg")
    assert reg["status"]["serviceAccountRef"] == {
        "apiVersion": "v1",
        "kind": "Secret",
        "namespace": NS,
        "name": "reg-token",
    }
    secret = store.get("Secret", NS, "reg-token")
    assert secret["type"] == "elemental.cattle.io/registration-token"
    assert secret["metadata"]["labels"] == {"elemental.cattle.io/managed": "true"}
    owner = secret["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "MachineRegistration",
        reg["metadata"]["uid"],
        True,
    )
    assert secret_token(store, "reg-token") == reg["status"]["registrationToken"]

    # deleted (a backup restore, rancher/elemental#776): recreated with the same token
    store.delete("Secret", NS, "reg-token")
    run_until(mgr, lambda: secret_token(store, "reg-token") == reg["status"]["registrationToken"])

    # a fixed spec.token is what the Secret holds
    reg = store.get("MachineRegistration", NS, "reg")
    reg.setdefault("spec", {})["token"] = "fixed-token"
    store.update(reg)
    run_until(mgr, lambda: secret_token(store, "reg-token") == "fixed-token")
    assert store.get("MachineRegistration", NS, "reg")["status"]["registrationToken"] == "fixed-token"

    # the registration's deletion takes its Secret along (ownerReferences)
    store.delete("MachineRegistration", NS, "reg")
    run_until(mgr, lambda: secret_token(store, "reg-token") is None)


def test_a_foreign_secret_of_that_name_is_a_condition(store: SqlStore, mgr: Manager) -> None:
    store.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "other-token", "namespace": NS},
            "type": "Opaque",
            "data": {"token": base64.b64encode(b"mine").decode()},
        }
    )
    store.create(
        {"apiVersion": API, "kind": "MachineRegistration", "metadata": {"name": "other", "namespace": NS}}
    )

    def reason() -> str:
        cond = get_condition(store.get("MachineRegistration", NS, "other"), "Ready") or {}
        return str(cond.get("reason"))

    run_until(mgr, lambda: reason() == "TokenSecretConflict")
    cond = get_condition(store.get("MachineRegistration", NS, "other"), "Ready")
    assert cond is not None and "other-token exists and is not this registration's" in cond["message"]
    assert secret_token(store, "other-token") == "mine"  # left alone
