"""The seed ISO boots under QEMU (OVMF + swtpm), mounts its medium, applies the medium's
cloud-config to the live system, and its register client runs: it reads the medium's registration
file and tries to register at the URL in it.

Needs ``out/seed.iso`` (``make iso`` or ``make seed repack``); skipped otherwise. Under TCG the whole
test takes 3-6 minutes. Logs: ``results/test_seed_boot/seed/`` (serial.log, qemu.stderr, swtpm.log).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from vm import Machine, VMError
from waiting import wait_until

from elemental_common.run import run
from iso.repack import repack_iso

pytestmark = pytest.mark.vm

OUT = Path(os.environ.get("OUT") or "out")
ISO = OUT / "seed.iso"
RESULTS = Path(os.environ.get("RESULTS") or "results") / "test_seed_boot"
LIVE_REGISTRATION = "/run/initramfs/live/registration.yaml"
CLIENT_LINE = f"using registration file {LIVE_REGISTRATION}"
UNIT = "elemental-register-install.service"
LIVE_UNIT = "elemental-live-cloud-config.service"
# A SeedImage's spec.cloud-config, as the operator's builder puts it on the medium.
LIVE_CLOUD_CONFIG = {
    "users": [{"name": "seeduser", "groups": ["users"]}],
    "write_files": [
        {"path": "/run/elemental-live-cc", "content": "from the medium\n", "permissions": "0640"},
    ],
    "runcmd": ["echo ran > /run/elemental-live-runcmd"],
}
# elemental_register.client: what the client logs once it has tried the operator (no operator
# listens at the placeholder URL: a retry; a dev operator's URL may answer).
ATTEMPTED = re.compile(r"registration attempt \d+ failed|registration successful|operator answered HTTP \d+")


@pytest.fixture
def seed() -> Iterator[Machine]:
    if not ISO.is_file():
        pytest.skip(f"{ISO} has not been built (make iso, or make seed repack)")
    # A new machine each run: the harness keeps a machine's NVRAM, disks and TPM state in its
    # results directory (an earlier run's target disk or TPM must not carry over).
    shutil.rmtree(RESULTS / "seed", ignore_errors=True)
    # The ISO as a SeedImage with a cloud-config leaves the operator: out/seed.iso replayed by
    # xorriso with its own registration and a cloud-config at /iso-config/cloud-config.yaml.
    work = RESULTS / "iso"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    registration = work / "registration.yaml"
    run(
        ["xorriso", "-osirrox", "on", "-indev", str(ISO), "-extract", "/registration.yaml", str(registration)]
    )
    cloud_config = work / "cloud-config.yaml"
    cloud_config.write_text("#cloud-config\n" + yaml.safe_dump(LIVE_CLOUD_CONFIG))
    iso = work / "seed.iso"
    repack_iso(ISO, registration, cloud_config, iso)
    m = Machine("seed", results_dir=RESULTS, memory_mb=2048)
    try:
        m.add_disk(size="8G")  # a target disk, as on a real machine (empty: the firmware skips it)
        m.add_cdrom(iso)
        yield m
    finally:
        m.close()


def journal(m: Machine) -> str:
    return m.run(f"journalctl -b --no-pager -o cat -u {UNIT}", check=False)


def test_seed_iso_boots_and_starts_register(seed: Machine) -> None:
    m = seed
    m.boot()
    m.wait_for_shell(timeout=900)

    # The TPM (swtpm behind tpm-tis) is usable through the kernel's resource manager.
    assert "TPMRM-OK" in m.run("test -c /dev/tpmrm0 && echo TPMRM''-OK")

    # The medium (ISO9660 volume COS_LIVE) is mounted read-only at /run/initramfs/live.
    def live_mount() -> str:
        out = m.run("findmnt -n -o FSTYPE,OPTIONS /run/initramfs/live", check=False)
        return next((line for line in out.splitlines() if line.startswith("iso9660")), "")

    fstype_options = wait_until(live_mount, 120, interval=5, what="the medium at /run/initramfs/live")
    assert "ro" in fstype_options.split()[1].split(","), fstype_options
    registration = yaml.safe_load(m.run(f"cat {LIVE_REGISTRATION}"))
    url = registration["elemental"]["registration"]["url"]
    assert url.startswith("https://"), registration

    # The register client really runs (not merely its unit): it reads the medium's registration
    # file, takes the URL from it and tries to register there. No operator answers in this test,
    # so the attempt fails and the client retries; a crash (a traceback, a missing module) or a
    # client that never reaches the network fails the test.
    def client_attempted() -> str:
        log = journal(m)
        assert "Traceback (most recent call last)" not in log, f"{UNIT} crashed:\n{log}"
        if CLIENT_LINE in log and f"registration URL: {url}" in log and ATTEMPTED.search(log):
            return log
        return ""

    try:
        wait_until(client_attempted, 420, interval=5, what=f"{UNIT} to try {url}")
    except AssertionError as exc:
        raise VMError(f"{exc}; the unit's journal:\n{journal(m)}") from None
    # The medium's cloud-config was applied to the live system before the client ran.
    live = m.run(f"journalctl -b --no-pager -o cat -u {LIVE_UNIT}", check=False)
    assert "live-cloud-config: applied /run/initramfs/live/iso-config/cloud-config.yaml" in live, live
    assert m.run("cat /run/elemental-live-cc").strip() == "from the medium", live
    assert m.run("stat -c %a /run/elemental-live-cc").strip() == "640"
    assert m.run("cat /run/elemental-live-runcmd").strip() == "ran", live
    assert "users" in m.run("id -nG seeduser"), live
    state = m.run(f"systemctl show -P ActiveState {UNIT}", check=False).split()
    print(f"{UNIT}: {state}, {m.run(f'systemctl show -P NRestarts {UNIT}', check=False).split()} restarts")
    assert "failed" not in state, state
    m.poweroff(timeout=180)
