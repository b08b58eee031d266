"""Agent config and connection file, with rancher-system-agent's permission check."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from elemental_common.errors import die
from elemental_register.installer import oem

DEFAULT_CONFIG = oem.AGENT_CONFIG


def check_permissions(path: Path) -> None:
    """The file holds a bearer token: it must be ours and closed to group and others."""
    try:
        st = path.stat()
    except OSError as e:
        die(f"{path}: {e.strerror}", "the installer (or elemental-register --no-toolkit) writes this file")
    if st.st_uid != os.geteuid():
        die(
            f"{path} is owned by uid {st.st_uid}, not by the agent (uid {os.geteuid()})",
            f"chown {os.geteuid()} {path}",
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        die(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; group/other must have no access",
            f"chmod 600 {path}",
        )


@dataclass
class Connection:
    url: str
    token: str
    namespace: str
    secret_name: str
    ca_cert: str

    @classmethod
    def load(cls, path: Path) -> Connection:
        check_permissions(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            die(f"{path}: unreadable connection file: {e}")
        if not isinstance(d, dict) or not d.get("url"):
            die(f"{path}: the connection file has no url")
        return cls(
            str(d["url"]).rstrip("/"),
            str(d.get("token", "")),
            str(d.get("namespace", "")),
            str(d.get("secretName", "")),
            str(d.get("caCert", "")),
        )


@dataclass
class AgentConfig:
    work_directory: Path
    applied_plan_directory: Path
    connection_info_file: Path
    strict_verify: bool = False
    poll_interval: float = 30.0
    jitter: float = 0.2  # fraction of the interval
    retry_cooldown: float = 30.0  # rancher-system-agent's failed-plan cooldown
    preserve_work_directory: bool = False

    @classmethod
    def load(cls, path: Path | None = None) -> AgentConfig:
        path = path or Path(os.environ.get("CATTLE_AGENT_CONFIG", DEFAULT_CONFIG))
        check_permissions(path)
        try:
            d: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            die(f"{path}: unreadable agent config: {e}")
        work = Path(d.get("workDirectory", f"{oem.AGENT_DIR}/work"))
        strict = os.environ.get("CATTLE_AGENT_STRICT_VERIFY", str(d.get("strictVerify", "false")))
        return cls(
            work_directory=work,
            applied_plan_directory=Path(d.get("appliedPlanDirectory", f"{oem.AGENT_DIR}/applied")),
            connection_info_file=Path(d.get("connectionInfoFile", oem.CONNECTION)),
            strict_verify=strict.strip().strip('"').lower() == "true",
            poll_interval=float(d.get("pollIntervalSeconds", 30)),
            jitter=float(d.get("pollJitter", 0.2)),
            retry_cooldown=float(d.get("retryCooldownSeconds", 30)),
            preserve_work_directory=bool(d.get("preserveWorkDirectory", False)),
        )
