"""Files the installed OS gets from the registration: OEM tree and system-agent files.

COS_OEM (mounted at /oem) is the one writable place that survives a reset without reset-oem, so
everything derived from the operator's config is written there; `elemental setup` copies the
agent files into /etc and /var at every boot (/etc is an ephemeral overlay on the read-only slot).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from elemental_common.consts import AGENT_DIR
from elemental_register.installer import durable

AGENT_CONFIG = "/etc/rancher/elemental/agent/config.yaml"
AGENT_ENVS = "/etc/rancher/elemental/agent/envs"
CONNECTION = f"{AGENT_DIR}/elemental_connection.json"

# Paths inside COS_OEM
OEM_REG_CONFIG = "registration/config.yaml"
OEM_REG_STATE = "registration/state.yaml"
OEM_AGENT = "elemental/agent"  # config.yaml, envs, elemental_connection.json
OEM_CLOUD_CONFIG = "elemental/cloud-config.yaml"
OEM_SYSTEM_STATE = "elemental/system-state.json"
OEM_RESET_MARK = "elemental/reset-requested"
LIVE_STATE = "/tmp/registration/state.yaml"  # where the seed's register client keeps its state


def agent_config() -> dict[str, Any]:
    return {
        "workDirectory": f"{AGENT_DIR}/work",
        "appliedPlanDirectory": f"{AGENT_DIR}/applied",
        "localPlanDirectory": f"{AGENT_DIR}/plans",
        "remoteEnabled": True,
        "localEnabled": False,
        "connectionInfoFile": CONNECTION,
        "preserveWorkDirectory": False,
    }


def connection(config: dict[str, Any]) -> dict[str, Any] | None:
    el = config.get("elemental") or {}
    sa = el.get("system-agent") or {}
    if not sa.get("url"):
        return None
    return {
        "url": sa["url"],
        "token": sa.get("token", ""),
        "namespace": sa.get("secret-namespace", ""),
        "secretName": sa.get("secret-name", ""),
        "caCert": (el.get("registration") or {}).get("ca-cert", ""),
    }


def agent_files(config: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
    """{absolute path: (content, mode)} of the three system-agent files, or {} without an agent."""
    conn = connection(config)
    if conn is None:
        return {}
    strict = bool(((config.get("elemental") or {}).get("system-agent") or {}).get("strictTLSMode", False))
    return {
        CONNECTION: (json.dumps(conn, indent=2).encode(), 0o600),
        AGENT_CONFIG: (yaml.safe_dump(agent_config(), sort_keys=False).encode(), 0o600),
        AGENT_ENVS: (f'CATTLE_AGENT_STRICT_VERIFY="{str(strict).lower()}"\n'.encode(), 0o600),
    }


def write_file(path: Path, data: bytes, mode: int, dir_mode: int = 0o700) -> None:
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=dir_mode)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    durable.replace(tmp, path)  # the system state names the slots: it must survive a power cut


def install_agent_files(config: dict[str, Any], root: Path = Path("/")) -> list[Path]:
    written = []
    for abspath, (data, mode) in agent_files(config).items():
        p = root / abspath.lstrip("/")
        write_file(p, data, mode)
        written.append(p)
    return written


def oem_tree(oem: Path, config: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Populate an OEM directory (a staging dir at install, the mounted /oem at reset)."""
    el = config.get("elemental") or {}
    reg = {"elemental": {"registration": el.get("registration") or {}}}
    write_file(oem / OEM_REG_CONFIG, yaml.safe_dump(reg, sort_keys=False).encode(), 0o600)
    if state is None and os.path.isfile(LIVE_STATE):
        state = yaml.safe_load(Path(LIVE_STATE).read_text()) or {}
    write_file(oem / OEM_REG_STATE, yaml.safe_dump(state or {}, sort_keys=False).encode(), 0o600)
    for abspath, (data, mode) in agent_files(config).items():
        write_file(oem / OEM_AGENT / Path(abspath).name, data, mode)
    cc = config.get("cloud-config")
    if cc:
        write_file(oem / OEM_CLOUD_CONFIG, yaml.safe_dump(cc, sort_keys=False).encode(), 0o600)


def load_system_state(oem: Path) -> dict[str, Any]:
    try:
        data = json.loads((oem / OEM_SYSTEM_STATE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_system_state(oem: Path, state: dict[str, Any]) -> None:
    write_file(oem / OEM_SYSTEM_STATE, json.dumps(state, indent=2, sort_keys=True).encode(), 0o644, 0o755)
