"""End-to-end registrations other than the main lifecycle (all ``e2e_full``: ``make e2e``).

* emulated TPM: two machines with no TPM device, ``emulated-tpm-seed: -1`` → two identities;
* PXE: the seed over QEMU's iPXE (user-network TFTP for the script, HTTP for the UKI) fetches the
  registration file named on its command line and registers;
* SeedImage: the seed `make iso` publishes (out/seed-image) is served by a registry on loopback as
  the SeedImage's spec.baseImage; the operator pulls and repacks it; the downloaded ISO boots and
  registers;
* unmanaged: out/os.raw (not installed by us) runs ``elemental-register --install --no-toolkit``;
  the inventory carries os.unmanaged; deleting it makes the sentinel file appear on the machine.

One operator for the module; logs under ``results/e2e/machines/``.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import OUT, RESULTS, Operator, Registry, condition, diagnostics, fresh_dir
from lifecycle import REGISTERED, SEED_MEMORY_MB, Fleet, expected_name, registration_spec, smbios
from vm import Machine

pytestmark = [pytest.mark.vm, pytest.mark.e2e_full]

IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")


@pytest.fixture(scope="module")
def results() -> Path:
    return fresh_dir(RESULTS / "e2e" / "machines")


def registered(op: Operator, m: Machine, name: str, timeout: float = 1500) -> dict[str, Any]:
    """Boot until the register client reports success; the inventory exists; stop the machine
    (the install that would follow is covered by test_lifecycle)."""
    m.boot()
    m.expect(REGISTERED, timeout=timeout)
    inv: dict[str, Any] = op.wait(f"inventory {name}", lambda: op.try_get("machineinventories", name), 60, 1)
    m.close()
    return inv


def test_emulated_tpm_two_machines(op: Operator, results: Path) -> None:
    with diagnostics(results):
        fleet = Fleet(op, results, name="emulated", spec=registration_spec(emulated_seed=-1))
        hashes = {}
        for serial in ("EMU-0001", "EMU-0002"):
            m = Machine(
                f"emu-{serial[-1]}",
                results_dir=results,
                memory_mb=SEED_MEMORY_MB,
                tpm=False,
                extra_args=[*smbios("EmuCorp", "Emu Box", serial), "-uuid", str(uuid.uuid4())],
            )
            with m:
                m.add_disk(size="8G", interface="nvme")
                m.add_cdrom(fleet.iso)
                inv = registered(op, m, expected_name("EmuCorp", serial))
            hashes[serial] = inv["spec"].get("tpmHash")
            assert hashes[serial], inv["spec"]
            assert "Starting TPM emulation" in m.serial_log.read_text(errors="replace")
        assert len(set(hashes.values())) == 2, hashes


class _Http:
    """A static HTTP server for the PXE files (iPXE fetches the 120 MB UKI much faster than TFTP)."""

    def __init__(self, root: Path) -> None:
        handler = type(
            "H",
            (http.server.SimpleHTTPRequestHandler,),
            {"log_message": lambda *a: None, "__init__": _static_init(root)},
        )
        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _static_init(root: Path) -> Any:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        http.server.SimpleHTTPRequestHandler.__init__(self, *args, directory=str(root), **kwargs)

    return init


def test_pxe(op: Operator, results: Path) -> None:
    if not IPXE_ROM.is_file():
        pytest.skip(f"{IPXE_ROM} missing (apt install ipxe-qemu)")
    with diagnostics(results):
        reg = op.registration("pxe", registration_spec())
        url = reg["status"]["registrationURL"]
        pxe = fresh_dir(results / "pxe-root")
        for f in ("seed.efi",):
            try:
                (pxe / f).hardlink_to(OUT / "pxe" / f if (OUT / "pxe" / f).exists() else OUT / f)
            except OSError:
                shutil.copyfile(OUT / f, pxe / f)
        http_ = _Http(pxe)
        try:
            # The operator's CA is not in the seed's trust store: the registration file itself
            # carries it, so only this first download skips verification.
            (pxe / "boot.ipxe").write_text(
                "#!ipxe\ndhcp\n"
                f"chain http://10.0.2.2:{http_.port}/seed.efi console=tty0 console=ttyS0,115200 "
                f"systemd.firstboot=no audit=0 elemental.registration={url} "
                "elemental.registration.insecure=1\n"
            )
            m = Machine(
                "pxe",
                results_dir=results,
                memory_mb=SEED_MEMORY_MB,
                network=False,
                extra_args=[
                    *smbios("PxeCorp", "Pxe Box", "PXE-0001"),
                    "-netdev",
                    f"user,id=net0,tftp={pxe},bootfile=boot.ipxe",
                    "-device",
                    f"virtio-net-pci,netdev=net0,romfile={IPXE_ROM},bootindex=9",
                ],
            )
            with m:
                m.add_disk(size="8G", interface="nvme")
                registered(op, m, expected_name("PxeCorp", "PXE-0001"))
            log = m.serial_log.read_text(errors="replace")
            assert "fetch-registration:" in log, "the seed did not fetch its registration file"
        finally:
            http_.close()


def test_seedimage(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed `make iso` publishes (out/seed-image, /elemental-iso/seed.iso) served by a registry
    on loopback is a SeedImage's spec.baseImage; the operator pulls and repacks it with the
    registration and cloud-config; the downloaded ISO boots and registers."""
    layout = OUT / "seed-image"
    if not (layout / "index.json").is_file():
        pytest.skip(f"{layout} missing (make iso publishes it)")
    with diagnostics(results), Registry({"elemental/seed": layout}, results / "registry.log") as registry:
        monkeypatch.setenv("ELEMENTAL_INSECURE_REGISTRIES", f"127.0.0.1:{registry.port}")
        op = Operator(fresh_dir(results / "seedimage-operator")).start()
        try:
            _seedimage_boots(op, results, f"127.0.0.1:{registry.port}/elemental/seed:latest")
        finally:
            op.stop()


def _seedimage_boots(op: Operator, results: Path, base_image: str) -> None:
    op.registration("seedimage", registration_spec())
    op.create(
        {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "SeedImage",
            "metadata": {"name": "e2e-seed"},
            "spec": {
                "registrationRef": {"name": "seedimage", "namespace": "fleet-default"},
                "type": "iso",
                "baseImage": base_image,
                "cloud-config": {"runcmd": ["echo e2e-seedimage-cloud-config"]},
            },
        }
    )

    def built() -> dict[str, Any] | None:
        si = op.get("seedimages", "e2e-seed")
        if condition(si, "SeedImageReady", "reason") == "SeedImageBuildFailure":
            raise AssertionError(condition(si, "SeedImageReady", "message"))
        return si if (si.get("status") or {}).get("downloadURL") else None

    start = time.monotonic()
    si = op.wait("SeedImage built", built, 600, 2)
    print(f"SeedImage built from {base_image} in {time.monotonic() - start:.1f}s")
    url: str = si["status"]["downloadURL"]
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    iso = results / "downloaded-seed.iso"
    req_data = _download(op, path)
    iso.write_bytes(req_data)
    checksum = _download(op, path + ".sha256").decode().split()[0]
    assert checksum == hashlib.sha256(req_data).hexdigest()
    m = Machine(
        "seedimage",
        results_dir=results,
        memory_mb=SEED_MEMORY_MB,
        extra_args=smbios("SiCorp", "Si Box", "SI-0001"),
    )
    with m:
        m.add_disk(size="8G", interface="nvme")
        m.add_cdrom(iso)
        registered(op, m, expected_name("SiCorp", "SI-0001"))


def _download(op: Operator, path: str) -> bytes:
    import urllib.request

    req = urllib.request.Request(op.local_url + path)
    with urllib.request.urlopen(req, timeout=120, context=op._ssl) as resp:
        data: bytes = resp.read()
    return data


# systemd (≥ 252) imports SMBIOS type 11 credentials in VMs: a drop-in that logs root in on ttyS0,
# so a console shell exists on an image we did not install (its root account is locked).
AUTOLOGIN = (
    "[Service]\nExecStart=\nExecStart=-/sbin/agetty -o '-p -f -- \\\\u' --noclear --autologin root - $TERM\n"
)


def test_unmanaged(op: Operator, results: Path) -> None:
    raw = OUT / "os.raw"
    if not raw.is_file():
        pytest.skip(f"{raw} missing (make iso)")
    with diagnostics(results):
        reg = op.registration("unmanaged", registration_spec())
        reg_file = op.registration_file(reg)
        cred = base64.b64encode(AUTOLOGIN.encode()).decode()
        m = Machine(
            "unmanaged",
            results_dir=results,
            memory_mb=2048,
            extra_args=[
                *smbios("PlainCorp", "Plain Box", "PLAIN-0001"),
                "-smbios",
                f"type=11,value=io.systemd.credential.binary:systemd.unit-dropin.serial-getty@ttyS0.service={cred}",
            ],
        )
        with m:
            m.add_disk(backing=raw, interface="nvme")
            m.boot()
            m.wait_for_shell(timeout=900)
            encoded = base64.b64encode(reg_file).decode()
            m.run("rm -f /tmp/reg.b64")
            for i in range(0, len(encoded), 512):
                m.run(f"echo -n '{encoded[i : i + 512]}' >> /tmp/reg.b64")
            m.run("base64 -d /tmp/reg.b64 > /tmp/registration.yaml")
            out = m.run(
                "elemental-register --install --no-toolkit --config-path /tmp/registration.yaml --debug",
                timeout=600,
            )
            assert "registration successful" in out, out
            name = expected_name("PlainCorp", "PLAIN-0001")
            inv = op.wait(f"inventory {name}", lambda: op.try_get("machineinventories", name), 60, 1)
            annotations = inv["metadata"].get("annotations") or {}
            assert any(k.endswith("os.unmanaged") and v == "true" for k, v in annotations.items()), (
                annotations
            )
            m.run("systemctl restart elemental-system-agent", check=False)

            def ready() -> bool:
                cur = op.try_get("machineinventories", name)
                return bool(cur and condition(cur, "Ready") == "True")

            op.wait(f"{name} Ready", ready, 300, 3)
            op.delete("machineinventories", name)
            deadline = time.monotonic() + 300
            while "SENTINEL" not in m.run(
                "test -f /var/lib/elemental/.unmanaged_reset && echo SENT''INEL", check=False
            ):
                assert time.monotonic() < deadline, "no /var/lib/elemental/.unmanaged_reset after the delete"
                time.sleep(5)
            op.wait(f"{name} deleted", lambda: op.try_get("machineinventories", name) is None, 120, 2)
            m.poweroff()
