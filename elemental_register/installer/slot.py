"""Prebuilt verity slots (elemental_common.osimage): find them in an OS image, stream them onto partitions."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elemental_common import osimage
from elemental_common.errors import die
from elemental_common.pe import Uki

CHUNK = 8 << 20


@dataclass(frozen=True)
class Verity:
    """What a boot entry needs to open a slot through dm-verity (data and hash on one partition)."""

    roothash: str
    hash_offset: int


@dataclass
class SlotLayer:
    """The slot blob of an OS image: in a local OCI layout (`path`) or in a registry (`stream`)."""

    digest: str
    size: int
    verity: Verity
    path: Path | None = None
    stream: Callable[[Callable[[bytes], object]], int] | None = None

    def write(self, dev: str, also: str | None = None) -> None:
        """Copy the blob onto the start of `dev` (and `also`), one read feeding both, its digest
        checked on the way; fsynced before this returns (an entry pointing at it comes next).
        A thread writes while this one reads and hashes (both let go of the GIL), so the digest
        costs little more than the copy."""
        outs = [open(d, "r+b") for d in ([dev, also] if also else [dev])]
        h = hashlib.sha256()
        n = 0
        pending: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        failed: list[OSError] = []

        def writer() -> None:
            while (buf := pending.get()) is not None:
                if failed:
                    continue  # keep draining: the reader must never block on a full queue
                try:
                    for fo in outs:
                        fo.write(buf)
                except OSError as e:
                    failed.append(e)

        def put(buf: bytes) -> None:
            nonlocal n
            if failed:
                raise failed[0]
            h.update(buf)
            pending.put(buf)
            n += len(buf)

        thread = threading.Thread(target=writer, name="slot-writer", daemon=True)
        thread.start()
        try:
            try:
                if self.path is not None:
                    with open(self.path, "rb") as f:
                        for buf in iter(lambda: f.read(CHUNK), b""):
                            put(buf)
                else:
                    assert self.stream is not None
                    self.stream(put)
            finally:
                pending.put(None)
                thread.join()
            if failed:
                die(f"writing the slot onto {dev}: {failed[0]}", "the disk may be failing or too small")
            for fo in outs:
                fo.flush()
                os.fsync(fo.fileno())
        finally:
            for fo in outs:
                fo.close()
        if n != self.size or f"sha256:{h.hexdigest()}" != self.digest:
            die(
                f"the slot image {self.digest} does not match its digest ({n} of {self.size} bytes)",
                "the OS image is damaged; rebuild or re-copy it (nothing boots from the partition yet)",
            )


def is_slot_manifest(manifest: dict[str, Any]) -> bool:
    return any(la.get("mediaType") == osimage.MEDIA_SLOT for la in manifest.get("layers", []))


def layers(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The slot, UKI and systemd-boot descriptors by media type; dies when one is missing."""
    by = {str(la.get("mediaType")): la for la in manifest.get("layers", [])}
    missing = [m for m in osimage.MEDIA_TYPES if m not in by]
    if missing:
        die(f"the OS image lacks the layers {', '.join(missing)}", "rebuild it with `make os`")
    return by


def verity_of(desc: dict[str, Any]) -> Verity:
    ann = desc.get("annotations") or {}
    try:
        return Verity(str(ann[osimage.ANN_ROOTHASH]), int(ann[osimage.ANN_HASH_OFFSET]))
    except (KeyError, ValueError):
        die(f"the slot layer {desc.get('digest')} has no root hash or hash offset annotation")


def check_uki(uki: Uki, verity: Verity) -> None:
    """The UKI must boot exactly this slot: its own `roothash=` is the slot's."""
    if f"roothash={verity.roothash}" not in shlex.split(uki.cmdline):
        die(
            f"the OS image's UKI does not carry the slot's root hash {verity.roothash}",
            "the image is inconsistent; rebuild it with `make os`",
        )


def read_manifest(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def verify_slots(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{slot: {intact, bad_blocks}} of every verity slot the system state records (a, b,
    recovery), checked in user space against its root hash: which slot is damaged, and where."""
    from elemental_register.installer import disk, system

    layout = system.layout_from_state(st)
    records = {**(st.get("slots") or {}), "recovery": st.get("recovery")}
    out: dict[str, dict[str, Any]] = {}
    for name, rec in records.items():
        if not rec or not rec.get("roothash"):
            continue
        dev = disk.partition_device(layout.part(name).uuid)
        try:
            intact, bad = osimage.verify(dev, int(rec["hash_offset"]), str(rec["roothash"]))
        except (OSError, ValueError) as e:
            out[name] = {"intact": False, "error": str(e)}
            continue
        out[name] = {"intact": intact and not bad, "bad_blocks": bad}
    return out
