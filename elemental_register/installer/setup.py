"""`elemental setup`: run by elemental-setup.service at every boot of the installed OS.

/etc is an ephemeral overlay on the read-only slot, so the files derived from the registration
live in COS_OEM (/oem) and are copied into place here, before the system agent starts. Work left
on persistent by an upgrade that a power cut interrupted is removed here too.
"""

from __future__ import annotations

import logging
from pathlib import Path

from elemental_register.installer import cloudconfig, oem, upgrade

log = logging.getLogger("elemental.setup")


def setup(root: Path = Path("/"), oem_dir: Path = Path("/oem")) -> list[str]:
    done = []
    agent = oem_dir / oem.OEM_AGENT
    targets = {
        "config.yaml": oem.AGENT_CONFIG,
        "envs": oem.AGENT_ENVS,
        "elemental_connection.json": oem.CONNECTION,
    }
    for name, dest in targets.items():
        src = agent / name
        if src.is_file():
            oem.write_file(root / dest.lstrip("/"), src.read_bytes(), 0o600)
            done.append(dest)
    cc = oem_dir / oem.OEM_CLOUD_CONFIG
    if cc.is_file():
        done += cloudconfig.apply(cloudconfig.load(cc), root)
    work = root / upgrade.WORK_BASE.relative_to("/")
    if work.is_dir():
        done += [f"removed {p}" for p in upgrade.clean_interrupted(work)]
    return done


def main() -> None:
    for line in setup():
        log.info("%s", line)
