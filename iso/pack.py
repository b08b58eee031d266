"""Pack ``$OUT/seed.iso`` and ``$OUT/pxe/`` from the images mkosi built.

ISO layout (the contract in docs/architecture.md):

* ISO9660 volume ``COS_LIVE`` (Rock Ridge + Joliet) with ``/registration.yaml``,
  ``/livecd-cloud-config.yaml`` (same content), ``/os/`` (the OS OCI image layout) and, with
  ``--cloud-config``, ``/iso-config/cloud-config.yaml``;
* an appended GPT partition (type EFI System) holding a FAT image with
  ``EFI/BOOT/BOOTX64.EFI`` = the seed UKI; the UEFI El Torito entry points at it, so the same
  file boots as a CD and, written with ``dd``, as a USB disk.

PXE: ``$OUT/pxe/`` gets ``seed.efi``, ``seed.vmlinuz``, ``seed.initrd``, ``registration.yaml`` and
``boot.ipxe``; the seed downloads the file named by ``elemental.registration=<URL>``.

Usage: ``python -m iso.pack [--registration FILE|URL] [--out DIR] [--insecure]``; the environment
variables ``REGISTRATION``, ``OUT`` and ``ELEMENTAL_STATE`` give the defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import ssl
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from elemental_common import consts
from elemental_common.errors import die, entry_point
from elemental_common.pe import Uki
from elemental_common.run import run

VOLUME_LABEL = "COS_LIVE"
ESP_LABEL = "COS_ESP"
ISO_CLOUD_CONFIG = "/iso-config/cloud-config.yaml"
PLACEHOLDER_URL = consts.DEFAULT_PUBLIC_URL
SIZE_BUDGET = 400 * 1024 * 1024

PLACEHOLDER = f"""\
# Placeholder written by `python -m iso.pack`: no registration file was given
# (set REGISTRATION=<file or URL>, or run the dev operator so that
# $ELEMENTAL_STATE/registration.yaml exists) and repack with `make repack`.
elemental:
  registration:
    url: {PLACEHOLDER_URL}/elemental/registration/placeholder
    ca-cert: ""
"""


@dataclass(frozen=True)
class Inputs:
    out: Path
    uki: Path
    vmlinuz: Path
    initrd: Path
    os_layout: Path | None
    registration: bytes
    registration_source: str
    # The seed's own kernel command line, read from its UKI (set in profiles/seed/mkosi.conf, the
    # one place): iPXE boots that replace it (seed.vmlinuz + seed.initrd) repeat it.
    seed_cmdline: str
    # A SeedImage's cloud-config (already marshalled: yip or "#cloud-config"), b"" for none.
    cloud_config: bytes = b""


def log(msg: str) -> None:
    print(f"  · {msg}", flush=True)


def warn(msg: str) -> None:
    print(f"  ! warning: {msg}", file=sys.stderr, flush=True)


def read_registration(source: str | None, state_dir: Path, *, insecure: bool = False) -> tuple[bytes, str]:
    """Return the registration file's bytes and a description of where they came from."""
    if source:
        if source.startswith(("http://", "https://")):
            context = ssl._create_unverified_context() if insecure else None
            try:
                with urllib.request.urlopen(source, timeout=30, context=context) as resp:
                    data: bytes = resp.read()
            except OSError as exc:
                die(
                    f"cannot download the registration file {source}: {exc}",
                    "" if insecure else "a self-signed operator? pass --insecure (REGISTRATION_INSECURE=1)",
                )
            return data, source
        path = Path(source)
        if not path.is_file():
            die(f"registration file {path} does not exist", "REGISTRATION= names a file or an http(s) URL")
        return path.read_bytes(), str(path)
    default = state_dir / "registration.yaml"
    if default.is_file():
        return default.read_bytes(), str(default)
    warn(
        f"no registration file given and {default} does not exist: embedding a placeholder "
        f"pointing at {PLACEHOLDER_URL} (set REGISTRATION=<file or URL>)"
    )
    return PLACEHOLDER.encode(), "placeholder"


def collect_inputs(args: argparse.Namespace) -> Inputs:
    out: Path = args.out.resolve()
    uki, vmlinuz, initrd = out / "seed.efi", out / "seed.vmlinuz", out / "seed.initrd"
    for f in (uki, vmlinuz, initrd):
        if not f.is_file():
            die(f"{f} is missing", "build the seed first (make seed)")
    os_layout: Path | None = out / "os"
    assert os_layout is not None
    if not (os_layout / "index.json").is_file():
        if args.require_os:
            die(f"{os_layout} is not an OCI layout", "build the OS first (make os)")
        warn(f"{os_layout} is not an OCI layout (make os): the ISO will have no /os (no offline install)")
        os_layout = None
    data, source = read_registration(args.registration, args.state, insecure=args.insecure)
    cloud_config = b""
    if args.cloud_config:
        if not Path(args.cloud_config).is_file():
            die(f"cloud-config file {args.cloud_config} does not exist", "--cloud-config names a file")
        cloud_config = Path(args.cloud_config).read_bytes()
    return Inputs(out, uki, vmlinuz, initrd, os_layout, data, source, Uki(uki).cmdline, cloud_config)


def make_esp(uki: Path, dest: Path) -> None:
    """A FAT image holding EFI/BOOT/BOOTX64.EFI; reused while the UKI is unchanged."""
    stamp = dest.with_suffix(".stamp")
    st = uki.stat()
    key = f"{uki}:{st.st_size}:{st.st_mtime_ns}\n"
    if dest.is_file() and stamp.is_file() and stamp.read_text() == key:
        log(f"ESP image {dest} is up to date")
        return
    # FAT overhead, directories, and slack for firmware that dislikes a full ESP.
    size_kib = (st.st_size // 1024) * 102 // 100 + 4096
    tmp = dest.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    run(["mkfs.vfat", "-C", "-n", ESP_LABEL, str(tmp), str(size_kib)])
    run(["mmd", "-i", str(tmp), "::/EFI", "::/EFI/BOOT"])
    run(["mcopy", "-i", str(tmp), str(uki), "::/EFI/BOOT/BOOTX64.EFI"])
    tmp.rename(dest)
    stamp.write_text(key)
    log(f"ESP image {dest} ({size_kib // 1024} MiB)")


def make_iso(inputs: Inputs, work: Path, dest: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    esp = work / "esp.img"
    make_esp(inputs.uki, esp)
    reg = work / "registration.yaml"
    reg.write_bytes(inputs.registration)
    grafts = [f"/registration.yaml={reg}", f"/livecd-cloud-config.yaml={reg}"]
    if inputs.cloud_config.strip():
        # Where Elemental's SeedImage builder puts it (xorriso -map … /iso-config/cloud-config.yaml).
        cc = work / "cloud-config.yaml"
        cc.write_bytes(inputs.cloud_config)
        grafts.append(f"{ISO_CLOUD_CONFIG}={cc}")
    if inputs.os_layout is not None:
        grafts.append(f"/os={inputs.os_layout}")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    # EFI-only hybrid: El Torito (UEFI, no emulation) -> appended partition 2 (the ESP), GPT with
    # a protective MBR so the same bytes boot from a USB stick. ISO9660 starts at 16 blocks.
    cmd = [
        "xorriso",
        "-as",
        "mkisofs",
        "-o",
        str(tmp),
        "-iso-level",
        "3",
        "-full-iso9660-filenames",
        "-R",
        "-J",
        "-joliet-long",
        "-V",
        VOLUME_LABEL,
        "-publisher",
        "elemental-py",
        "-A",
        "Elemental seed",
        "-partition_offset",
        "16",
        "-append_partition",
        "2",
        "0xef",
        str(esp),
        "-appended_part_as_gpt",
        "-eltorito-alt-boot",
        "-e",
        "--interval:appended_partition_2:all::",
        "-no-emul-boot",
        "-graft-points",
        *grafts,
    ]
    run(cmd)
    tmp.rename(dest)


def ipxe_script(registration_url: str, seed_cmdline: str) -> str:
    return f"""#!ipxe
# Elemental seed over the network (generated by `python -m iso.pack`).
# Serve this directory over HTTP and point iPXE at boot.ipxe, e.g. DHCP option 67
# (filename) = http://<server>/boot.ipxe. `base` defaults to the DHCP next-server.
dhcp
isset ${{base}} || set base http://${{next-server}}
isset ${{registration}} || set registration {registration_url}
set cmdline {seed_cmdline} elemental.registration=${{registration}}
iseq ${{platform}} efi && chain ${{base}}/seed.efi ${{cmdline}} ||
kernel ${{base}}/seed.vmlinuz initrd=seed.initrd ${{cmdline}}
initrd ${{base}}/seed.initrd
boot
"""


def place(src: Path, dest: Path) -> None:
    """Hard-link (same file system) or copy src to dest, replacing dest."""
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    tmp.rename(dest)


def make_pxe(inputs: Inputs, pxe: Path, registration_url: str | None) -> None:
    pxe.mkdir(parents=True, exist_ok=True)
    for f in (inputs.uki, inputs.vmlinuz, inputs.initrd):
        place(f, pxe / f.name)
    (pxe / "registration.yaml").write_bytes(inputs.registration)
    url = registration_url or "${base}/registration.yaml"
    (pxe / "boot.ipxe").write_text(ipxe_script(url, inputs.seed_cmdline))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m iso.pack", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--registration",
        default=os.environ.get("REGISTRATION") or None,
        help="registration file: a path or an http(s) URL (env REGISTRATION; default "
        "$ELEMENTAL_STATE/registration.yaml, else a placeholder)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or "out"),
        help="directory with mkosi's outputs; the ISO and pxe/ go there too (env OUT)",
    )
    p.add_argument(
        "--state",
        type=Path,
        default=consts.state_dir(),
        help="the dev operator's state directory (env ELEMENTAL_STATE)",
    )
    p.add_argument("--work", type=Path, default=Path("build/iso"), help="scratch directory")
    p.add_argument(
        "--insecure",
        action="store_true",
        default=os.environ.get("REGISTRATION_INSECURE", "") not in ("", "0"),
        help="do not verify TLS when downloading the registration file",
    )
    p.add_argument(
        "--cloud-config",
        default=os.environ.get("CLOUD_CONFIG") or None,
        help=f"cloud-config file put into the ISO as {ISO_CLOUD_CONFIG} (a SeedImage's spec.cloud-config)",
    )
    p.add_argument("--require-os", action="store_true", help="fail when $OUT/os is missing")
    return p.parse_args(argv)


@entry_point("iso.pack")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    inputs = collect_inputs(args)
    log(
        f"registration: {inputs.registration_source} "
        f"(sha256 {hashlib.sha256(inputs.registration).hexdigest()[:12]})"
    )
    iso = inputs.out / "seed.iso"
    make_iso(inputs, args.work, iso)
    reg = args.registration
    make_pxe(inputs, inputs.out / "pxe", reg if reg and reg.startswith(("http://", "https://")) else None)
    size = iso.stat().st_size
    log(
        f"{iso}: {size / 1e6:.0f} MB (UKI {inputs.uki.stat().st_size / 1e6:.0f} MB"
        f"{'' if inputs.os_layout else ', no /os'}); PXE files in {inputs.out / 'pxe'}; "
        f"{time.monotonic() - start:.1f}s"
    )
    if size > SIZE_BUDGET:
        warn(f"{iso} is larger than the {SIZE_BUDGET >> 20} MiB budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
