"""Files the installed OS gets from the registration: OEM tree and system-agent files.

COS_OEM (mounted at /oem) is the one writable place that survives a reset without reset-oem, so
everything derived from the operator's config is written there; `elemental setup` copies the
agent files into /etc and /var at every boot (/etc is an ephemeral overlay on the read-only slot).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from elemental_common.consts import AGENT_DIR
from elemental_register.installer import durable, yip

log = logging.getLogger("elemental.oem")

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
# Our extension: a directory laid over COS_OEM (elemental.oem-files); the toolkit interface points
# it at where the before-install/before-reset hooks wrote the toolkit's OEM mount.
OEM_FILES_KEY = "oem-files"
# The yip stages Elemental's OS runs at boot from /oem; the register client's files use initramfs.
ELEMENTAL_BOOT_STAGES = ("rootfs", "initramfs", "fs", "boot", "network")


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
    """rancher-system-agent's connection file, as Elemental's register client writes it:
    ``{kubeConfig, namespace, secretName}``, the kubeconfig naming the operator's Secret API
    (``system-agent.url``, ``<operator>/k8s/clusters/local``), its CA and the machine's token.
    Either agent (ours or rancher-system-agent) reads it."""
    el = config.get("elemental") or {}
    sa = el.get("system-agent") or {}
    if not sa.get("url"):
        return None
    cluster: dict[str, Any] = {"server": sa["url"]}
    ca = (el.get("registration") or {}).get("ca-cert", "")
    if ca:
        cluster["certificate-authority-data"] = base64.b64encode(str(ca).encode()).decode()
    kubeconfig = {
        "apiVersion": "v1",
        "clusters": [{"cluster": cluster, "name": "cluster"}],
        "contexts": [{"context": {"cluster": "cluster", "user": "user"}, "name": "context"}],
        "current-context": "context",
        "kind": "Config",
        "users": [{"name": "user", "user": {"token": sa.get("token", "")}}],
    }
    return {
        "kubeConfig": yaml.safe_dump(kubeconfig, sort_keys=True),
        "namespace": sa.get("secret-namespace", ""),
        "secretName": sa.get("secret-name", ""),
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
    files = el.get(OEM_FILES_KEY)
    if files:
        import_elemental(oem, Path(files))


def elemental_target(oem: Path) -> yip.Target:
    """Elemental's installed-system paths of the register client's files, onto our COS_OEM: its
    OS writes them at every boot from /oem/*.yaml (yip), ours copies them from COS_OEM
    (`elemental setup`). /oem/registration/{config,state}.yaml are the same paths in both."""
    agent = oem / OEM_AGENT
    return yip.Target(
        remap={
            "/oem": oem,
            os.path.dirname(AGENT_CONFIG): agent,  # config.yaml, envs
            CONNECTION: agent / os.path.basename(CONNECTION),
        },
        confined=True,  # anything else would land on the live system, not the installed one
        run_commands=False,  # they would run on the seed, not at the installed system's boot
        # at install (or reset) the installed system has not booted yet: its first boot would
        # find none of the files the conditions test ("[ ! -f /oem/registration/config.yaml ]")
        assume_if=True,
    )


def import_elemental(oem: Path, files: Path) -> yip.Report:
    """Lay `files` (what Elemental's hooks wrote into the toolkit's OEM mount) into COS_OEM and
    map them onto ours: the yip files' boot stages write the registration config and state and
    the system-agent files where our OS reads them; a cloud-config joins elemental/cloud-config.yaml.
    The files themselves are kept too, under their own names."""
    report = yip.Report()
    if not files.is_dir():
        return report
    for item in files.iterdir():  # children only: the root keeps COS_OEM's own mode
        if item.is_dir() and not item.is_symlink():
            shutil.copytree(item, oem / item.name, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(item, oem / item.name, follow_symlinks=False)
    target = elemental_target(oem)
    for f in sorted(p for p in files.iterdir() if p.is_file() and p.suffix in yip.YAML_SUFFIXES):
        try:
            doc = yip.load(f)
        except (OSError, ValueError, yaml.YAMLError) as e:
            log.warning("%s: not a yip file or cloud-config, kept as is: %s", f.name, e)
            continue
        if "stages" in doc:
            for stage in ELEMENTAL_BOOT_STAGES:
                yip.run_config(doc, stage, target, report, source=f.name)
            other = set(doc["stages"] or {}) - set(ELEMENTAL_BOOT_STAGES)
            if other:
                log.info("%s: stages %s are not boot stages, not mapped", f.name, sorted(other))
        elif doc:
            _merge_cloud_config(oem / OEM_CLOUD_CONFIG, doc)
            report.done.append(f"cloud-config {f.name} -> {OEM_CLOUD_CONFIG}")
    for line in report.done:
        log.info("OEM: %s", line)
    return report


def _merge_cloud_config(path: Path, doc: dict[str, Any]) -> None:
    """Later files add to lists (users, write_files, runcmd) and replace scalars."""
    cc: dict[str, Any] = {}
    if path.is_file():
        cc = yaml.safe_load(path.read_text()) or {}
    for k, v in doc.items():
        if isinstance(v, list) and isinstance(cc.get(k), list):
            cc[k] = cc[k] + v
        else:
            cc[k] = v
    write_file(path, yaml.safe_dump(cc, sort_keys=False).encode(), 0o600)


def load_system_state(oem: Path) -> dict[str, Any]:
    try:
        data = json.loads((oem / OEM_SYSTEM_STATE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_system_state(oem: Path, state: dict[str, Any]) -> None:
    write_file(oem / OEM_SYSTEM_STATE, json.dumps(state, indent=2, sort_keys=True).encode(), 0o644, 0o755)
