"""MachineRegistration: registration token, URL, its token Secret (``serviceAccountRef``) and Ready.

Upstream makes a ServiceAccount per registration with a token Secret ``<name>-token`` and points
``status.serviceAccountRef`` at the ServiceAccount (rancher/elemental-operator
controllers/machineregistration_controller.go, ``createRBACObjects``). There is no ServiceAccount
kind here: the per-registration credential is the registration token (machines present it in the
registration URL; each machine's agent token is derived from its own inventory). The controller
keeps it in a Secret of that same name, ``<name>-token``, owned by the registration (deleted with
it, recreated when deleted, as upstream re-checks its token Secret: rancher/elemental#776), and
``serviceAccountRef`` names that Secret (``apiVersion: v1, kind: Secret``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from elemental_common.consts import MACHINEREGISTRATION_FINALIZER, MANAGED_LABEL
from elemental_operator.controllers.base import (
    Controller,
    add_finalizer,
    condition_true,
    controller_owner,
    has_finalizer,
    is_deleting,
    owner_ref,
    random_token,
    remove_finalizer,
    set_condition,
)
from elemental_operator.store.base import AlreadyExists, NotFound, Resource, WatchEvent

# upstream's SASecretSuffix (api/v1beta1/common_consts.go)
TOKEN_SECRET_SUFFIX = "-token"
TOKEN_SECRET_TYPE = "elemental.cattle.io/registration-token"


def registration_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/elemental/registration/{token}"


def token_secret_name(registration: Resource) -> str:
    return str(registration["metadata"]["name"]) + TOKEN_SECRET_SUFFIX


def service_account_ref(registration: Resource) -> dict[str, str]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "namespace": registration["metadata"]["namespace"],
        "name": token_secret_name(registration),
    }


class MachineRegistrationController(Controller):
    kind = "MachineRegistration"
    watches = ("Secret",)

    def map_event(self, event: WatchEvent) -> Iterable[tuple[str, str]]:
        owner = controller_owner(event.object, self.kind)
        if owner and event.object.get("type") == TOKEN_SECRET_TYPE:
            return [(event.object["metadata"]["namespace"], owner["name"])]
        return ()

    def _token_secret_ok(self, obj: Resource, token: str) -> bool:
        """The token Secret exists, is this registration's and holds the current token."""
        try:
            secret = self.store.get("Secret", obj["metadata"]["namespace"], token_secret_name(obj))
        except NotFound:
            return False
        owner = controller_owner(secret, self.kind) or {}
        data = (secret.get("data") or {}).get("token", "")
        return bool(
            owner.get("uid") == obj["metadata"]["uid"] and data == base64.b64encode(token.encode()).decode()
        )

    def _ensure_token_secret(self, obj: Resource, token: str) -> str | None:
        """Create or refresh ``<name>-token``; an error message when a foreign Secret has the name."""
        ns, name = obj["metadata"]["namespace"], token_secret_name(obj)
        data = {"token": base64.b64encode(token.encode()).decode()}
        try:
            secret = self.store.get("Secret", ns, name)
        except NotFound:
            want: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {MANAGED_LABEL: "true"},
                    "ownerReferences": [owner_ref(obj, controller=True)],
                },
                "type": TOKEN_SECRET_TYPE,
                "data": data,
            }
            try:
                self.store.create(want)
            except AlreadyExists:
                pass  # created meanwhile: the next reconcile checks it
            return None
        if (controller_owner(secret, self.kind) or {}).get("uid") != obj["metadata"]["uid"]:
            return f"Secret {ns}/{name} exists and is not this registration's"
        if secret.get("data") != data:
            secret["data"] = data
            self.store.update(secret)
        return None

    def reconcile(self, namespace: str, name: str) -> float | None:
        try:
            obj = self.store.get(self.kind, namespace, name)
        except NotFound:
            return None
        if is_deleting(obj):
            # Children (inventories, seed images) go through ownerReferences; nothing else to undo.
            if has_finalizer(obj, MACHINEREGISTRATION_FINALIZER):
                remove_finalizer(obj, MACHINEREGISTRATION_FINALIZER)
                self.store.update(obj)
            return None
        if not has_finalizer(obj, MACHINEREGISTRATION_FINALIZER):
            add_finalizer(obj, MACHINEREGISTRATION_FINALIZER)
            obj = self.store.update(obj)

        status = obj.setdefault("status", {})
        spec_token = (obj.get("spec") or {}).get("token") or ""
        token = status.get("registrationToken") or ""
        want_url = registration_url(self.ctx.public_url, token) if token else ""
        if (
            condition_true(obj, "Ready")
            and (not spec_token or spec_token == token)
            and status.get("registrationURL") == want_url
            and status.get("serviceAccountRef") == service_account_ref(obj)
            and self._token_secret_ok(obj, token)
        ):
            return None

        if spec_token:
            clash = [
                o
                for o in self.store.find_by_token(self.kind, spec_token)
                if o["metadata"]["uid"] != obj["metadata"]["uid"]
            ]
            if clash:
                other = clash[0]["metadata"]
                set_condition(
                    obj,
                    "Ready",
                    "False",
                    "DuplicateToken",
                    f"token already used by {other['namespace']}/{other['name']}",
                )
                self.store.update_status(obj)
                return None
            token = spec_token
        elif not token:
            token = random_token()

        if not self.ctx.public_url:
            set_condition(obj, "Ready", "False", "MissingTokenOrServerURL", "the operator has no public URL")
            self.store.update_status(obj)
            return None
        status["registrationToken"] = token
        status["registrationURL"] = registration_url(self.ctx.public_url, token)
        problem = self._ensure_token_secret(obj, token)
        if problem:
            set_condition(obj, "Ready", "False", "TokenSecretConflict", problem)
            self.store.update_status(obj)
            return None
        status["serviceAccountRef"] = service_account_ref(obj)
        set_condition(obj, "Ready", "True", "SuccessfullyCreated", "")
        self.store.update_status(obj)
        return None
