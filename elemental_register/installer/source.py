"""The OS to install: an OCI image (layout or registry) or a root directory, unpacked to a tree."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from elemental_register.installer.pe import parse_os_release
from elemental_register.run import die, run

SEED_LAYOUT = "/run/initramfs/live/os"


@dataclass
class Source:
    kind: str  # oci | docker | dir
    ref: str  # layout dir, registry reference or directory
    tag: str = ""

    def __str__(self) -> str:
        if self.kind == "oci":
            return f"oci:{self.ref}:{self.tag}"
        return f"{self.kind}:{self.ref}" if self.kind != "docker" else f"docker://{self.ref}"


def parse(uri: str | None) -> Source:
    """`oci:<layout>[:<tag>]`, `docker://ref`, `dir:<path>`, a bare `registry/image:tag`, or
    nothing (the OCI layout on the seed medium)."""
    if not uri:
        return Source("oci", SEED_LAYOUT, "")
    if uri.startswith("oci:"):
        rest = uri[4:]
        # the tag is after the last ':' unless that ':' is part of the path (no tag given)
        path, _, tag = rest.rpartition(":")
        if path and "/" not in tag:
            return Source("oci", path, tag)
        return Source("oci", rest, "")
    if uri.startswith("docker://"):
        return Source("docker", uri[len("docker://") :])
    if uri.startswith("dir:"):
        return Source("dir", uri[4:].removeprefix("//"))
    if uri.startswith(("file:", "channel:")):
        die(f"unsupported system-uri {uri!r}", "use oci:<layout>:<tag>, docker://<ref> or dir:<path>")
    return Source("docker", uri)


def layout_tag(layout: Path, tag: str) -> str:
    """Check the OCI layout is readable and resolve the tag (the only one if none is given)."""
    index_path = layout / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as e:
        die(
            f"cannot read the OS image: {index_path}: {e}",
            "the seed medium must hold the OS as an OCI layout in /os, or set install.system-uri",
        )
    tags = {}
    for m in index.get("manifests", []):
        name = (m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        if name:
            tags[name] = m
    if not tag:
        if len(tags) != 1:
            die(f"{layout}: cannot choose a tag among {sorted(tags) or 'none'}", "give oci:<layout>:<tag>")
        tag = next(iter(tags))
    if tag not in tags:
        die(
            f"{layout} has no tag {tag!r} (tags: {', '.join(sorted(tags)) or 'none'})",
            "check install.system-uri",
        )
    # every blob the manifest needs must be present and of the right size, before we touch a disk
    manifest_digest = tags[tag]["digest"]
    blobs = [manifest_digest]
    try:
        man = json.loads(_blob(layout, manifest_digest).read_text())
        blobs += [man["config"]["digest"]] + [layer["digest"] for layer in man["layers"]]
        sizes = {
            man["config"]["digest"]: man["config"]["size"],
            **{la["digest"]: la["size"] for la in man["layers"]},
        }
    except (OSError, ValueError, KeyError) as e:
        die(f"{layout}: unreadable manifest for {tag}: {e}", "the OS image is damaged; rebuild or re-copy it")
    for b in blobs:
        p = _blob(layout, b)
        if not p.is_file() or (b in sizes and p.stat().st_size != sizes[b]):
            die(
                f"{layout}: blob {b} is missing or truncated",
                "the OS image is damaged; rebuild or re-copy it",
            )
    return tag


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def check(src: Source) -> Source:
    """Everything we can verify about the source without unpacking it."""
    if src.kind == "oci":
        return Source("oci", src.ref, layout_tag(Path(src.ref), src.tag))
    if src.kind == "dir":
        if not (Path(src.ref) / "usr").is_dir():
            die(f"system-uri dir:{src.ref} is not an OS tree (no /usr)", "point dir: at an unpacked OS root")
        return src
    run(
        ["skopeo", "inspect", "--raw", f"docker://{src.ref}"],
        timeout=120,
        hint="the registry must be reachable from the seed; check system-uri and the network",
    )
    return src


def unpack(src: Source, work: Path) -> Path:
    """The OS tree of `src` (unpacked under `work` unless it is already a directory)."""
    if src.kind == "dir":
        return Path(src.ref)
    layout, tag = Path(src.ref), src.tag
    if src.kind == "docker":
        layout, tag = work / "layout", "os"
        run(
            ["skopeo", "copy", "--quiet", f"docker://{src.ref}", f"oci:{layout}:{tag}"],
            timeout=3600,
            hint="the registry must be reachable; check system-uri",
        )
    rootfs = work / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    # umoci wants a writable layout (it takes a lock); a read-only medium (ISO) needs a shadow copy
    if not os.access(layout, os.W_OK):
        shadow = work / "layout-ro"
        shadow.mkdir(exist_ok=True)
        for name in ("oci-layout", "index.json"):
            shutil.copy(layout / name, shadow / name)
        if not (shadow / "blobs").exists():
            (shadow / "blobs").symlink_to((layout / "blobs").resolve())
        layout = shadow
    run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(rootfs)],
        timeout=3600,
        hint="the OS image could not be unpacked; it may be damaged",
    )
    return rootfs


def os_release(rootfs: Path) -> dict[str, str]:
    etc = rootfs / "etc/os-release"
    # an absolute symlink would resolve on the host, so read usr/lib's copy instead
    candidates = [rootfs / "usr/lib/os-release"]
    if not (etc.is_symlink() and os.path.isabs(os.readlink(etc))):
        candidates.insert(0, etc)
    for p in candidates:
        try:
            return parse_os_release(p.read_text())
        except OSError:
            continue
    return {}
