"""Registration client configuration (``elemental.registration`` of the config YAML)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from elemental_common.errors import die

DEFAULT_CONFIG_PATH = "/oem/registration/config.yaml"
DEFAULT_STATE_PATH = "/oem/registration/state.yaml"
INSTALL_STATE_PATH = "/tmp/registration/state.yaml"
# --install (with the toolkit) reads the registration from the live medium; PXE boots have no
# medium and the seed downloads it to /run/elemental first (docs/architecture.md).
INSTALL_CONFIG_PATHS = (
    "/run/initramfs/live/registration.yaml",
    "/run/initramfs/live/livecd-cloud-config.yaml",
    "/run/elemental/registration.yaml",
)
DEFAULT_TCTI = "device:/dev/tpmrm0"
AUTH_METHODS = ("tpm", "mac", "sys-uuid")


@dataclass
class RegistrationConfig:
    url: str = ""
    ca_cert: str = ""
    emulate_tpm: bool = False
    emulated_tpm_seed: int = 1
    no_smbios: bool = False
    auth: str = "tpm"
    no_toolkit: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    tpm_tcti: str = DEFAULT_TCTI
    # Our extension: "ecc" creates faster AKs, but Elemental's Go operator only verifies RSA AKs.
    tpm_ak_alg: str = "rsa"

    def validate(self) -> None:
        if not self.url:
            die(
                "registration URL is empty",
                "set elemental.registration.url in the registration config, or --registration-url",
            )
        if not self.url.startswith(("http://", "https://", "ws://", "wss://")):
            die(f"registration URL {self.url!r} is not an http(s) URL")
        if self.tpm_ak_alg not in ("rsa", "ecc"):
            die(f"tpm-ak-alg must be rsa or ecc, not {self.tpm_ak_alg!r}")
        if self.auth not in AUTH_METHODS:
            die(f"unknown auth method {self.auth!r} (one of {', '.join(AUTH_METHODS)})")


_KEYS = {
    "url": ("url", str),
    "ca-cert": ("ca_cert", str),
    "emulate-tpm": ("emulate_tpm", bool),
    "emulated-tpm-seed": ("emulated_tpm_seed", int),
    "no-smbios": ("no_smbios", bool),
    "auth": ("auth", str),
    "no-toolkit": ("no_toolkit", bool),
    "tpm-tcti": ("tpm_tcti", str),
    "tpm-ak-alg": ("tpm_ak_alg", str),
}


def load_yaml(path: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=loader)  # a SafeLoader or a subclass of it
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        die(f"cannot read {path}: {exc}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        die(f"{path}: expected a YAML map")
    return data


def registration_section(data: dict[str, Any]) -> dict[str, Any]:
    section = (
        (data.get("elemental") or {}).get("registration") if isinstance(data.get("elemental"), dict) else None
    )
    return section if isinstance(section, dict) else {}


def apply_registration(cfg: RegistrationConfig, section: dict[str, Any]) -> RegistrationConfig:
    """Overlay an ``elemental.registration`` map on cfg (unknown keys are ignored, like viper)."""
    for key, value in section.items():
        if key == "labels" and isinstance(value, dict):
            cfg.labels.update({str(k): str(v) for k, v in value.items()})
            continue
        spec = _KEYS.get(key)
        if spec is None or value is None:
            continue
        attr, typ = spec
        try:
            if typ is bool and isinstance(value, str):
                converted: Any = value.strip().lower() in ("1", "true", "yes", "on")
            else:
                converted = typ(value)
        except (TypeError, ValueError):
            die(f"elemental.registration.{key}: invalid value {value!r}")
        setattr(cfg, attr, converted)
    return cfg


def ca_cert_pem(value: str) -> str:
    """``ca-cert`` may be PEM text or a path to a PEM file (Elemental's getRegistrationCA)."""
    if not value:
        return ""
    if "-----BEGIN" in value:
        return value
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    die(f"registration CA cert {value!r} is neither PEM nor a readable file")


class _TextScalarLoader(yaml.SafeLoader):
    """YAML as yaml.v3 decodes it into a map[string]string: every scalar is the text written
    (`yes`, `0x10`, `1.50`, `2024-01-01` stay as they are), null is "", merge keys work."""


_TextScalarLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag.endswith((":null", ":merge"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _scalar_text(loader: _TextScalarLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]  # only scalar tags below


for _tag in ("bool", "int", "float", "timestamp"):  # explicit !!int 5 and the like: the text too
    _TextScalarLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _scalar_text)


def load_labels_file(path: str) -> dict[str, str]:
    """The local labels file, read like upstream's client (cmd/register/main.go
    mergeLocalLabelsFile: yaml.v3 into map[string]string), not with YAML 1.1's types, which
    made `fromFile: yes` the label value 'True'."""
    data = load_yaml(path, loader=_TextScalarLoader)
    # Elemental's local labels file is a flat map; also accept {labels: {...}}.
    nested = data.get("labels")
    labels: dict[Any, Any] = nested if isinstance(nested, dict) else data
    out: dict[str, str] = {}
    for key, value in labels.items():
        if isinstance(value, (dict, list)):
            # upstream refuses the file ("cannot unmarshal !!seq into string"); say which label
            die(f"{path}: label {key!r} is not a string (a {type(value).__name__})")
        out["" if key is None else str(key)] = "" if value is None else str(value)
    return out
