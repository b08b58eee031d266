"""``elemental-register``: Elemental's register client command line (cmd/register/main.go)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import yaml

from elemental_common.errors import Die, die, entry_point
from elemental_common.run import run
from elemental_register import hardware
from elemental_register.client import REG_VERSION, register_with_retries
from elemental_register.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_PATH,
    INSTALL_CONFIG_PATHS,
    INSTALL_STATE_PATH,
    RegistrationConfig,
    apply_registration,
    ca_cert_pem,
    load_labels_file,
    load_yaml,
    registration_section,
)
from elemental_register.installer import api as installer_api
from elemental_register.state import State, load_state, save_state

log = logging.getLogger("elemental-register")

DEFAULT_LABELS_FILE = "/etc/elemental/labels.yaml"
NETWORK_FILE = "/oem/elemental-network.yaml"
NM_CONNECTIONS = "/etc/NetworkManager/system-connections"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="elemental-register", description="Register this machine with an Elemental operator"
    )
    p.add_argument("--registration-url", help="registration URL")
    p.add_argument("--registration-ca-cert", help="CA certificate of the operator (path or PEM)")
    p.add_argument("--emulate-tpm", action="store_true", default=None, help="emulate a TPM (swtpm)")
    p.add_argument(
        "--emulated-tpm-seed",
        type=int,
        help="seed of the emulated TPM (-1: a random seed, kept in the state file)",
    )
    p.add_argument("--no-smbios", action="store_true", default=None, help="do not send SMBIOS data")
    p.add_argument("--auth", choices=["tpm", "mac", "sys-uuid"], help="authentication method (default tpm)")
    p.add_argument("-d", "--debug", action="store_true", help="debug logging")
    p.add_argument("--config-path", help=f"registration config (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--state-path", help=f"registration state (default {DEFAULT_STATE_PATH})")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--install", action="store_true", help="register and install the OS")
    mode.add_argument("--reset", action="store_true", help="register again and reset the OS")
    p.add_argument(
        "--reset-network", action="store_true", help="remove the network configuration and restart networking"
    )
    p.add_argument("--no-toolkit", action="store_true", help="unmanaged host: only install the system agent")
    p.add_argument("--disable-boot-entry", action="store_true", help="do not create firmware boot entries")
    p.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="client label (repeatable)"
    )
    p.add_argument("--local-labels-file", default=DEFAULT_LABELS_FILE, help="YAML map of client labels")
    p.add_argument("--tpm-tcti", help="TPM TCTI (default device:/dev/tpmrm0)")
    p.add_argument("-v", "--version", action="store_true", help="print the version")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("version", help="print the version")
    dump = sub.add_parser("dumpdata", help="show the hardware data sent to the operator")
    dump.add_argument("-r", "--raw", action="store_true", help="SMBIOS data instead of the label map")
    dump.add_argument("-f", "--format", choices=["labels", "yaml", "json", "json-compact"], default="labels")
    return p


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Template paths and values: what ``${A/B/C}`` can use."""
    out: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for key in sorted(data):
            out.extend(_flatten(data[key], f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(data, list):
        out.append((prefix, ", ".join(str(v) for v in data)))
    else:
        out.append((prefix, "" if data is None else str(data)))
    return out


def dumpdata(raw: bool, fmt: str, out: Callable[[str], Any] | None = None) -> int:
    out = out or sys.stdout.write
    if raw:
        try:
            data = hardware.read_smbios()
        except Die as exc:
            die(f"cannot read SMBIOS data: {exc.message}", "dumpdata --raw runs dmidecode, as root")
    else:
        data = hardware.system_data_v2()
    if fmt == "labels":
        out("".join(f"${{{path}}}: {value}\n" for path, value in _flatten(data)))
    elif fmt == "yaml":
        out(yaml.safe_dump(data, default_flow_style=False, sort_keys=True, allow_unicode=True))
    elif fmt == "json":
        out(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        out(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    return 0


def _parse_labels(items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            die(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """The remote config is unmarshalled on top of the local one (maps merge, values replace)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def progress_reporter(config: dict[str, Any], ca_pem: str) -> Callable[[str, int], None]:
    """Install progress → POST <system-agent url>/elemental/agent/v1/progress (best effort)."""
    agent = (config.get("elemental") or {}).get("system-agent") or {}
    url, token = agent.get("url"), agent.get("token")
    context: ssl.SSLContext | None = None
    if url and str(url).startswith("https"):
        context = ssl.create_default_context()
        if ca_pem:
            context.load_verify_locations(cadata=ca_pem)

    def report(stage: str, percent: int) -> None:
        log.info("install progress: %s %d%%", stage, percent)
        if not url or not token:
            return
        body = json.dumps({"stage": stage, "percent": int(percent)}).encode()
        req = urllib.request.Request(
            f"{str(url).rstrip('/')}/elemental/agent/v1/progress",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5, context=context):
                pass
        except Exception as exc:  # progress must never break an install
            log.debug("progress report failed: %s", exc)

    return report


def reset_network() -> None:
    """--reset-network: drop the operator-provided network config and restart networking."""
    import glob

    for path in [NETWORK_FILE, *glob.glob(os.path.join(NM_CONNECTIONS, "*.nmconnection"))]:
        try:
            os.unlink(path)
            log.info("removed %s", path)
        except FileNotFoundError:
            pass
    for argv in (
        ["nmcli", "connection", "reload"],
        ["systemctl", "restart", "NetworkManager"],
        ["systemctl", "start", "NetworkManager-wait-online"],
        ["systemctl", "restart", "elemental-system-agent"],
    ):
        try:  # best effort: a missing tool or a hung restart must not stop the reset
            proc = run(argv, check=False, stream=True, timeout=120)
            if proc.returncode != 0:
                log.warning("%s: exit %d", " ".join(argv), proc.returncode)
        except Die as exc:
            log.warning("%s", exc.message)


def _run(args: argparse.Namespace) -> int:
    install_mode = args.install and not args.no_toolkit
    if args.config_path:
        config_path = args.config_path
    elif install_mode:
        config_path = next((p for p in INSTALL_CONFIG_PATHS if os.path.isfile(p)), INSTALL_CONFIG_PATHS[0])
    else:
        config_path = DEFAULT_CONFIG_PATH
    state_path = args.state_path or (INSTALL_STATE_PATH if install_mode else DEFAULT_STATE_PATH)
    log.info("using registration file %s", config_path)

    local = load_yaml(config_path)
    cfg = apply_registration(RegistrationConfig(), registration_section(local))
    overrides = {
        "url": args.registration_url,
        "ca-cert": args.registration_ca_cert,
        "emulate-tpm": args.emulate_tpm,
        "emulated-tpm-seed": args.emulated_tpm_seed,
        "no-smbios": args.no_smbios,
        "auth": args.auth,
        "tpm-tcti": args.tpm_tcti,
    }
    apply_registration(cfg, {k: v for k, v in overrides.items() if v is not None})
    if args.no_toolkit:
        cfg.no_toolkit = True
    cfg.validate()
    log.info("registration URL: %s", cfg.url)

    labels = dict(cfg.labels)
    if args.local_labels_file and os.path.isfile(args.local_labels_file):
        labels.update(load_labels_file(args.local_labels_file))
    labels.update(_parse_labels(args.label))

    state = load_state(state_path)
    if args.reset:
        # A reset registers as a new machine; the emulated seed must survive (else -1 seeds change).
        state = State(None, state.emulated_tpm, state.emulated_tpm_seed)

    if args.reset_network:
        reset_network()
        if not (args.install or args.reset):
            return 0

    result = register_with_retries(cfg, state, labels, attempts=None if (args.install or args.reset) else 5)
    log.info("registration successful%s", " (updated)" if result.updated else "")
    config = _merge(local, result.config)
    if args.disable_boot_entry:
        elemental = config.setdefault("elemental", {})
        for section in ("install", "reset"):
            elemental.setdefault(section, {})["disable-boot-entry"] = True
    save_state(state_path, result.state)

    if not (args.install or args.reset):
        return 0
    if args.reset and args.no_toolkit:
        log.info("Reset not supported on hosts without the Elemental toolkit (--no-toolkit)")
        return 0
    with open(state_path, encoding="utf-8") as f:
        state_data = yaml.safe_load(f)
    if args.install and args.no_toolkit:
        installer_api.install_unmanaged(config)
    elif args.install:
        installer_api.install(config, progress_reporter(config, ca_cert_pem(cfg.ca_cert)), state=state_data)
    else:
        installer_api.reset(config, progress_reporter(config, ca_cert_pem(cfg.ca_cert)), state=state_data)
    return 0


@entry_point("elemental-register")
def main(argv: list[str] | None = None) -> int:
    """User errors (registration, config, installer: all `Die`) end as one line and exit 1."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.version or args.command == "version":
        print(f"elemental-register {REG_VERSION}")
        return 0
    if args.command == "dumpdata":
        return dumpdata(args.raw, args.format)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
