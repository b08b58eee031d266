"""Images of prebuilt verity slots on loop-backed disks (no VM): install, upgrade and reset are block
copies checked against the blob digest; the entry's dm-verity settings (root hash, hash offset)
describe the tree on the partition, and a flipped byte breaks it."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from installer_fixtures import (
    blob_path,
    disk_partitions,
    esp_dir,
    esp_entries,
    make_rootfs,
    make_slot_oci,
    mounted,
    offline_upgrade,
)

from elemental_common import osimage
from elemental_common.errors import Die
from elemental_common.run import run
from elemental_register.installer import oem, slot, source
from elemental_register.installer.build_disk import build_disk
from elemental_register.installer.disk import GiB
from elemental_register.installer.reset import reset

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("systemd-repart"),
        reason="needs root, loop devices and systemd-repart",
    ),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("slots")
    v1 = make_slot_oci(d / "layout", "1.0.0", make_rootfs(d / "r1", "1.0.0", payload_mib=8), d)
    v2 = make_slot_oci(d / "layout", "2.0.0", make_rootfs(d / "r2", "2.0.0"), d)
    return v1, v2


def slot_desc(system: str) -> tuple[Path, dict[str, object]]:
    src = source.check(source.parse(system))
    layout = Path(src.ref)
    man = source._manifest(layout, src.tag)
    desc = next(la for la in man["layers"] if la["mediaType"] == osimage.MEDIA_SLOT)
    return blob_path(layout, str(desc["digest"])), desc


def entry_options(raw: Path, name: str) -> dict[str, str]:
    with disk_partitions(raw) as parts:
        text = run(["mtype", "-i", parts["COS_EFI"], f"::/loader/entries/{name}"]).stdout
    opts = next(ln for ln in text.splitlines() if ln.startswith("options ")).split()[1:]
    return dict(o.split("=", 1) if "=" in o else (o, "") for o in opts)


def head_digest(dev: str, size: int) -> str:
    h = hashlib.sha256()
    with open(dev, "rb") as f:
        left = size
        while left:
            buf = f.read(min(1 << 20, left))
            h.update(buf)
            left -= len(buf)
    return "sha256:" + h.hexdigest()


def verity_check(dev: str, opts: dict[str, str], data_size: int) -> list[int]:
    """The data blocks of `dev` that dm-verity would refuse with the entry's `roothash=` and
    `hash-offset=` (the host kernel here has no device-mapper; the VM tests boot through it)."""
    offset = int(opts["systemd.verity_root_options"].removeprefix("hash-offset="))
    with open(dev, "rb") as f:
        f.seek(offset)
        sb = osimage.parse_verity_superblock(f.read(512))
    assert sb.data_size == data_size
    intact, bad = osimage.verify(dev, offset, opts["roothash"])
    assert intact, "the hash tree does not lead to the root hash"
    return bad


def test_install_is_a_block_copy_that_verity_opens(tmp_path: Path, images: tuple[str, str]) -> None:
    v1, _ = images
    blob, desc = slot_desc(v1)
    raw = tmp_path / "disk.raw"
    build_disk(v1, raw, 6 * GiB)
    opts = entry_options(raw, "elemental-a+3.conf")
    ann = desc["annotations"]
    assert isinstance(ann, dict)
    assert opts["roothash"] == ann[osimage.ANN_ROOTHASH]
    assert opts["root"] == "/dev/mapper/root" and opts["rootfstype"] == "erofs"
    assert opts["systemd.verity_root_options"] == f"hash-offset={ann[osimage.ANN_HASH_OFFSET]}"
    with disk_partitions(raw) as parts:
        table = {p: parts[p] for p in ("COS_SYSTEM_A", "COS_RECOVERY")}
        for dev in table.values():
            assert head_digest(dev, int(str(desc["size"]))) == desc["digest"]  # the blob, byte for byte
        uuid = run(
            ["blkid", "-p", "-o", "value", "-s", "PART_ENTRY_UUID", table["COS_SYSTEM_A"]]
        ).stdout.strip()
        assert opts["systemd.verity_root_data"] == f"/dev/disk/by-partuuid/{uuid}"
        with mounted(parts["COS_PERSISTENT"], tmp_path / "p") as p:
            assert (p / "lib/demo/seed.txt").is_file()  # seeded from the slot's /var
        data_size = int(str(ann[osimage.ANN_DATA_SIZE]))
        assert verity_check(table["COS_SYSTEM_A"], opts, data_size) == []
        # one flipped byte in the file system: its block no longer matches the tree
        with open(table["COS_SYSTEM_A"], "r+b") as f:
            f.seek(data_size // 2)
            byte = f.read(1)
            f.seek(data_size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert verity_check(table["COS_SYSTEM_A"], opts, data_size) == [data_size // 2 // 512]


def test_damaged_slot_blob_never_boots(tmp_path: Path, images: tuple[str, str]) -> None:
    v1, _ = images
    blob, _ = slot_desc(v1)
    layout = tmp_path / "bad"
    shutil.copytree(Path(source.parse(v1).ref), layout)
    bad = blob_path(layout, "sha256:" + blob.name)
    with open(bad, "r+b") as f:
        f.seek(4096)
        b = f.read(1)
        f.seek(4096)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(Die, match="does not match its digest"):
        build_disk(f"oci:{layout}:1.0.0", tmp_path / "disk.raw", 6 * GiB)
    assert not (tmp_path / "disk.raw").exists()  # build-disk renames only a complete disk


def test_upgrade_and_reset_copy_verity_slots(tmp_path: Path, images: tuple[str, str]) -> None:
    v1, v2 = images
    raw = tmp_path / "disk.raw"
    build_disk(v1, raw, 6 * GiB, {"elemental": {"reset": {"reboot": False}}})
    assert offline_upgrade(raw, v2, "a", tmp_path) == "b"
    _, d2 = slot_desc(v2)
    _, d1 = slot_desc(v1)
    ob = entry_options(raw, "elemental-b+3.conf")
    assert ob["roothash"] == d2["annotations"][osimage.ANN_ROOTHASH]  # type: ignore[index]
    with disk_partitions(raw) as parts:
        assert head_digest(parts["COS_SYSTEM_B"], int(str(d2["size"]))) == d2["digest"]
        with mounted(parts["COS_OEM"], tmp_path / "oem") as o:
            st = oem.load_system_state(o)
            # `elemental status --verify`: which slot is damaged, and where
            assert slot.verify_slots(st) == {
                n: {"intact": True, "bad_blocks": []} for n in ("a", "b", "recovery")
            }
            with open(parts["COS_SYSTEM_B"], "r+b") as f:
                f.seek(5000)
                byte = f.read(1)
                f.seek(5000)
                f.write(bytes([byte[0] ^ 1]))
            assert slot.verify_slots(st)["b"] == {"intact": False, "bad_blocks": [5000 // 512]}
            assert st["recovery"]["roothash"] == d1["annotations"][osimage.ANN_ROOTHASH]  # type: ignore[index]
            with esp_dir(parts["COS_EFI"], tmp_path) as esp:
                reset({"elemental": {"reset": {"reboot": False}}}, esp=esp, oem_dir=o, force=True)
        assert head_digest(parts["COS_SYSTEM_A"], int(str(d1["size"]))) == d1["digest"]
    assert esp_entries(raw) == ["elemental-a+3.conf", "elemental-recovery.conf"]
    oa = entry_options(raw, "elemental-a+3.conf")
    assert oa["roothash"] == d1["annotations"][osimage.ANN_ROOTHASH]  # type: ignore[index]
    assert "hash-offset=" in oa["systemd.verity_root_options"]


def test_reset_reads_a_verity_recovery_through_its_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Booted from a verity recovery, reset mounts the root's device-mapper device (named `root`),
    not the partition dm-verity holds; anywhere else, or for an older slot, the partition."""
    from elemental_register.installer import reset as reset_mod
    from elemental_register.installer import system

    sys_block = tmp_path / "block"
    for dm, name in (("dm-0", "other"), ("dm-1", "root")):
        (sys_block / dm / "dm").mkdir(parents=True)
        (sys_block / dm / "dm/name").write_text(name + "\n")
    layout = system.layout_from_state(
        {"partitions": dict.fromkeys(("esp", "oem", "recovery", "a", "b", "persistent"), "u")}
    )
    layout.part("recovery").device = "/dev/vda3"
    monkeypatch.setattr(system, "boot_mode", lambda: "recovery")
    verity = {"roothash": "ab" * 32}
    assert reset_mod._recovery_tree_device(layout, verity, sys_block) == "/dev/dm-1"
    assert reset_mod._recovery_tree_device(layout, {}, sys_block) == "/dev/vda3"
    monkeypatch.setattr(system, "boot_mode", lambda: "system")
    assert reset_mod._recovery_tree_device(layout, verity, sys_block) == "/dev/vda3"
