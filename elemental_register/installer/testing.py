"""Helpers for tests and benchmarks: a tiny synthetic OS as an OCI layout, loop-backed disks."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from elemental_common import pe
from elemental_common.run import run

SD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")


def make_rootfs(root: Path, version: str = "1.0.0", payload_mib: int = 0) -> Path:
    """A directory shaped like the OS image contract: UKI, systemd-boot, os-release, /var."""
    (root / "usr/lib/systemd/boot/efi").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "boot/EFI/Linux").mkdir(parents=True)
    (root / "var/lib/demo").mkdir(parents=True)
    (root / "var/lib/demo/seed.txt").write_text("from the image's /var\n")
    (root / "usr/lib/os-release").write_text(
        f'ID=debian\nIMAGE_ID=elemental-os\nIMAGE_VERSION={version}\nPRETTY_NAME="Elemental OS"\n'
    )
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    sd = SD_BOOT.read_bytes() if SD_BOOT.is_file() else pe.build({".text": b"sd-boot"})
    (root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi").write_bytes(sd)
    uki = pe.build(
        {
            ".osrel": (root / "usr/lib/os-release").read_bytes(),
            ".cmdline": b"console=ttyS0,115200 root=PARTUUID=dead rw quiet",
            ".uname": b"6.12.0-test",
            ".linux": b"KERNEL-" + version.encode() * 100,
            ".initrd": b"INITRD-" + version.encode() * 100,
        }
    )
    (root / f"boot/EFI/Linux/elemental-os_{version}.efi").write_bytes(uki)
    if payload_mib:
        # incompressible data, so benchmarks move real bytes
        with open(root / "usr/bin/payload", "wb") as f:
            for _ in range(payload_mib):
                f.write(os.urandom(1 << 20))
    return root


def make_oci(layout: Path, tag: str, rootfs: Path, work: Path) -> str:
    """Pack `rootfs` as a one-layer image `layout:tag` with umoci; returns "oci:<layout>:<tag>"."""
    if not (layout / "index.json").exists():
        run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", f"{layout}:{tag}"])
    bundle = work / f"bundle-{tag}"
    run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)])
    for item in rootfs.iterdir():
        dst = bundle / "rootfs" / item.name
        if item.is_dir() and not item.is_symlink():
            shutil.copytree(item, dst, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dst, follow_symlinks=False)
    run(["umoci", "repack", "--image", f"{layout}:{tag}", str(bundle)])
    shutil.rmtree(bundle)
    return f"oci:{layout}:{tag}"


@contextlib.contextmanager
def loop_disk(path: Path, size: int) -> Iterator[str]:
    with open(path, "wb") as f:
        f.truncate(size)
    dev = run(["losetup", "--find", "--show", "--partscan", str(path)]).stdout.strip()
    try:
        yield dev
    finally:
        run(["losetup", "--detach", dev], check=False)


@contextlib.contextmanager
def mounted(dev: str, where: Path, *opts: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", *opts, dev, str(where)])
    try:
        yield where
    finally:
        run(["umount", str(where)], check=False)


@contextlib.contextmanager
def disk_partitions(image: Path) -> Iterator[dict[str, str]]:
    """{partition name: device} of a disk image attached to a loop device."""
    from elemental_register.installer import disk

    with loop_disk_existing(image) as dev:
        yield {p["name"]: p["node"] for p in disk.read_table(dev)}


@contextlib.contextmanager
def loop_disk_existing(path: Path) -> Iterator[str]:
    dev = run(["losetup", "--find", "--show", "--partscan", str(path)]).stdout.strip()
    try:
        run(["partx", "--update", dev], check=False)
        yield dev
    finally:
        run(["losetup", "--detach", dev], check=False)


@contextlib.contextmanager
def esp_dir(dev: str, work: Path) -> Iterator[Path]:
    """The ESP's files as a directory, written back afterwards, through mtools (the build host's
    kernel may have no vfat driver)."""
    d = work / "esp-files"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    names = run(["mdir", "-i", dev, "-b", "::/"]).stdout.split()
    run(["mcopy", "-s", "-n", "-m", "-i", dev, *names, str(d)])
    yield d
    label = run(["blkid", "-o", "value", "-s", "LABEL", dev], check=False).stdout.strip() or "COS_EFI"
    run(["mkfs.vfat", "-F", "32", "-n", label, dev])
    run(["mcopy", "-s", "-Q", "-m", "-i", dev, *[str(p) for p in sorted(d.iterdir())], "::/"])


def offline_upgrade(image: Path, system: str, booted: str, work: Path) -> str:
    """Run `elemental upgrade` against a disk image from the host, as if `booted` were running."""
    from elemental_register.installer import upgrade

    with disk_partitions(image) as parts:
        with esp_dir(parts["COS_EFI"], work) as esp, mounted(parts["COS_OEM"], work / "oem") as oem_dir:
            return upgrade.upgrade(system, esp=esp, oem_dir=oem_dir, booted=booted)


def esp_entries(image: Path, work: Path) -> list[str]:
    with disk_partitions(image) as parts:
        out = run(["mdir", "-i", parts["COS_EFI"], "-b", "::/loader/entries"]).stdout.split()
    return sorted(Path(p).name for p in out if p.endswith(".conf"))


class Vm:
    """QEMU (TCG: KVM is broken on these hosts) + OVMF booting a raw disk; serial to a log file."""

    def __init__(self, disk: Path, work: Path, mem: str = "2048") -> None:
        import subprocess

        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.log = work / "serial.log"
        self.log.write_bytes(b"")
        vars_fd = work / "OVMF_VARS.fd"
        if not vars_fd.exists():
            shutil.copy("/usr/share/OVMF/OVMF_VARS_4M.fd", vars_fd)
        self.monitor = work / "monitor.sock"
        self.proc = subprocess.Popen(
            [
                "qemu-system-x86_64",
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-smp",
                "2",
                "-m",
                mem,
                "-nographic",
                "-nodefaults",
                "-serial",
                f"file:{self.log}",
                "-drive",
                "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                "-drive",
                f"if=pflash,format=raw,file={vars_fd}",
                # virtio-scsi, not virtio-blk: mkosi's default initrd has no virtio_blk driver
                "-device",
                "virtio-scsi-pci,id=scsi",
                "-drive",
                f"if=none,id=hd,format=raw,file={disk}",
                "-device",
                "scsi-hd,drive=hd,bootindex=1",
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0",
                "-monitor",
                f"unix:{self.monitor},server,nowait",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def wait_for(self, *needles: str, timeout: float = 600, start: int = 0) -> str:
        """Wait until one of `needles` shows on the serial console after offset `start`."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.text()[start:]
            for n in needles:
                if n in t:
                    return n
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"qemu exited ({self.proc.returncode}); serial tail:\n{self.text()[-3000:]}"
                )
            time.sleep(2)
        raise AssertionError(f"none of {needles} within {timeout}s; serial tail:\n{self.text()[-3000:]}")

    def wait_for_re(self, pattern: str, timeout: float = 600, start: int = 0) -> str:
        import re
        import time

        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.text()[start:])
            if m:
                return m.group(0)
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"qemu exited ({self.proc.returncode}); serial tail:\n{self.text()[-3000:]}"
                )
            time.sleep(2)
        raise AssertionError(f"{pattern!r} not seen within {timeout}s; serial tail:\n{self.text()[-3000:]}")

    def command(self, cmd: str) -> None:
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.monitor))
            s.sendall(cmd.encode() + b"\n")

    def stop(self, timeout: float = 180) -> None:
        import subprocess

        if self.proc.poll() is None:
            try:
                self.command("system_powerdown")
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
