"""systemd-boot on the ESP: loader, one Type #1 entry per slot with boot counting, recovery entry.

Which slot boots is decided by systemd-boot's own ordering, not by a `default` line: all slot
entries share `sort-key elemental`, so the highest `version` (a generation number the installer
bumps on every install/upgrade) sorts first, and an entry whose tries are exhausted (`+0-N`) sorts
last. A fresh slot therefore boots first, a slot that failed its tries drops behind the other one,
and when both are bad the recovery entry (sort-key `elemental-recovery`) is first. A `default`
pattern would pin the entry even after it went bad.
"""

from __future__ import annotations

import base64
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from elemental_common.consts import RECOVERY_ENTRY_ID
from elemental_common.errors import die
from elemental_common.pe import Uki
from elemental_register.installer import disk, durable
from elemental_register.installer.image import SystemImage
from elemental_register.installer.slot import Verity

ENTRY_RE = re.compile(r"^(?P<id>.+?)(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.conf$")
TRIES = 3
LOADER_CONF = "timeout 3\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n"
RECOVERY_ID = RECOVERY_ENTRY_ID

# Tokens of the UKI's own command line that the installer decides per slot.
_OWN = re.compile(
    r"^(root|rootfstype|rootflags|roothash|usrhash|mount\.usr|mount\.usrfstype|"
    r"systemd\.volatile|systemd\.verity_root_[a-z]+|elemental\.[a-z]+)=|^(ro|rw)$"
)

# A boot that ends in the emergency target reboots instead of waiting at a locked console, so a
# broken slot uses up its tries and systemd-boot falls back without help (credential drop-ins,
# systemd >= 256, read by systemd-debug-generator in the initrd and the host).
_EMERGENCY_REBOOT = "[Service]\nExecStart=\nExecStart=/usr/bin/systemctl reboot --force\n"


@dataclass
class Entry:
    path: Path
    id: str  # file name without counter and .conf
    tries_left: int | None
    tries_done: int | None

    @property
    def bad(self) -> bool:
        return self.tries_left == 0


def parse_entry_name(path: Path) -> Entry | None:
    m = ENTRY_RE.match(path.name)
    if not m:
        return None
    left, done = m.group("left"), m.group("done")
    return Entry(
        path,
        m.group("id"),
        int(left) if left is not None else None,
        int(done) if done is not None else (0 if left is not None else None),
    )


def entries(esp: Path) -> list[Entry]:
    d = esp / "loader/entries"
    out = [parse_entry_name(p) for p in sorted(d.glob("*.conf"))] if d.is_dir() else []
    return [e for e in out if e]


def slot_entry_id(slot: str) -> str:
    return f"elemental-{slot}"


def verity_options(root_partuuid: str, verity: Verity) -> list[str]:
    """systemd-veritysetup-generator's settings for a slot whose hash area follows its erofs on
    the same partition: the initrd opens /dev/mapper/root through dm-verity with the UKI's root
    hash, so every block read from the slot is checked against it."""
    dev = f"/dev/disk/by-partuuid/{root_partuuid.lower()}"
    return [
        "root=/dev/mapper/root",
        f"roothash={verity.roothash}",
        f"systemd.verity_root_data={dev}",
        f"systemd.verity_root_hash={dev}",
        f"systemd.verity_root_options=hash-offset={verity.hash_offset}",
    ]


def kernel_options(
    uki: Uki,
    root_partuuid: str,
    slot: str,
    mounts: dict[str, str],
    *,
    mode: str = "system",
    extra: str = "",
    verity: Verity | None = None,
) -> str:
    """Command line for a slot: the UKI's own minus what we set, plus root, mounts and mode."""
    keep = [t for t in shlex.split(uki.cmdline) if not _OWN.match(t)]
    root = verity_options(root_partuuid, verity) if verity else [f"root=PARTUUID={root_partuuid}"]
    opts = [
        *root,
        "rootfstype=erofs",
        "ro",
        # the image is read-only; an overlay with a tmpfs upper makes / writable (state that
        # must survive lives on COS_PERSISTENT at /var and in COS_OEM)
        "systemd.volatile=overlay",
        f"elemental.slot={slot}",
        f"elemental.mode={mode}",
    ]
    for where, (what, fstype, options) in sorted((w, _split(v)) for w, v in mounts.items()):
        opts.append(f"systemd.mount-extra={what}:{where}:{fstype}:{options}")
    cred = base64.b64encode(_EMERGENCY_REBOOT.encode()).decode()
    opts.append(f"systemd.set_credential_binary=systemd.unit-dropin.emergency.service:{cred}")
    return " ".join([*opts, *keep, *shlex.split(extra)])


def _split(v: str) -> tuple[str, str, str]:
    what, fstype, options = v.split("|")
    return what, fstype, options


def entry_text(title: str, version: str, sort_key: str, kdir: str, options: str) -> str:
    return (
        f"title {title}\nsort-key {sort_key}\nversion {version}\n"
        f"linux /{kdir}/linux\ninitrd /{kdir}/initrd\noptions {options}\n"
    )


def write_kernel(esp: Path, name: str, uki: Uki) -> str:
    kdir = f"EFI/elemental/{name}"
    (esp / kdir).mkdir(parents=True, exist_ok=True)
    durable.write_atomic(esp / kdir / "linux", uki.linux)
    durable.write_atomic(esp / kdir / "initrd", uki.initrd)
    return kdir


def remove_entries(esp: Path, entry_id: str) -> None:
    """Remove the entries of `entry_id`, durably: the slot they point at is rewritten next."""
    removed = False
    for e in entries(esp):
        if e.id == entry_id:
            e.path.unlink()
            removed = True
    if removed:
        durable.fsync_path(esp / "loader/entries")


def write_entry(esp: Path, entry_id: str, text: str, tries: int | None) -> Path:
    """Replace the entries of `entry_id` by one with `tries` (None: not counted)."""
    remove_entries(esp, entry_id)
    name = f"{entry_id}+{tries}.conf" if tries is not None else f"{entry_id}.conf"
    path = esp / "loader/entries" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    durable.write_atomic(path, text.encode())
    return path


def install_loader(esp: Path, sd_boot: bytes) -> None:
    for rel in ("EFI/systemd/systemd-bootx64.efi", "EFI/BOOT/BOOTX64.EFI"):
        (esp / rel).parent.mkdir(parents=True, exist_ok=True)
        durable.write_atomic(esp / rel, sd_boot)
    (esp / "loader/entries").mkdir(parents=True, exist_ok=True)
    durable.write_atomic(esp / "loader/loader.conf", LOADER_CONF.encode())
    durable.write_atomic(esp / "loader/entries.srel", b"type1\n")


def find_esp() -> Path:
    for p in (Path("/efi"), Path("/boot/efi"), Path("/boot")):
        if (p / "loader/entries").is_dir():
            return p
    die(
        "cannot find the ESP (no loader/entries under /efi, /boot/efi or /boot)",
        "the installed OS mounts COS_EFI at /efi; is this an installed system?",
    )


def mounts_for(layout: disk.Layout, *, recovery: bool = False) -> dict[str, str]:
    m = {
        "/oem": f"PARTUUID={layout.part('oem').uuid}|ext4|defaults",
        "/efi": f"PARTUUID={layout.part('esp').uuid}|vfat|umask=0077",
    }
    if not recovery:  # recovery must leave COS_PERSISTENT unmounted: reset reformats it
        m["/var"] = f"PARTUUID={layout.part('persistent').uuid}|ext4|defaults"
    return m


def machine_id(layout: disk.Layout) -> str:
    """/etc is ephemeral, so the machine id comes from the command line: the persistent
    partition's UUID, stable across upgrades (journal directories in /var/log/journal stay)."""
    return "systemd.machine_id=" + layout.part("persistent").uuid.replace("-", "").lower()


def slot_entry(esp: Path, layout: disk.Layout, image: SystemImage, slot: str, generation: int) -> None:
    """The counted entry of `slot` (its kernel, initrd and command line); the slot is written first."""
    kdir = write_kernel(esp, slot, image.uki)
    opts = kernel_options(
        image.uki,
        layout.part(slot).uuid,
        slot,
        mounts_for(layout),
        extra=machine_id(layout),
        verity=image.verity,
    )
    title = f"{image.os_release.get('PRETTY_NAME', 'Elemental OS')} {image.version} (slot {slot.upper()})"
    write_entry(esp, slot_entry_id(slot), entry_text(title, str(generation), "elemental", kdir, opts), TRIES)


def recovery_entry(esp: Path, layout: disk.Layout, image: SystemImage) -> None:
    kdir = write_kernel(esp, "recovery", image.uki)
    opts = kernel_options(
        image.uki,
        layout.part("recovery").uuid,
        "recovery",
        mounts_for(layout, recovery=True),
        mode="recovery",
        extra=machine_id(layout),
        verity=image.verity,
    )
    write_entry(
        esp,
        RECOVERY_ID,
        entry_text(f"Elemental recovery {image.version}", "0", "elemental-recovery", kdir, opts),
        None,
    )
