"""The OS image format of prebuilt verity slots: media types, annotations, the dm-verity superblock.

An OS OCI image of this format (built by imagebuild, read by the installer) has no rootfs tar
layer. Its layers are, by media type:

* `MEDIA_SLOT`: the slot exactly as it lies on a slot partition: a read-only erofs, then at
  `ANN_HASH_OFFSET` (4 KiB aligned) its dm-verity hash area (superblock + hash tree, as
  veritysetup/systemd-repart write it). Uncompressed on purpose: install is a block copy of this
  blob onto the partition, checked against its digest while it streams.
* `MEDIA_UKI`: the unified kernel image whose `.cmdline` carries `roothash=` of that slot.
* `MEDIA_SYSTEMD_BOOT`: the boot loader (systemd-bootx64.efi).

The slot layer's annotations give the root hash and the hash offset, so the boot entry can be
written without reading the slot. The media types are ours (no registry standard exists); the
verity superblock layout is the kernel's/cryptsetup's (cryptsetup lib/verity/verity.c,
`struct verity_sb`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MEDIA_SLOT = "application/vnd.elemental.slot.v1.erofs-verity"
MEDIA_UKI = "application/vnd.elemental.uki.v1+efi"
MEDIA_SYSTEMD_BOOT = "application/vnd.elemental.systemd-boot.v1+efi"
MEDIA_TYPES = (MEDIA_SLOT, MEDIA_UKI, MEDIA_SYSTEMD_BOOT)

ANN_ROOTHASH = "org.elemental.slot.roothash"
ANN_HASH_OFFSET = "org.elemental.slot.hash-offset"
ANN_DATA_SIZE = "org.elemental.slot.data-size"
ARTIFACT_LABEL = "org.elemental.os.format"  # config label; value FORMAT
FORMAT = "slot-v1"

VERITY_SB_SIZE = 512
_VERITY_SB = struct.Struct("<8sII16s32sIIQH6x")  # signature, version, hash_type, uuid, algorithm,
# data_block_size, hash_block_size, data_blocks, salt_size (then the salt, 256 bytes)


@dataclass(frozen=True)
class VeritySuperblock:
    hash_type: int
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes

    @property
    def data_size(self) -> int:
        return self.data_blocks * self.data_block_size

    def hash_area_size(self) -> int:
        """Bytes of the hash area: the superblock's block, then every tree level (cryptsetup's
        VERITY_create layout: one hash block per `hash_block_size / digest` hashes below)."""
        digest = {"sha256": 32, "sha512": 64, "sha1": 20}.get(self.algorithm, 32)
        per_block = self.hash_block_size // (1 << (digest - 1).bit_length())
        blocks, n = 0, self.data_blocks
        while True:
            n = -(-n // per_block)
            blocks += n
            if n <= 1:
                break
        return (1 + blocks) * self.hash_block_size


def parse_verity_superblock(data: bytes) -> VeritySuperblock:
    if len(data) < VERITY_SB_SIZE:
        raise ValueError("short dm-verity superblock")
    sig, version, hash_type, _uuid, algo, dbs, hbs, blocks, salt_size = _VERITY_SB.unpack_from(data)
    if sig != b"verity\0\0" or version != 1:
        raise ValueError("no dm-verity superblock")
    salt = data[_VERITY_SB.size : _VERITY_SB.size + min(salt_size, 256)]
    return VeritySuperblock(hash_type, algo.rstrip(b"\0").decode(), dbs, hbs, blocks, salt)


def align(n: int, to: int = 4096) -> int:
    return -(-n // to) * to


def top_hash(sb: VeritySuperblock, hash_area: bytes) -> str:
    """The root hash the tree in `hash_area` (superblock first) claims: the digest of the salt and
    the top level's one block, which dm-verity stores first, right after the superblock block
    (format 1 salts in front). It ties a hash tree to a `roothash=` without reading the data."""
    import hashlib

    top = hash_area[sb.hash_block_size : 2 * sb.hash_block_size]
    if len(top) != sb.hash_block_size:
        raise ValueError("short dm-verity hash area")
    return hashlib.new(sb.algorithm, sb.salt + top).hexdigest()


def verify(dev: str, hash_offset: int, roothash: str, limit: int = 16) -> tuple[bool, list[int]]:
    """Check a slot on `dev` the way dm-verity would, in user space: (tree intact, data blocks
    whose hash does not match, at most `limit`). The tree is intact when every hash block hashes
    to its entry one level up and the top block to `roothash`. Reads the whole slot: for a report
    after a failed boot (`elemental status --verify`), not for the boot path."""
    import hashlib

    with open(dev, "rb") as f:
        f.seek(hash_offset)
        head = f.read(VERITY_SB_SIZE)
        sb = parse_verity_superblock(head)
        bs, digest = sb.hash_block_size, hashlib.new(sb.algorithm).digest_size
        per = bs // (1 << (digest - 1).bit_length())
        counts, n = [], sb.data_blocks
        while True:  # hash blocks per level, bottom up
            n = -(-n // per)
            counts.append(n)
            if n <= 1:
                break
        f.seek(hash_offset)
        area = f.read((1 + sum(counts)) * bs)
        starts, at = {}, 1  # levels are stored top down, after the superblock's block
        for level in reversed(range(len(counts))):
            starts[level] = at
            at += counts[level]
        slot_of = 1 << (digest - 1).bit_length()

        def entry(level: int, i: int) -> bytes:
            pos = starts[level] * bs + i * slot_of
            return area[pos : pos + digest]

        def h(block: bytes) -> bytes:
            return hashlib.new(sb.algorithm, sb.salt + block).digest()

        intact = top_hash(sb, area) == roothash
        for level in range(1, len(counts)):
            for i in range(counts[level - 1]):
                pos = (starts[level - 1] + i) * bs
                intact = intact and h(area[pos : pos + bs]) == entry(level, i)
        bad: list[int] = []
        f.seek(0)
        for first in range(0, sb.data_blocks, 2048):
            chunk = f.read(min(2048, sb.data_blocks - first) * bs)
            for k in range(len(chunk) // bs):
                if h(chunk[k * bs : (k + 1) * bs]) != entry(0, first + k):
                    bad.append(first + k)
                    if len(bad) >= limit:
                        return intact, bad
    return intact, bad
