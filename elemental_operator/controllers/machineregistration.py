"""MachineRegistration: registration token, URL and Ready (brief §1.1)."""

from __future__ import annotations

from elemental_common.consts import MACHINEREGISTRATION_FINALIZER
from elemental_operator.controllers.base import (
    Controller,
    add_finalizer,
    condition_true,
    has_finalizer,
    is_deleting,
    random_token,
    remove_finalizer,
    set_condition,
)
from elemental_operator.store.base import NotFound


def registration_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/elemental/registration/{token}"


class MachineRegistrationController(Controller):
    kind = "MachineRegistration"

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
        set_condition(obj, "Ready", "True", "SuccessfullyCreated", "")
        self.store.update_status(obj)
        return None
