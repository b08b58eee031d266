"""Form input → resource objects, and the API's validation errors back onto the form's fields.

Nothing here validates on its own: objects go through the admin API's body checks and the
store's schema validation (``elemental_operator.api.validate``), and the one error line they
raise ("spec.config.elemental.install.device: must be a string") is placed at the field whose
path it names.
"""

from __future__ import annotations

from typing import Any

import yaml

from elemental_operator.api import API_VERSION, ValidationError

DEFAULT_NAMESPACE = "fleet-default"

# Registration form field → the object path it fills (longest first when matching errors).
REGISTRATION_FIELDS = {
    "name": "metadata.name",
    "namespace": "metadata.namespace",
    "machineName": "spec.machineName",
    "labels": "spec.machineInventoryLabels",
    "device": "spec.config.elemental.install.device",
    "auth": "spec.config.elemental.registration.auth",
    "emulateTpm": "spec.config.elemental.registration.emulate-tpm",
    "reset": "spec.config.elemental.reset",
}


class FormError(ValueError):
    """Input that cannot become an object at all; ``field`` names where to show it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_pairs(text: str, field: str) -> dict[str, str]:
    """``key=value`` per line (blank lines and ``#`` comments skipped)."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq or not key.strip():
            raise FormError(field, f"line {n}: expected key=value, got {line[:60]!r}")
        out[key.strip()] = value.strip()
    return out


def registration_from_form(form: dict[str, str]) -> dict[str, Any]:
    registration: dict[str, Any] = {"auth": form.get("auth") or "tpm"}
    if form.get("emulateTpm"):
        registration["emulate-tpm"] = True
        registration["emulated-tpm-seed"] = -1  # a random seed made and kept on each machine
    elemental: dict[str, Any] = {"registration": registration}
    if form.get("device", "").strip():
        elemental["install"] = {"device": form["device"].strip(), "reboot": True}
    if form.get("reset"):
        elemental["reset"] = {"enabled": True}
    spec: dict[str, Any] = {"config": {"elemental": elemental}}
    if form.get("machineName", "").strip():
        spec["machineName"] = form["machineName"].strip()
    labels = parse_pairs(form.get("labels", ""), "labels")
    if labels:
        spec["machineInventoryLabels"] = labels
    return {
        "apiVersion": API_VERSION,
        "kind": "MachineRegistration",
        "metadata": {
            "name": form.get("name", "").strip(),
            "namespace": form.get("namespace", "").strip() or DEFAULT_NAMESPACE,
        },
        "spec": spec,
    }


def field_for_error(message: str, fields: dict[str, str]) -> str:
    """The form field an API error line belongs to; "" for the form as a whole."""
    path = message.split(": ", 1)[0].strip()
    best = ""
    for name, prefix in fields.items():
        if (path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "[")) and len(
            prefix
        ) > len(fields.get(best, "")):
            best = name
    return best


def load_yaml(text: str) -> Any:
    """The YAML editor's text, parsed as the admin API parses a body (aliases refused)."""
    from elemental_operator.server.app import _parse_body

    return _parse_body(text.encode())


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


def checked(obj: Any, kind: str) -> dict[str, Any]:
    """The admin API's top-level body checks (kind, metadata shapes) for ``kind``."""
    from elemental_operator.api import kind_info
    from elemental_operator.server.app import _checked_object

    if not isinstance(obj, dict):
        raise ValidationError("body must be an object")
    out = _checked_object(obj, kind_info(kind))
    out.pop("status", None)  # as the API: status only through /status
    return out
