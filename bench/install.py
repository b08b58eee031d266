"""Install and upgrade times vs copying the same bytes to the same disk, in the same run; sizes.

`python -m bench install`. Uses the real OS image (out/os) when built, else a synthetic image
with a 256 MiB incompressible payload. The install baseline writes exactly the bytes the install
put on the slots (system A + recovery, i.e. 2 × the slot: erofs + its dm-verity hash area) plus
the kernel and initrd, with the installer's own block copy, to the same loop-backed disk file; the
upgrade baseline writes one slot plus the kernel and initrd.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from elemental_common.run import run
from elemental_register.installer import disk, image, install, source, upgrade
from elemental_register.installer.disk import GiB, MiB

REPO = Path(__file__).resolve().parent.parent
# The installer's test fixtures (synthetic OS image, loop disks) live under tests/, not in the wheel.
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))


def _image(work: Path) -> tuple[str, str]:
    out = Path(os.environ.get("OUT", REPO / "out"))
    index = out / "os/index.json"
    if index.is_file():
        for m in json.loads(index.read_text()).get("manifests", []):
            tag = (m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
            if tag:
                return f"oci:{out}/os:{tag}", "out/os"
    from installer_fixtures import make_oci, make_rootfs

    root = make_rootfs(work / "rootfs", "1.0.0", payload_mib=256)
    return make_oci(work / "layout", "1.0.0", root, work), "synthetic (256 MiB incompressible)"


def _layer_size(system: str) -> int:
    src = source.check(source.parse(system))
    layout = Path(src.ref)
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == src.tag:
            algo, _, h = m["digest"].partition(":")
            man = json.loads((layout / "blobs" / algo / h).read_text())
            return sum(int(la["size"]) for la in man["layers"])
    return 0


def _slot_size(system: str) -> int:
    """The prebuilt slot's size (erofs + hash area), 0 for an older tar image."""
    src = source.check(source.parse(system))
    found = source.slot_image(src, Path(src.ref))
    return found[0].size if found else 0


def main() -> None:
    from installer_fixtures import esp_dir, loop_disk, mounted

    if os.geteuid() != 0:
        print("needs root (loop devices)")
        return
    with tempfile.TemporaryDirectory(
        prefix="bench-install-", dir=os.environ.get("BENCH_TMP", "/var/tmp")
    ) as t:
        work = Path(t)
        system, what = _image(work)
        # the upgrade needs another version (the same one is a no-op): the image plus a new os-release
        from installer_fixtures import derive_os_version

        layout, _, _ = system.removeprefix("oci:").rpartition(":")
        next_tag = derive_os_version(Path(layout), work / "next", "0.0.1-bench")
        next_system = f"oci:{work / 'next'}:{next_tag}"
        next_size = _slot_size(next_system)
        with loop_disk(work / "disk.raw", 16 * GiB) as dev:
            stages: list[tuple[float, str]] = []
            t0 = time.monotonic()
            # unpack in RAM as on the seed (its /tmp is RAM); BENCH_WORKDIR overrides
            install.install(
                {"elemental": {"install": {"device": dev, "system-uri": system}}},
                lambda s, p: stages.append((time.monotonic() - t0, s)),
                workdir=os.environ.get("BENCH_WORKDIR", "/dev/shm"),
            )
            t_install = time.monotonic() - t0
            table = {p["name"]: p for p in disk.read_table(dev)}
            st_erofs = _slot_size(system) or image.erofs_size(table["COS_SYSTEM_A"]["node"])
            kernel = 0
            for name in ("linux", "initrd"):
                run(
                    [
                        "mcopy",
                        "-n",
                        "-i",
                        table["COS_EFI"]["node"],
                        f"::/EFI/elemental/a/{name}",
                        str(work / name),
                    ]
                )
                kernel += (work / name).stat().st_size
            # baseline: the same bytes, the same disk, the same copy routine
            blob = work / "blob"
            with open(blob, "wb") as f:
                f.write(os.urandom(max(st_erofs, next_size) + kernel))
            # install: slot A + recovery, and a kernel/initrd for each of their entries
            t1 = time.monotonic()
            image.copy_blocks(blob, table["COS_SYSTEM_B"]["node"], st_erofs + kernel)
            image.copy_blocks(blob, table["COS_PERSISTENT"]["node"], st_erofs + kernel)
            t_copy = time.monotonic() - t1
            # upgrade: one slot (of the next version) and its entry's kernel/initrd
            t1 = time.monotonic()
            image.copy_blocks(blob, table["COS_SYSTEM_B"]["node"], (next_size or st_erofs) + kernel)
            t_copy_upgrade = time.monotonic() - t1
            # upgrade into slot B (offline, as if slot A were running)
            with (
                esp_dir(table["COS_EFI"]["node"], work) as esp,
                mounted(table["COS_OEM"]["node"], work / "oem") as oem_dir,
            ):
                t2 = time.monotonic()
                upgrade.upgrade(
                    next_system,
                    esp=esp,
                    oem_dir=oem_dir,
                    booted="a",
                    workdir=os.environ.get("BENCH_WORKDIR", "/dev/shm"),
                )
                t_upgrade = time.monotonic() - t2
        print(f"image: {what}: {system}")
        print(f"OCI layer (compressed): {_layer_size(system) / MiB:8.1f} MiB")
        print(f"slot (erofs + verity):  {st_erofs / MiB:8.1f} MiB   kernel+initrd {kernel / MiB:.1f} MiB")
        print(f"slot partition:         {int(table['COS_SYSTEM_A']['size']) * 512 / MiB:8.1f} MiB")
        print()
        print("| what | seconds |")
        print("|---|---|")
        print(f"| install (all stages) | {t_install:.2f} |")
        print(f"| copy of the same bytes (2 × (slot + kernel/initrd)) | {t_copy:.2f} |")
        print(f"| **ratio install / copy** (target ≤ 1.1) | **{t_install / t_copy:.2f}** |")
        print(f"| upgrade into slot B | {t_upgrade:.2f} |")
        print(f"| copy of the same bytes (1 × slot + kernel/initrd) | {t_copy_upgrade:.2f} |")
        print(f"| **ratio upgrade / copy** (target ≤ 1.1) | **{t_upgrade / t_copy_upgrade:.2f}** |")
        print()
        prev = 0.0
        for at, stage in stages:
            print(f"  {at:7.2f}s (+{at - prev:5.2f}) {stage}")
            prev = at
