"""The seed as an OCI image, in Elemental's layout: the ISO at ``/elemental-iso/<name>.iso``.

Elemental publishes its base seed ISOs as container images whose filesystem holds the ISO under
``/elemental-iso/`` (upstream's SeedImage build copies ``/elemental-iso/*.iso`` out of
``spec.baseImage``: rancher/elemental-operator controllers/seedimage_controller.go,
``defaultIsoInitContainers``). This module

* **publishes** ours the same way (``python -m iso.seedimage``, run by ``make repack``):
  ``$OUT/seed-image/``, an OCI layout whose one layer (plain tar) holds
  ``elemental-iso/seed.iso``; our ISO carries the OS image in ``/os``, which is what a
  ``type: raw`` SeedImage installs;
* **fetches** one for the operator's SeedImage builds (``fetch``): a registry reference
  (``host/name:tag``, ``docker://…``) through the project's registry client or an ``oci:`` layout
  path, resolved to its manifest digest and cached by that digest, so a base is pulled once.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elemental_common import registry
from elemental_common.errors import Die, die, entry_point
from elemental_common.run import run

ISO_DIR = "elemental-iso"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
_ISO_MEMBER = re.compile(rf"^(\./)?/?{ISO_DIR}/[^/]+\.iso$")

Progress = Callable[[str], None]


# ---- publish ---------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_blob(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def publish(iso: Path, layout: Path, tags: list[str]) -> str:
    """Write ``layout`` as an OCI image holding ``/elemental-iso/<iso's name>``; return the
    manifest digest. The layer is a plain tar: the ISO's payload is already compressed."""
    if not iso.is_file():
        die(f"{iso} is missing", "pack the seed first (make repack)")
    tmp = layout.with_name(layout.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer_tmp = blobs / "layer.tar"
    mtime = int(iso.stat().st_mtime)
    with tarfile.open(layer_tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo(ISO_DIR)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, mtime
        tar.addfile(d)
        info = tarfile.TarInfo(f"{ISO_DIR}/{iso.name}")
        info.size, info.mode, info.mtime = iso.stat().st_size, 0o644, mtime
        with iso.open("rb") as f:
            tar.addfile(info, f)
    layer_digest = _sha256_file(layer_tmp)
    layer_size = layer_tmp.stat().st_size
    layer_tmp.rename(blobs / layer_digest)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.title": "elemental-py seed"}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **_write_blob(blobs, json.dumps(config).encode())},
        "layers": [{"mediaType": OCI_LAYER, "digest": f"sha256:{layer_digest}", "size": layer_size}],
    }
    mdesc = _write_blob(blobs, json.dumps(manifest, indent=1).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, **mdesc, "annotations": {REF_NAME: t}} for t in tags],
    }
    (tmp / "index.json").write_text(json.dumps(index, indent=1))
    (tmp / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    old = layout.with_name(layout.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if layout.exists():
        layout.rename(old)
    tmp.rename(layout)
    shutil.rmtree(old, ignore_errors=True)
    return str(mdesc["digest"])


# ---- references ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A base image reference: ``kind`` is ``oci`` (a local layout) or ``registry``."""

    kind: str
    location: str  # the layout path, or host/repo
    tag: str  # tag or digest ("" for a layout: its only or `latest` manifest)
    text: str  # as given

    @property
    def host(self) -> str:
        return self.location.partition("/")[0]


def parse(text: str) -> Ref:
    """``oci:<layout>[:<tag>]``, ``docker://<ref>`` or ``[host[:port]/]name[:tag][@digest]``."""
    text = text.strip()
    if not text:
        die("empty base image reference")
    if text.startswith("oci:"):
        rest = text[4:].removeprefix("//")
        path, _, tag = rest.rpartition(":")
        if path and "/" not in tag:
            return Ref("oci", path, tag, text)
        return Ref("oci", rest, "", text)
    if text.startswith(("http://", "https://")):
        die(
            f"base image {text}: an ISO by URL is not supported",
            "give an OCI image (host/name:tag or oci:<layout>) holding /elemental-iso/*.iso",
        )
    name = text.removeprefix("docker://")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*", name):
        die(f"base image {text!r} is not an image reference", "e.g. registry.example/elemental/seed:1.0")
    host, repo, tag = registry.parse_ref(name)
    return Ref("registry", f"{host}/{repo}", tag, text)


def local_digest(ref: Ref) -> str:
    """The manifest digest an ``oci:`` reference resolves to, read from the layout (cheap)."""
    return _layout_manifest(ref)[0]


def _layout_manifest(ref: Ref) -> tuple[str, dict[str, Any]]:
    layout = Path(ref.location)
    try:
        index = json.loads((layout / "index.json").read_text())
    except FileNotFoundError:
        die(
            f"base image {ref.text}: {layout} is not an OCI layout (no index.json)",
            "build and publish the seed (make iso / make repack writes out/seed-image) or set spec.baseImage",
        )
    except (OSError, ValueError) as e:
        die(f"base image {ref.text}: cannot read {layout}/index.json: {e}")
    manifests = index.get("manifests") or []
    by_tag = {(m.get("annotations") or {}).get(REF_NAME): m for m in manifests}
    if ref.tag:
        m = by_tag.get(ref.tag) or next((x for x in manifests if x.get("digest") == ref.tag), None)
        if m is None:
            die(
                f"base image {ref.text}: no tag {ref.tag!r} in {layout}",
                f"tags there: {', '.join(sorted(k for k in by_tag if k)) or 'none'}",
            )
    elif len({x.get("digest") for x in manifests}) == 1:
        m = manifests[0]
    elif "latest" in by_tag:
        m = by_tag["latest"]
    else:
        die(f"base image {ref.text}: {layout} holds several images", "name one: oci:<layout>:<tag>")
    digest = str(m["digest"])
    body = _blob_path(layout, digest).read_bytes()
    manifest = json.loads(body)
    if "manifests" in manifest:  # an index: linux/amd64
        for sub in manifest["manifests"]:
            plat = sub.get("platform") or {}
            if plat.get("os", "linux") == "linux" and plat.get("architecture", "amd64") == "amd64":
                digest = str(sub["digest"])
                manifest = json.loads(_blob_path(layout, digest).read_bytes())
                break
        else:
            die(f"base image {ref.text} has no linux/amd64 image")
    return digest, manifest


def _blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
        die(f"unsupported digest {digest!r}")
    path = layout / "blobs" / "sha256" / hexd
    if not path.is_file():
        die(f"{layout}: blob {digest} is missing", "the OCI layout is incomplete")
    return path


# ---- fetch -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """A fetched base image: its manifest digest and, for a seed image, its ISO."""

    digest: str
    iso: Path | None
    dir: Path  # the cache entry (<cache>/<hex>)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open_layer(path: Path, media: str, work: Path) -> tarfile.TarFile:
    if media.endswith("zstd"):
        plain = work / (path.name + ".tar")
        run(["zstd", "-d", "-q", "-f", "-o", str(plain), str(path)], hint="zstd layers need zstd")
        return tarfile.open(plain, "r:")
    return tarfile.open(path, "r:*")


def _extract_iso(layer: Path, media: str, dest: Path, work: Path) -> str | None:
    """Copy the layer's ``/elemental-iso/*.iso`` (the first) to ``dest``; its name, or None."""
    try:
        with _open_layer(layer, media, work) as tar:
            for member in tar:
                if member.isfile() and _ISO_MEMBER.match(member.name):
                    src = tar.extractfile(member)
                    assert src is not None
                    tmp = dest.with_name(dest.name + ".part")
                    with tmp.open("wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    tmp.rename(dest)
                    return Path(member.name).name
    except (tarfile.TarError, OSError, EOFError) as e:
        die(f"cannot read layer {layer.name}: {e}", "the base image's layers must be tar archives")
    return None


def _check_iso(path: Path, what: str) -> None:
    with path.open("rb") as f:
        f.seek(0x8001)
        if f.read(5) != b"CD001":
            die(f"{what}: not an ISO 9660 image", "the base image's /elemental-iso/*.iso must be a seed ISO")


def fetch(text: str, cache: Path, progress: Progress = lambda _msg: None) -> Base:
    """Resolve ``text`` and make sure its ISO is in ``cache/<digest>/``; pulled once per digest
    (concurrent builds of one base wait on a lock). An image without ``/elemental-iso/*.iso``
    comes back with ``iso=None``: usable only as an OS image (``type: raw``)."""
    ref = parse(text)
    reg: registry.Registry | None = None
    if ref.kind == "oci":
        progress(f"reading base image {ref.text}")
        digest, manifest = _layout_manifest(ref)
    else:
        progress(f"resolving base image {ref.text}")
        host, _, repo = ref.location.partition("/")
        reg = registry.Registry(host, repo)
        try:
            body, _media = reg.image_manifest(ref.tag)
        except Die as e:
            die(f"cannot pull base image {ref.text}: {e.message}", e.hint)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        manifest = json.loads(body)
    hexd = digest.partition(":")[2]
    entry = cache / hexd
    marker = entry / "base.json"
    with _locked(cache / f".{hexd}.lock"):
        if marker.is_file():
            info = json.loads(marker.read_text())
            iso = entry / info["iso"] if info.get("iso") else None
            progress(f"base image {ref.text} ({digest[:19]}) is cached")
            return Base(digest, iso, entry)
        shutil.rmtree(entry, ignore_errors=True)
        work = entry / "work"
        work.mkdir(parents=True)
        found: str | None = None
        # The ISO is normally in the top layer: read from the top, pull only what is needed.
        for layer in reversed(manifest.get("layers") or []):
            ldigest, media = str(layer["digest"]), str(layer.get("mediaType", ""))
            if ref.kind == "oci":
                path = _blob_path(Path(ref.location), ldigest)
            else:
                assert reg is not None
                size = int(layer.get("size", 0))
                progress(f"pulling {ref.text} layer {ldigest[:19]} ({size / 1e6:.0f} MB)")
                path = work / ldigest.partition(":")[2]
                try:
                    reg.blob(ldigest, path)
                except Die as e:
                    die(f"cannot pull base image {ref.text}: {e.message}", e.hint)
            progress(f"looking for /{ISO_DIR}/*.iso in layer {ldigest[:19]}")
            found = _extract_iso(path, media, entry / "base.iso", work)
            if path.parent == work:
                path.unlink(missing_ok=True)
            if found:
                break
        shutil.rmtree(work, ignore_errors=True)
        if found:
            _check_iso(entry / "base.iso", f"base image {ref.text}: /{ISO_DIR}/{found}")
        marker.write_text(
            json.dumps(
                {"ref": ref.text, "digest": digest, "iso": "base.iso" if found else None, "name": found}
            )
        )
        return Base(digest, entry / "base.iso" if found else None, entry)


# ---- publish CLI -----------------------------------------------------------------------------


@entry_point("iso.seedimage")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m iso.seedimage", description="publish $OUT/seed.iso as the OCI image $OUT/seed-image"
    )
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "out"), help="env OUT")
    p.add_argument("--tag", default=os.environ.get("OS_VERSION") or "latest", help="env OS_VERSION")
    args = p.parse_args(argv)
    start = time.monotonic()
    layout = args.out / "seed-image"
    tags = sorted({args.tag, "latest"})
    digest = publish(args.out / "seed.iso", layout, tags)
    print(
        f"  · {layout}: /{ISO_DIR}/seed.iso as oci:{layout}:{args.tag} ({digest[:19]}); "
        f"{time.monotonic() - start:.1f}s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
