"""install, upgrade, reset and build-disk of the A/B system (see docs/installer.md)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elemental_common.errors import die
from elemental_common.pe import Uki
from elemental_common.run import run
from elemental_register.installer import boot, disk, oem, source

log = logging.getLogger("elemental.installer")

Progress = Callable[[str, int], None]
STATE_VERSION = 1


def _no_progress(stage: str, percent: int) -> None:
    log.info("[%3d%%] %s", percent, stage)


@dataclass
class SystemImage:
    """An OS tree turned into what a slot needs: erofs file, kernel/initrd, boot loader."""

    rootfs: Path
    erofs: Path | None  # where the built file system is (a slot device) once written
    size: int
    uki: Uki
    sd_boot: bytes
    os_release: dict[str, str]
    source: str
    compression: str = "none"

    @property
    def version(self) -> str:
        return self.os_release.get("IMAGE_VERSION") or self.os_release.get("VERSION_ID") or "unknown"


def find_uki(rootfs: Path) -> Path:
    ukis = sorted((rootfs / "boot/EFI/Linux").glob("*.efi"))
    if not ukis:
        die(
            f"the OS image has no UKI in /boot/EFI/Linux (looked in {rootfs})",
            "build the OS image with a unified kernel image (see docs/architecture.md, OS image contract)",
        )
    return ukis[-1]  # sorted: the newest version when several exist


def prepare_image(src: source.Source, work: Path, compression: str = "none") -> SystemImage:
    """Unpack the OS; the erofs is built later straight onto the slot (`build_slot`), so the
    image's bytes are written once. `size` is an upper bound until then."""
    rootfs = source.unpack(src, work)
    uki = Uki(find_uki(rootfs))
    sdb = rootfs / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    if not sdb.is_file():
        die(
            "the OS image has no systemd-boot (/usr/lib/systemd/boot/efi/systemd-bootx64.efi)",
            "add systemd-boot-efi to the OS image",
        )
    return SystemImage(
        rootfs,
        None,
        estimate_erofs(rootfs),
        uki,
        sdb.read_bytes(),
        source.os_release(rootfs),
        str(src),
        compression,
    )


def estimate_erofs(rootfs: Path) -> int:
    """Upper bound of an uncompressed erofs of `rootfs`: data in 4 KiB blocks + per-inode metadata."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += (st.st_size + 4095) // 4096 * 4096 + 256 + len(name)
    return total + 4 * 1024 * 1024


def build_slot(image: SystemImage, dev: str) -> int:
    """mkfs.erofs of the unpacked OS directly onto `dev`; returns the file system's size."""
    cmd = ["mkfs.erofs", "-T0", "--quiet"]  # no -L: erofs-utils 1.5 lacks it; slots go by PARTUUID
    if image.compression and image.compression != "none":
        cmd.append(f"-z{image.compression}")
    run([*cmd, dev, str(image.rootfs)], hint="mkfs.erofs (erofs-utils) must be installed")
    image.size = erofs_size(dev)
    image.erofs = Path(dev)
    return image.size


def copy_blocks(src: Path | str, dst: str, length: int | None = None, also: str | None = None) -> None:
    """Copy `length` bytes (all of src by default) onto the start of `dst` (and of `also`)."""
    outs = [open(d, "r+b") for d in ([dst, also] if also else [dst])]
    try:
        with open(src, "rb") as fi:
            total = length if length is not None else os.fstat(fi.fileno()).st_size
            done = 0
            while done < total:
                buf = fi.read(min(8 << 20, total - done))
                if not buf:
                    die(f"{src}: short read at {done} of {total} bytes")
                for fo in outs:
                    fo.write(buf)
                done += len(buf)
        for fo in outs:
            fo.flush()
            os.fsync(fo.fileno())
    finally:
        for fo in outs:
            fo.close()


def _on_tmpfs(path: Path) -> bool:
    try:
        return _fstype(path) == "tmpfs"
    except OSError:
        return False


def _fstype(path: Path) -> str:
    best, fstype = "", ""
    real = os.path.realpath(path)
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        mnt = parts[1]
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype


def mounts_for(layout: disk.Layout, *, recovery: bool = False) -> dict[str, str]:
    m = {
        "/oem": f"PARTUUID={layout.part('oem').uuid}|ext4|defaults",
        "/efi": f"PARTUUID={layout.part('esp').uuid}|vfat|umask=0077",
    }
    if not recovery:  # recovery must leave COS_PERSISTENT unmounted: reset reformats it
        m["/var"] = f"PARTUUID={layout.part('persistent').uuid}|ext4|defaults"
    return m


def layout_from_state(st: dict[str, Any]) -> disk.Layout:
    parts = st.get("partitions") or {}
    labels = {
        "esp": disk.LABEL_ESP,
        "oem": disk.LABEL_OEM,
        "recovery": disk.LABEL_RECOVERY,
        "a": disk.LABEL_SLOT["a"],
        "b": disk.LABEL_SLOT["b"],
        "persistent": disk.LABEL_PERSISTENT,
    }
    if set(parts) != set(labels):
        die(
            "the system state in COS_OEM does not describe the partitions",
            "this system was not installed by this installer, or COS_OEM was wiped; reinstall from the seed",
        )
    return disk.Layout([disk.Part(r, labels[r], 0, uuid=parts[r]) for r in labels])


def machine_id(layout: disk.Layout) -> str:
    """/etc is ephemeral, so the machine id comes from the command line: the persistent
    partition's UUID, stable across upgrades (journal directories in /var/log/journal stay)."""
    return "systemd.machine_id=" + layout.part("persistent").uuid.replace("-", "").lower()


def slot_entry(esp: Path, layout: disk.Layout, image: SystemImage, slot: str, generation: int) -> None:
    kdir = boot.write_kernel(esp, slot, image.uki)
    opts = boot.kernel_options(
        image.uki, layout.part(slot).uuid, slot, mounts_for(layout), extra=machine_id(layout)
    )
    title = f"{image.os_release.get('PRETTY_NAME', 'Elemental OS')} {image.version} (slot {slot.upper()})"
    boot.write_entry(
        esp,
        boot.slot_entry_id(slot),
        boot.entry_text(title, str(generation), "elemental", kdir, opts),
        boot.TRIES,
    )


def recovery_entry(esp: Path, layout: disk.Layout, image: SystemImage) -> None:
    kdir = boot.write_kernel(esp, "recovery", image.uki)
    opts = boot.kernel_options(
        image.uki,
        layout.part("recovery").uuid,
        "recovery",
        mounts_for(layout, recovery=True),
        mode="recovery",
        extra=machine_id(layout),
    )
    boot.write_entry(
        esp,
        boot.RECOVERY_ID,
        boot.entry_text(f"Elemental recovery {image.version}", "0", "elemental-recovery", kdir, opts),
        None,
    )


def slot_record(image: SystemImage, generation: int) -> dict[str, Any]:
    return {
        "source": image.source,
        "version": image.version,
        "size": image.size,
        "generation": generation,
        "time": int(time.time()),
    }


# ---------------------------------------------------------------------------------------- install


def format_persistent(layout: disk.Layout, var: Path) -> None:
    """(Re)create COS_PERSISTENT, seeded with the image's /var (mounted there at run time)."""
    part = layout.part("persistent")
    seed = ["-d", str(var)] if var.is_dir() else []
    run(["mkfs.ext4", "-q", "-F", "-L", disk.LABEL_PERSISTENT, "-U", part.uuid, *seed, part.device])


def install(
    config: dict[str, Any],
    progress: Progress | None = None,
    *,
    state: dict[str, Any] | None = None,
    disks: list[disk.Disk] | None = None,
    workdir: str | None = None,
) -> str:
    """Install onto the disk chosen by config; returns the device. Every check runs before the
    disk is written: unknown device, busy or too small disk, unreadable image."""
    progress = progress or _no_progress
    el = config.get("elemental") or {}
    inst = el.get("install") or {}
    progress("checking configuration", 0)
    if inst.get("iso"):
        die("install.iso is not supported", "put the OS on the seed medium or use install.system-uri")
    device = disk.select_device(inst, disks if disks is not None else disk.list_disks())
    target = disk.disk_info(device)
    if target.readonly:
        die(f"install device {device} is read-only")
    disk.check_not_in_use(target)
    src = source.check(source.parse(inst.get("system-uri")))
    with tempfile.TemporaryDirectory(prefix="elemental-install-", dir=workdir) as tmp:
        progress("unpacking the OS image", 5)
        image = prepare_image(src, Path(tmp), str(inst.get("compression", "none")))
        if inst.get("no-format"):
            layout = _existing_layout(target, image)
        else:
            layout = disk.plan_layout(target.size, image.size, inst.get("partitions"))
        progress("partitioning", 40)
        if not inst.get("no-format"):
            disk.write_table(target, layout)
        deploy(layout, image, config, state, Path(tmp), progress)
    progress("installed", 100)
    power(inst)
    return device


def _existing_layout(target: disk.Disk, image: SystemImage) -> disk.Layout:
    by_name = {p.get("name"): p for p in disk.read_table(target.path)}
    layout = disk.plan_layout(10**15, image.size)
    for p in layout.parts:
        found = by_name.get(p.label)
        if not found:
            die(
                f"install.no-format: {target.path} has no partition named {p.label}",
                "partition the disk as docs/installer.md describes, or drop no-format",
            )
        p.uuid, p.device, p.size = found["uuid"].lower(), found["node"], int(found["size"]) * 512
    return layout


def deploy(
    layout: disk.Layout,
    image: SystemImage,
    config: dict[str, Any],
    reg_state: dict[str, Any] | None,
    tmp: Path,
    progress: Progress,
) -> None:
    """Write every file system of a freshly partitioned disk. The ESP comes last: until it
    exists the disk does not boot, so firmware falls through to the seed and an install cut
    off half way is simply run again."""
    for role in ("a", "recovery"):
        if layout.part(role).size and image.size > layout.part(role).size:
            die(f"the OS image ({image.size >> 20} MiB) does not fit the {role} partition")
    progress("writing system slot A and recovery", 50)
    if _on_tmpfs(tmp):
        # build in RAM, then one read feeds both partitions: the disk sees only the two writes
        f = tmp / "system.erofs"
        build_slot(image, str(f))
        copy_blocks(f, layout.part("a").device, image.size, also=layout.part("recovery").device)
        f.unlink()
        image.erofs = Path(layout.part("a").device)
    else:
        size = build_slot(image, layout.part("a").device)
        copy_blocks(layout.part("a").device, layout.part("recovery").device, size)
    run(["wipefs", "--all", "--quiet", layout.part("b").device], check=False)
    progress("formatting persistent", 75)
    var = image.rootfs / "var"
    format_persistent(layout, var)
    progress("writing OEM configuration", 82)
    staging = tmp / "oem"
    staging.mkdir(mode=0o755)
    oem.oem_tree(staging, config, reg_state)
    oem.save_system_state(staging, new_state(layout, image))
    run(["mkfs.ext4", "-q", "-F", "-L", disk.LABEL_OEM, "-d", str(staging), layout.part("oem").device])
    progress("installing the boot loader", 90)
    esp = tmp / "esp"
    esp.mkdir()
    boot.install_loader(esp, image.sd_boot)
    slot_entry(esp, layout, image, "a", 1)
    recovery_entry(esp, layout, image)
    run(["mkfs.vfat", "-F", "32", "-n", disk.LABEL_ESP, layout.part("esp").device])
    run(
        [
            "mcopy",
            "-s",
            "-Q",
            "-m",
            "-i",
            layout.part("esp").device,
            *[str(p) for p in sorted(esp.iterdir())],
            "::/",
        ]
    )
    run(["sync"], check=False)


def new_state(layout: disk.Layout, image: SystemImage) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "partitions": {p.role: p.uuid for p in layout.parts},
        "generation": 1,
        "slots": {"a": slot_record(image, 1), "b": None},
        "recovery": slot_record(image, 0),
        "upgrade": None,
    }


def power(section: dict[str, Any], *, default_reboot: bool = False) -> None:
    if section.get("poweroff"):
        run(["systemctl", "poweroff"], check=False)
    elif section.get("reboot", default_reboot):
        run(["systemctl", "reboot"], check=False)


# ------------------------------------------------------------------------------------- build-disk


@contextlib.contextmanager
def loop_device(image: Path) -> Iterator[str]:
    dev = run(
        ["losetup", "--find", "--show", "--partscan", str(image)],
        hint="build-disk needs root and loop devices",
    ).stdout.strip()
    try:
        yield dev
    finally:
        run(["losetup", "--detach", dev], check=False)


def build_disk(
    system: str,
    output: Path,
    size: int,
    config: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> None:
    """A bootable raw disk image of the installed layout (no registration unless config has one)."""
    src = source.check(source.parse(system))  # fail before creating the output
    tmp_out = output.with_name(output.name + ".part")
    tmp_out.unlink(missing_ok=True)
    with open(tmp_out, "wb") as f:
        f.truncate(size)
    try:
        with loop_device(tmp_out) as dev:
            cfg = dict(config or {})
            el = dict(cfg.get("elemental") or {})
            el["install"] = {
                **(el.get("install") or {}),
                "device": dev,
                "system-uri": str(src),
                "reboot": False,
                "poweroff": False,
            }
            cfg["elemental"] = el
            install(cfg, progress)
        os.replace(tmp_out, output)
    finally:
        tmp_out.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- upgrade


def kernel_cmdline() -> dict[str, str]:
    try:
        words = Path("/proc/cmdline").read_text().split()
    except OSError:
        return {}
    return {k: v for k, _, v in (w.partition("=") for w in words)}


def booted_slot() -> str | None:
    return kernel_cmdline().get("elemental.slot")


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def find_esp() -> Path:
    for p in (Path("/efi"), Path("/boot/efi"), Path("/boot")):
        if (p / "loader/entries").is_dir():
            return p
    die(
        "cannot find the ESP (no loader/entries under /efi, /boot/efi or /boot)",
        "the installed OS mounts COS_EFI at /efi; is this an installed system?",
    )


def partition_device(partuuid: str) -> str:
    p = Path(f"/dev/disk/by-partuuid/{partuuid}")
    if p.exists():
        return str(p.resolve())
    out = run(["blkid", "-l", "-o", "device", "-t", f"PARTUUID={partuuid}"], check=False).stdout.strip()
    if not out:
        die(f"no partition with PARTUUID {partuuid}", "is the system disk attached?")
    return str(out)


def device_size(dev: str) -> int:
    with open(dev, "rb") as f:
        return f.seek(0, os.SEEK_END)


def upgrade(
    system: str,
    progress: Progress | None = None,
    *,
    esp: Path | None = None,
    oem_dir: Path = Path("/oem"),
    booted: str | None = None,
    workdir: str | None = None,
    recovery: bool = False,
) -> str:
    """Write `system` into the slot not running now and make it the one booted next with
    boot counting; the running slot stays as the fallback. Returns the target slot."""
    progress = progress or _no_progress
    st = oem.load_system_state(oem_dir)
    if not st:
        die(f"no system state in {oem_dir}", "upgrade runs on an installed system with COS_OEM at /oem")
    layout = layout_from_state(st)
    esp = esp or find_esp()
    booted = booted or booted_slot()
    if booted not in ("a", "b"):
        die(
            f"upgrade must run from slot A or B (booted: {booted or 'unknown'})",
            "boot the installed system, not recovery or the seed",
        )
    target = "b" if booted == "a" else "a"
    src = source.check(source.parse(system))
    # /tmp is RAM on the installed OS; the download and unpacked image (~800 MB) go to /var/tmp,
    # which lives on COS_PERSISTENT, so an upgrade does not need that much free memory.
    if workdir is None and Path("/var/tmp").is_dir():
        workdir = "/var/tmp"
    with tempfile.TemporaryDirectory(prefix="elemental-upgrade-", dir=workdir) as tmp:
        progress("unpacking the OS image", 5)
        image = prepare_image(src, Path(tmp))
        dev = partition_device(layout.part(target).uuid)
        if image.size > device_size(dev):
            die(
                f"the new OS ({image.size >> 20} MiB) does not fit slot {target.upper()} "
                f"({device_size(dev) >> 20} MiB)",
                "use a smaller image or reinstall with larger slots",
            )
        # the slot's entry goes first: a cut-off upgrade must never leave a bootable half-written slot
        boot.remove_entries(esp, boot.slot_entry_id(target))
        progress(f"writing system slot {target.upper()}", 40)
        build_slot(image, dev)
        gen = int(st.get("generation", 1)) + 1
        progress("installing the boot entry", 85)
        slot_entry(esp, layout, image, target, gen)
        if recovery:
            progress("writing recovery", 90)
            rdev = partition_device(layout.part("recovery").uuid)
            if image.size > device_size(rdev):
                die("the new OS does not fit the recovery partition")
            boot.remove_entries(esp, boot.RECOVERY_ID)
            copy_blocks(dev, rdev, image.size)
            recovery_entry(esp, layout, image)
            st["recovery"] = slot_record(image, 0)
        st["generation"] = gen
        st.setdefault("slots", {})[target] = slot_record(image, gen)
        st["upgrade"] = {
            "target": target,
            "from": booted,
            "source": image.source,
            "version": image.version,
            "generation": gen,
            "time": int(time.time()),
            "boot_id": boot_id(),
        }
        oem.save_system_state(oem_dir, st)
    run(["sync"], check=False)
    progress("upgraded", 100)
    return target


def upgrade_outcome(st: dict[str, Any], booted: str | None, current_boot: str) -> tuple[str, str] | None:
    """("failed"|"succeeded"|"pending", message) for the last upgrade, None if there was none.
    Failed = we rebooted since the upgrade and are not running the slot it targeted."""
    up = st.get("upgrade")
    if not up:
        return None
    if up.get("boot_id") == current_boot:
        return "pending", f"upgrade to {up.get('version')} in slot {up['target'].upper()} waits for a reboot"
    if booted == up.get("target"):
        return "succeeded", f"running {up.get('version')} from slot {up['target'].upper()}"
    return "failed", (
        f"upgrade to {up.get('version')} ({up.get('source')}) in slot {up['target'].upper()} "
        f"failed to boot; rolled back to slot {str(booted).upper()}"
    )


# ------------------------------------------------------------------------------------------ reset


def reset(
    config: dict[str, Any],
    progress: Progress | None = None,
    *,
    esp: Path | None = None,
    oem_dir: Path = Path("/oem"),
    state: dict[str, Any] | None = None,
    force: bool = False,
) -> None:
    """From recovery: wipe persistent (and OEM), put the recovery image back into slot A as the
    only system, rewrite the OEM files from the (new) registration config."""
    progress = progress or _no_progress
    rs = (config.get("elemental") or {}).get("reset") or {}
    mode = kernel_cmdline().get("elemental.mode")
    if mode != "recovery" and not force:
        die("reset only runs from the recovery system", "the reset plan boots recovery first")
    st = oem.load_system_state(oem_dir)
    layout = layout_from_state(st)
    esp = esp or find_esp()
    for p in layout.parts:
        p.device = partition_device(p.uuid)
    rec = st.get("recovery") or {}
    with tempfile.TemporaryDirectory(prefix="elemental-reset-") as tmp:
        tmpd = Path(tmp)
        rec_mnt = tmpd / "recovery"
        rec_mnt.mkdir()
        run(["mount", "-o", "ro", "-t", "erofs", layout.part("recovery").device, str(rec_mnt)])
        try:
            uki = Uki(find_uki(rec_mnt))
            image = SystemImage(
                rec_mnt,
                Path(layout.part("recovery").device),
                int(rec.get("size") or 0),
                uki,
                b"",
                source.os_release(rec_mnt),
                str(rec.get("source", "recovery")),
            )
            if rs.get("reset-persistent", True):
                progress("formatting persistent", 10)
                var = rec_mnt / "var"
                format_persistent(layout, var)
        finally:
            run(["umount", str(rec_mnt)], check=False)
        progress("restoring system slot A", 30)
        size = image.size or erofs_size(layout.part("recovery").device)
        boot.remove_entries(esp, boot.slot_entry_id("a"))
        boot.remove_entries(esp, boot.slot_entry_id("b"))
        copy_blocks(layout.part("recovery").device, layout.part("a").device, size)
        run(["wipefs", "--all", "--quiet", layout.part("b").device], check=False)
        gen = int(st.get("generation", 1)) + 1
        image.size = size
        slot_entry(esp, layout, image, "a", gen)
        st.update(generation=gen, upgrade=None, slots={"a": {**rec, "generation": gen}, "b": None})
        progress("writing OEM configuration", 80)
        if rs.get("reset-oem", True):
            _reformat_oem(layout, oem_dir, tmpd)
        oem.oem_tree(oem_dir, config, state)
        (oem_dir / oem.OEM_RESET_MARK).unlink(missing_ok=True)
        (oem_dir / "reset-cloud-config.yaml").unlink(missing_ok=True)
        oem.save_system_state(oem_dir, st)
    run(["sync"], check=False)
    progress("reset", 100)
    power(rs, default_reboot=True)


def _reformat_oem(layout: disk.Layout, oem_dir: Path, tmp: Path) -> None:
    dev = layout.part("oem").device
    mounted = os.path.ismount(oem_dir)
    if mounted:
        run(["umount", str(oem_dir)])
    run(["mkfs.ext4", "-q", "-F", "-L", disk.LABEL_OEM, dev])
    if mounted:
        run(["mount", dev, str(oem_dir)])


def erofs_size(dev: str) -> int:
    import struct

    with open(dev, "rb") as f:
        f.seek(1024)
        sb = f.read(64)
    (magic,) = struct.unpack_from("<I", sb, 0)
    if magic != 0xE0F5E1E2:
        die(f"{dev} holds no erofs file system", "the recovery partition is damaged; reinstall from the seed")
    blkszbits = sb[12]
    (blocks,) = struct.unpack_from("<I", sb, 36)
    return int(blocks) << blkszbits


# ---------------------------------------------------------------------------------------- blessing

LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
EFIVARS = Path("/sys/firmware/efi/efivars")


def read_efi_string(name: str, efivars: Path = EFIVARS) -> str | None:
    try:
        raw = (efivars / f"{name}-{LOADER_GUID}").read_bytes()
    except OSError:
        return None
    return raw[4:].decode("utf-16-le", errors="replace").rstrip("\0")  # 4 bytes of attributes first


def bless(
    esp: Path | None = None,
    efivars: Path = EFIVARS,
    systemd_bless: Path = Path("/usr/lib/systemd/systemd-bless-boot"),
) -> str | None:
    """Mark the booted, counted entry good (what systemd-bless-boot does after boot-complete.target).

    Used only when the OS lacks systemd-bless-boot (Debian ships it in the systemd-boot package);
    elemental-boot-check.service runs it once the agent is up. Returns the new entry name."""
    if systemd_bless.exists():
        return None  # systemd-bless-boot.service does it after boot-complete.target
    path = read_efi_string("LoaderBootCountPath", efivars)
    if not path:
        return None
    esp = esp or find_esp()
    current = esp / path.replace("\\", "/").lstrip("/")
    entry = boot.parse_entry_name(current)
    if entry is None or entry.tries_left is None or not current.exists():
        return None
    good = current.with_name(f"{entry.id}.conf")
    os.replace(current, good)
    log.info("blessed %s -> %s", current.name, good.name)
    return good.name
