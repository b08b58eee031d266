"""The OS OCI image of prebuilt verity slots, packed from mkosi's split artifacts (format: osimage)."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

from elemental_common import osimage
from elemental_common.errors import die
from elemental_common.pe import Uki
from elemental_common.run import run

CHUNK = 8 << 20


def _blob(blobs: Path, parts: list[tuple[Path, int, int]]) -> tuple[str, int]:
    """One blob of `parts`: (file, bytes to take from it, zero-pad the blob up to this size)."""
    tmp = blobs / ".incoming"
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for path, length, upto in parts:
            with open(path, "rb") as f:
                left = length
                while left:
                    buf = f.read(min(CHUNK, left))
                    if not buf:
                        die(f"{path}: shorter than {length} bytes")
                    h.update(buf)
                    out.write(buf)
                    left -= len(buf)
            pad = upto - out.tell()
            if pad > 0:
                h.update(b"\0" * pad)
                out.write(b"\0" * pad)
        size = out.tell()
    digest = h.hexdigest()
    tmp.rename(blobs / digest)
    return f"sha256:{digest}", size


def _json_blob(blobs: Path, obj: dict[str, Any]) -> tuple[str, int]:
    data = json.dumps(obj, sort_keys=True).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def slot_parts(slot: Path, verity: Path) -> tuple[int, int, int, str]:
    """(data size, hash offset, total size, root hash) of the slot blob made of `slot` and
    `verity`, checked: the hash tree must cover the erofs."""
    head = verity.read_bytes()[: 1 << 20]
    try:
        sb = osimage.parse_verity_superblock(head)
        roothash = osimage.top_hash(sb, head)
    except ValueError as e:
        die(f"{verity}: {e}", "the os profile's repart definitions must make a Verity=hash partition")
    if sb.data_size > slot.stat().st_size:
        die(f"{verity} covers {sb.data_size} bytes, {slot} has only {slot.stat().st_size}")
    # repart pads a small partition to its minimum size; the tree covers the file system only
    offset = osimage.align(sb.data_size)
    return sb.data_size, offset, offset + sb.hash_area_size(), roothash


def systemd_boot_from_esp(esp: Path, dest: Path) -> Path:
    """systemd-boot out of the build-time ESP image (mtools: no mount)."""
    run(
        ["mcopy", "-n", "-i", str(esp), "::/EFI/systemd/systemd-bootx64.efi", str(dest)],
        hint="the build-time ESP must hold systemd-boot (Bootloader=systemd-boot; mtools installed)",
    )
    return dest


def pack(
    layout: Path, tag: str, *, slot: Path, verity: Path, uki: Path, sd_boot: Path, labels: dict[str, str]
) -> str:
    """Add `tag` to the OCI layout `layout` (created if need be; a tag of that name is replaced):
    the slot, UKI and systemd-boot layers. The UKI's `roothash=` must be the slot's. Returns the
    manifest digest."""
    data_size, offset, total, roothash = slot_parts(slot, verity)
    cmdline = shlex.split(Uki(uki).cmdline)
    if f"roothash={roothash}" not in cmdline:
        die(
            f"{uki}: its command line has no roothash={roothash} (the slot's hash tree)",
            "build the os profile as a disk with Verity= partitions (mkosi adds roothash= to the UKI)",
        )
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layers: list[dict[str, Any]] = []
    d, n = _blob(blobs, [(slot, data_size, offset), (verity, total - offset, total)])
    layers.append(
        {
            "mediaType": osimage.MEDIA_SLOT,
            "digest": d,
            "size": n,
            "annotations": {
                osimage.ANN_ROOTHASH: roothash,
                osimage.ANN_HASH_OFFSET: str(offset),
                osimage.ANN_DATA_SIZE: str(data_size),
            },
        }
    )
    for media, path in ((osimage.MEDIA_UKI, uki), (osimage.MEDIA_SYSTEMD_BOOT, sd_boot)):
        size = path.stat().st_size
        d, n = _blob(blobs, [(path, size, size)])
        layers.append({"mediaType": media, "digest": d, "size": n})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {**labels, osimage.ARTIFACT_LABEL: osimage.FORMAT}},
        "rootfs": {"type": "layers", "diff_ids": [la["digest"] for la in layers]},
    }
    cd, cn = _json_blob(blobs, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": layers,
    }
    md, mn = _json_blob(blobs, manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    ref = "org.opencontainers.image.ref.name"
    others = [m for m in index.get("manifests", []) if (m.get("annotations") or {}).get(ref) != tag]
    mine = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md,
        "size": mn,
        "annotations": {ref: tag},
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [*others, mine],
    }
    index_path.write_text(json.dumps(index))
    return md
