"""The Secure Boot signing key and certificate: the user's (settings), or the project's own, made once."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

from elemental_common.errors import die
from elemental_common.run import run

SUBDIR = "secureboot"


def default_paths(state: Path) -> tuple[Path, Path]:
    return state / SUBDIR / "db.key", state / SUBDIR / "db.crt"


def ensure(key: Path, cert: Path, *, create: bool) -> None:
    """Make a self-signed RSA-2048 key + certificate at the default paths when none exist there
    (`create`); a user's own paths must exist. One key serves as PK, KEK and db, as mkosi's
    auto-enrolment does: this is a project key for VMs and labs, fleets bring their own."""
    if key.is_file() and cert.is_file():
        return
    if not create:
        die(
            f"the Secure Boot key {key} or certificate {cert} does not exist",
            "set ELEMENTAL_SB_KEY and ELEMENTAL_SB_CERT to your PEM key and certificate, or unset both",
        )
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = key.with_name(key.name + ".new")
    run(
        [
            "openssl",
            "req",
            "-new",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "3650",
            "-subj",
            f"/CN=elemental-py Secure Boot key ({socket.gethostname()})",
            "-keyout",
            str(tmp),
            "-out",
            str(cert),
        ],
        hint="openssl must be installed",
    )
    os.chmod(tmp, 0o600)
    tmp.rename(key)


def fingerprint(cert: Path) -> str:
    """What goes into an image's input digest: a new certificate re-signs (rebuilds) the images."""
    return hashlib.sha256(cert.read_bytes()).hexdigest()


def mkosi_args(key: Path, cert: Path) -> list[str]:
    """mkosi signs systemd-boot and every UKI with sbsign, and (os profile, disk build) writes the
    PK/KEK/db .auth files for systemd-boot's enrolment into the build-time ESP."""
    return [
        "--secure-boot=yes",
        f"--secure-boot-key={key}",
        f"--secure-boot-certificate={cert}",
        "--secure-boot-sign-tool=sbsign",
    ]
