"""Secure Boot: our signed images, the project key enrolled in OVMF's Secure Boot build (SMM).

* host: systemd-boot and the UKI in the OS image, and the seed UKI, carry a signature that
  `sbverify` accepts with the signing certificate (imagebuild signs through mkosi);
* VM: the seed ISO boots with Secure Boot on and our certificate as PK/KEK/db (the kernel reports
  Secure Boot enabled); the same ISO with the signature stripped from its UKI is refused by the
  firmware (`Access Denied`) and never reaches the kernel.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from installer_fixtures import blob_path
from vm import OVMF_CODE_SECBOOT, Machine

from elemental_common import osimage
from elemental_common.run import run

REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("OUT", REPO / "out"))
STATE = Path(os.environ.get("ELEMENTAL_STATE") or "/var/lib/elemental-py")
CERT = Path(os.environ.get("ELEMENTAL_SB_CERT") or STATE / "secureboot/db.crt")
RESULTS = Path(os.environ.get("RESULTS") or REPO / "results") / "test_secure_boot"


def _need(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} is missing (make iso builds and signs the images)")


def _os_efi_blobs() -> list[Path]:
    index = json.loads((OUT / "os/index.json").read_text())
    man = json.loads(blob_path(OUT / "os", index["manifests"][0]["digest"]).read_text())
    return [
        blob_path(OUT / "os", la["digest"])
        for la in man["layers"]
        if la["mediaType"] in (osimage.MEDIA_UKI, osimage.MEDIA_SYSTEMD_BOOT)
    ]


@pytest.mark.integration
def test_images_are_signed_with_the_project_key() -> None:
    _need(CERT, OUT / "seed.efi", OUT / "os/index.json")
    blobs = _os_efi_blobs()
    assert len(blobs) == 2
    for efi in [OUT / "seed.efi", *blobs]:
        run(["sbverify", "--cert", str(CERT), str(efi)], hint=f"{efi} is not signed by {CERT}")


def _iso_with(seed: Path, work: Path) -> Path:
    """A seed ISO packed from `seed` (and out/'s OS image, as `make repack` does)."""
    out = work / "out"
    out.mkdir(parents=True)
    for name in ("seed.vmlinuz", "seed.initrd"):
        if (OUT / name).exists():
            shutil.copyfile(OUT / name, out / name)
    shutil.copyfile(seed, out / "seed.efi")
    (out / "os").symlink_to(OUT / "os")
    run(
        [str(REPO / ".venv/bin/python"), "-m", "iso.pack", "--out", str(out), "--work", str(work / "iso")],
        cwd=REPO,
    )
    return out / "seed.iso"


@pytest.mark.vm
def test_signed_seed_boots_unsigned_is_refused(tmp_path: Path) -> None:
    _need(CERT, OUT / "seed.iso", OVMF_CODE_SECBOOT)
    if not shutil.which("virt-fw-vars") or not shutil.which("sbattach"):
        pytest.skip("needs virt-fw-vars (python3-virt-firmware) and sbsigntool")
    shutil.rmtree(RESULTS, ignore_errors=True)
    with Machine("signed", results_dir=RESULTS, tpm=False, network=False, secure_boot=CERT) as m:
        m.add_cdrom(OUT / "seed.iso")
        m.boot()
        m.expect(r"[Ss]ecure boot enabled", timeout=1200)  # the kernel, through the signed UKI
        # leaving the block stops QEMU: the seed is still booting, an ACPI power-off would go unheard
    unsigned = tmp_path / "seed-unsigned.efi"
    shutil.copyfile(OUT / "seed.efi", unsigned)
    run(["sbattach", "--remove", str(unsigned)])
    iso = _iso_with(unsigned, tmp_path)
    with Machine("unsigned", results_dir=RESULTS, tpm=False, network=False, secure_boot=CERT) as m:
        m.add_cdrom(iso)
        m.boot()
        m.expect(r"Access Denied", timeout=900)
        log = m.serial_log.read_text(errors="replace")
    assert "Linux version" not in log, "the firmware ran an unsigned kernel"
