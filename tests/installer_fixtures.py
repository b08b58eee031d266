"""Installer test fixtures (no VM): a tiny synthetic OS or a derived version of the real one as an OCI
layout, loop-backed disks, ESP access."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elemental_common import osimage, pe
from elemental_common.run import run
from elemental_register.installer import disk, upgrade

SD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")


def build_pe(sections_: dict[str, bytes]) -> bytes:
    """A minimal PE file holding `sections_` (what elemental_common.pe reads), for synthetic UKIs."""
    file_align = 0x200
    n = len(sections_)
    header_size = 0x40 + 4 + 20 + 0xF0 + 40 * n
    ptr = (header_size + file_align - 1) // file_align * file_align
    table = b""
    body = b""
    vaddr = 0x1000
    for name, payload in sections_.items():
        raw = (len(payload) + file_align - 1) // file_align * file_align
        table += struct.pack(
            "<8sIIIIIIHHI", name.encode()[:8], len(payload), vaddr, raw, ptr + len(body), 0, 0, 0, 0, 0
        )
        body += payload + b"\0" * (raw - len(payload))
        vaddr += (len(payload) + 0xFFF) // 0x1000 * 0x1000 + 0x1000
    dos = b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x40)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, n, 0, 0, 0, 0xF0, 0x22)
    opt = struct.pack("<H", 0x20B) + b"\0" * (0xF0 - 2)
    head = dos + coff + opt + table
    return head + b"\0" * (ptr - len(head)) + body


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
    sd = SD_BOOT.read_bytes() if SD_BOOT.is_file() else build_pe({".text": b"sd-boot"})
    (root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi").write_bytes(sd)
    uki = build_pe(
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
    """A new sparse file of `size` bytes on a loop device (partitions scanned)."""
    with open(path, "wb") as f:
        f.truncate(size)
    dev = run(["losetup", "--find", "--show", "--partscan", str(path)]).stdout.strip()
    try:
        yield dev
    finally:
        run(["losetup", "--detach", dev], check=False)


@contextlib.contextmanager
def loop_disk_existing(path: Path) -> Iterator[str]:
    """An existing disk image on a loop device, its partition table read."""
    dev = run(["losetup", "--find", "--show", "--partscan", str(path)]).stdout.strip()
    try:
        run(["partx", "--update", dev], check=False)
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
    with loop_disk_existing(image) as dev:
        yield {p["name"]: p["node"] for p in disk.read_table(dev)}


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
    with disk_partitions(image) as parts:
        with esp_dir(parts["COS_EFI"], work) as esp, mounted(parts["COS_OEM"], work / "oem") as oem_dir:
            return upgrade.upgrade(system, esp=esp, oem_dir=oem_dir, booted=booted)


def esp_entries(image: Path) -> list[str]:
    """The boot loader entry files on a disk image's ESP (e.g. elemental-a.conf, elemental-b+0-3.conf)."""
    with disk_partitions(image) as parts:
        out = run(["mdir", "-i", parts["COS_EFI"], "-b", "::/loader/entries"]).stdout.split()
    return sorted(Path(p).name for p in out if p.endswith(".conf"))


# ---------------------------------------------------------------- OCI layouts

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def blob_path(layout: Path, digest: str) -> Path:
    """Where an OCI layout keeps the blob `digest` (``sha256:<hex>``)."""
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def put_blob(layout: Path, data: bytes) -> dict[str, Any]:
    """Store `data` as a blob of `layout`; returns its descriptor's digest and size."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


# ---------------------------------------------------------------- images of prebuilt verity slots

# The os profile's slot definitions (profiles/os/repart), without the ESP: systemd-repart builds
# the erofs and its dm-verity hash tree here as it does in the image build.
REPART_SLOT = {
    "10-root.conf": "[Partition]\nType=root\nFormat=erofs\nCopyFiles=/\nExcludeFiles=/boot/\n"
    "Verity=data\nVerityMatchKey=root\nMinimize=best\nSplitName=slot\n",
    "11-root-verity.conf": "[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=root\n"
    "Minimize=best\nSplitName=verity\n",
}


def make_slot(tree: Path, work: Path, compression: str = "lz4") -> tuple[Path, Path, str]:
    """(erofs, hash tree, root hash) of `tree`, by systemd-repart (offline, as in the image build)."""
    work.mkdir(parents=True, exist_ok=True)
    defs = work / "repart.d"
    defs.mkdir(exist_ok=True)
    for name, text in REPART_SLOT.items():
        (defs / name).write_text(text)
    img = work / "img.raw"
    img.unlink(missing_ok=True)
    run(
        [
            "systemd-repart",
            "--empty=create",
            "--size=auto",
            "--dry-run=no",
            "--offline=yes",
            "--no-pager",
            "--json=off",
            f"--definitions={defs}",
            f"--root={tree}",
            "--split=yes",
            str(img),
        ],
        env={**os.environ, "SYSTEMD_REPART_MKFS_OPTIONS_EROFS": f"-z{compression}" if compression else ""},
    )
    img.unlink()
    slot, verity = work / "img.slot.raw", work / "img.verity.raw"
    head = verity.read_bytes()[: 1 << 20]
    return slot, verity, osimage.top_hash(osimage.parse_verity_superblock(head), head)


def patch_pe_section(data: bytearray, name: str, payload: bytes) -> None:
    """Replace section `name`'s contents in place (it must fit its raw size): a UKI's .cmdline
    or .osrel for a derived test image, without rebuilding the UKI."""
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    (count,) = struct.unpack_from("<H", data, pe + 6)
    (opt,) = struct.unpack_from("<H", data, pe + 20)
    for i in range(count):
        at = pe + 24 + opt + 40 * i
        raw_name, _vsize, _va, rawsize, rawptr = struct.unpack_from("<8sIIII", data, at)
        if raw_name.rstrip(b"\0").decode() == name:
            assert len(payload) <= rawsize, f"{name}: {len(payload)} bytes do not fit {rawsize}"
            data[rawptr : rawptr + rawsize] = payload + b"\0" * (rawsize - len(payload))
            struct.pack_into("<I", data, at + 8, len(payload))
            return
    raise KeyError(name)


def _packer() -> Any:
    """imagebuild's packer (the repository root is not on sys.path under plain `pytest`)."""
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.append(root)
    from imagebuild import osimage as packer

    return packer


def make_slot_oci(layout: Path, tag: str, rootfs: Path, work: Path) -> str:
    """`rootfs` (make_rootfs) as an image of a prebuilt verity slot, `layout:tag`, with a synthetic
    UKI that carries the slot's root hash; returns "oci:<layout>:<tag>"."""
    slot, verity, roothash = make_slot(rootfs, work / f"slot-{tag}")
    uki = work / f"slot-{tag}" / "uki.efi"
    version = tag.encode()
    uki.write_bytes(
        build_pe(
            {
                ".osrel": (rootfs / "usr/lib/os-release").read_bytes(),
                ".cmdline": f"roothash={roothash} console=ttyS0,115200 quiet".encode(),
                ".uname": b"6.12.0-test",
                ".linux": b"KERNEL-" + version * 100,
                ".initrd": b"INITRD-" + version * 100,
            }
        )
    )
    sd_boot = rootfs / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    _packer().pack(layout, tag, slot=slot, verity=verity, uki=uki, sd_boot=sd_boot, labels={})
    shutil.rmtree(work / f"slot-{tag}")
    return f"oci:{layout}:{tag}"


def _manifest_of(layout: Path) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    data: dict[str, Any] = json.loads(blob_path(layout, index["manifests"][0]["digest"]).read_text())
    return data


def _with_version(os_release: bytes, version: str) -> bytes:
    lines = [ln for ln in os_release.decode().splitlines() if not ln.startswith("IMAGE_VERSION=")]
    return ("\n".join([*lines, f'IMAGE_VERSION="{version}"']) + "\n").encode()


def derive_slot_version(
    base: Path, dest: Path, version: str, files: dict[str, tuple[bytes, int]] | None = None
) -> str:
    """`derive_os_version` for an image of prebuilt slots: its tree (the base slot mounted) with
    the new os-release and `files`, as a new verity slot (lz4: quicker than the build's lz4hc),
    and the base UKI with that slot's root hash and os-release. A minute, no mkosi."""
    man = _manifest_of(base)
    by = {la["mediaType"]: la for la in man["layers"]}
    work = dest.parent / f".{dest.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    tree = work / "tree"
    tree.mkdir(parents=True)
    with mounted(
        str(blob_path(base, by[osimage.MEDIA_SLOT]["digest"])), work / "mnt", "-o", "ro,loop", "-t", "erofs"
    ):
        run(["cp", "-a", f"{work / 'mnt'}/.", str(tree)])
    osrel = tree / "usr/lib/os-release"
    osrel.write_bytes(_with_version(osrel.read_bytes(), version))
    for path, (content, mode) in (files or {}).items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    slot, verity, roothash = make_slot(tree, work / "slot")
    shutil.rmtree(tree)
    uki = bytearray(blob_path(base, by[osimage.MEDIA_UKI]["digest"]).read_bytes())
    secs = pe.sections(bytes(uki))
    cmdline = " ".join(
        f"roothash={roothash}" if t.startswith("roothash=") else t
        for t in secs[".cmdline"].rstrip(b"\0").decode().split()
    )
    patch_pe_section(uki, ".cmdline", cmdline.encode())
    patch_pe_section(uki, ".osrel", _with_version(secs[".osrel"].rstrip(b"\0"), version))
    (work / "uki.efi").write_bytes(uki)
    _packer().pack(
        dest,
        version,
        slot=slot,
        verity=verity,
        uki=work / "uki.efi",
        sd_boot=blob_path(base, by[osimage.MEDIA_SYSTEMD_BOOT]["digest"]),
        labels={"org.opencontainers.image.version": version},
    )
    shutil.rmtree(work)
    return version


def derive_os_version(
    base: Path, dest: Path, version: str, files: dict[str, tuple[bytes, int]] | None = None
) -> str:
    """``dest`` = the OS image of the layout ``base`` plus one layer: /usr/lib/os-release with
    IMAGE_VERSION=version and `files` ({path: (content, mode)}); tagged `version`. Seconds, no
    rebuild: the big base layer is hard-linked. Returns the tag. An image of prebuilt verity
    slots gets a new slot instead (`derive_slot_version`)."""
    if any(la.get("mediaType") == osimage.MEDIA_SLOT for la in _manifest_of(base).get("layers", [])):
        return derive_slot_version(base, dest, version, files)
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "blobs" / "sha256").mkdir(parents=True)
    index = json.loads((base / "index.json").read_text())
    mdesc = index["manifests"][0]
    manifest = json.loads(blob_path(base, mdesc["digest"]).read_text())
    config = json.loads(blob_path(base, manifest["config"]["digest"]).read_text())
    os_release = b""
    for layer in manifest["layers"]:
        src = blob_path(base, layer["digest"])
        dst = blob_path(dest, layer["digest"])
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        with tarfile.open(src, "r|*") as tf:
            for member in tf:
                if member.name.lstrip("./") == "usr/lib/os-release" and member.isfile():
                    f = tf.extractfile(member)
                    assert f is not None
                    os_release = f.read()
                    break
    lines = [ln for ln in os_release.decode().splitlines() if not ln.startswith("IMAGE_VERSION=")]
    lines.append(f'IMAGE_VERSION="{version}"')
    entries = {"usr/lib/os-release": ("\n".join(lines) + "\n").encode(), **{}}
    modes = {"usr/lib/os-release": 0o644}
    for path, (content, mode) in (files or {}).items():
        entries[path.lstrip("/")] = content
        modes[path.lstrip("/")] = mode
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs: set[str] = set()
        for path in sorted(entries):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                    tf.addfile(ti)
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(entries[path]), modes[path], int(time.time())
            tf.addfile(ti, io.BytesIO(entries[path]))
    layer_tar = raw.getvalue()
    layer_desc = {"mediaType": OCI_LAYER_GZIP, **put_blob(dest, gzip.compress(layer_tar, mtime=0))}
    config.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(
        "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    )
    config.setdefault("history", []).append({"created_by": f"tests: IMAGE_VERSION={version}"})
    cfg_desc = {"mediaType": manifest["config"]["mediaType"], **put_blob(dest, json.dumps(config).encode())}
    new_manifest = {**manifest, "config": cfg_desc, "layers": [*manifest["layers"], layer_desc]}
    man_desc = {
        "mediaType": mdesc.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
        **put_blob(dest, json.dumps(new_manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": version},
    }
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [man_desc],
            }
        )
    )
    return version
