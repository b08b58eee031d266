"""Build a SeedImage's artifact from a base seed image: the operator's default build command.

``python -m iso.repack --base REF --cache DIR --registration FILE [--cloud-config FILE]
--type iso|raw --output FILE [--progress FILE]``

* ``iso``: the base image's ``/elemental-iso/*.iso`` (iso.seedimage.fetch: pulled once, cached by
  digest) is replayed by xorriso with the registration at ``/livecd-cloud-config.yaml`` (where
  Elemental's seed reads it) and ``/registration.yaml`` (where ours does), and the cloud-config at
  ``/iso-config/cloud-config.yaml``; its boot equipment (El Torito, the appended ESP, GPT) is
  kept (``-boot_image any replay``, as upstream's build does).
* ``raw``: a disk of the installed layout (``elemental build-disk``) with the registration and
  cloud-config in COS_OEM. The OS comes from the base seed's ``/os`` OCI layout or, when the base
  is not a seed image, from the base image itself (upstream's raw build takes the OS image as
  ``spec.baseImage``).

``<output>.sha256`` is written beside the output (sha256sum's format). Each step is written to
``--progress`` (one line) for the SeedImage's condition; a failure is one ``iso.repack: error: …``
line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from elemental_common.errors import die, entry_point
from elemental_common.run import check_exit, run, spawn
from iso import seedimage

ISO_REGISTRATION_PATHS = ("/livecd-cloud-config.yaml", "/registration.yaml")
ISO_CLOUD_CONFIG = "/iso-config/cloud-config.yaml"
RAW_SIZE = "4G"


class Reporter:
    """Progress lines to stdout (the build log) and, atomically, to the progress file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", flush=True)
        if self.path:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(message + "\n")
            os.replace(tmp, self.path)


def repack_iso(base_iso: Path, registration: Path, cloud_config: Path | None, output: Path) -> None:
    tmp = output.with_name(output.name + ".part")
    tmp.unlink(missing_ok=True)
    maps: list[str] = []
    for dest in ISO_REGISTRATION_PATHS:
        maps += ["-map", str(registration), dest]
    if cloud_config is not None:
        maps += ["-map", str(cloud_config), ISO_CLOUD_CONFIG]
    run(
        ["xorriso", "-indev", str(base_iso), "-outdev", str(tmp), *maps, "-boot_image", "any", "replay"],
        hint="the base ISO must be readable by xorriso",
    )
    tmp.rename(output)


def os_layout(base: seedimage.Base, text: str) -> str:
    """The OS image (a build-disk --system) inside a seed's ISO, extracted once per base."""
    assert base.iso is not None
    dest = base.dir / "os"
    if not (dest / "index.json").is_file():
        tmp = base.dir / "os.part"
        shutil.rmtree(tmp, ignore_errors=True)
        listing = run(["xorriso", "-indev", str(base.iso), "-lsd", "/os/index.json"], check=False)
        if "'/os/index.json'" not in listing.stdout:
            die(
                f"base image {text} is a seed without an OS image (/os in its ISO): type raw needs the OS",
                "give the OS image as spec.baseImage (as Elemental does for raw), or a seed made by make iso",
            )
        run(["xorriso", "-osirrox", "on", "-indev", str(base.iso), "-extract", "/os", str(tmp)])
        run(["chmod", "-R", "u+w", str(tmp)])
        tmp.rename(dest)
    return f"oci:{dest}"


def raw_config(registration: Path, cloud_config: Path | None) -> dict[str, Any]:
    reg = yaml.safe_load(registration.read_text()) or {}
    config: dict[str, Any] = {
        "elemental": {"registration": (reg.get("elemental") or {}).get("registration") or {}}
    }
    if cloud_config is not None:
        cc = yaml.safe_load(cloud_config.read_text())
        if isinstance(cc, dict) and cc:
            config["cloud-config"] = cc
    return config


def build_raw(system: str, config: dict[str, Any], output: Path, size: str, report: Reporter) -> None:
    cfg = output.with_name(output.name + ".config.yaml")
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        sys.executable,
        "-m",
        "elemental_register.installer.cli",
        "build-disk",
        "--system",
        system,
        "--output",
        str(output),
        "--size",
        size,
        "--config",
        str(cfg),
    ]
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines: list[str] = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        lines.append(line)
        print(line, flush=True)
        if line.startswith("[") and "%]" in line:  # the installer's "[ 40%] partitioning"
            report(f"raw disk: {line}")
    rc = proc.wait()
    cfg.unlink(missing_ok=True)
    check_exit(
        argv,
        rc,
        "\n".join(lines[-10:]),
        hint="raw seed images need root, loop devices and the installer's tools",
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m iso.repack", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="oci:<layout>[:<tag>], docker://<ref> or host/name:tag")
    p.add_argument("--cache", type=Path, required=True, help="base image cache (one entry per digest)")
    p.add_argument("--registration", type=Path, required=True)
    p.add_argument("--cloud-config", type=Path, help="put at /iso-config/cloud-config.yaml (empty: none)")
    p.add_argument("--type", choices=("iso", "raw"), default="iso")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--progress", type=Path)
    p.add_argument("--raw-size", default=RAW_SIZE, help=f"raw disk size (default {RAW_SIZE})")
    return p.parse_args(argv)


@entry_point("iso.repack")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Reporter(args.progress)
    if not args.registration.is_file():
        die(f"registration file {args.registration} does not exist")
    cloud_config: Path | None = args.cloud_config
    if cloud_config is not None and (not cloud_config.is_file() or not cloud_config.read_bytes().strip()):
        cloud_config = None
    base = seedimage.fetch(args.base, args.cache, report)
    if args.type == "iso":
        if base.iso is None:
            die(
                f"base image {args.base} ({base.digest[:19]}) is not a seed image: "
                f"no /{seedimage.ISO_DIR}/*.iso in its layers",
                "a SeedImage of type iso needs a seed image (make iso publishes ours as out/seed-image)",
            )
        report(f"repacking the ISO of {base.digest[:19]} with the registration and cloud-config")
        repack_iso(base.iso, args.registration, cloud_config, args.output)
    else:
        system = os_layout(base, args.base) if base.iso is not None else args.base
        report(f"building a raw disk from {system}")
        build_raw(system, raw_config(args.registration, cloud_config), args.output, args.raw_size, report)
    report(f"computing the checksum of {args.output.name}")
    (args.output.with_name(args.output.name + ".sha256")).write_text(
        f"{_sha256(args.output)}  {args.output.name}\n"
    )
    report(f"built {args.output.name} ({args.output.stat().st_size / 1e6:.0f} MB)")
    print(json.dumps({"base": args.base, "digest": base.digest, "type": args.type}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
