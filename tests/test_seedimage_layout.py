"""iso.seedimage on its own: references, and Elemental's layout in the layer encodings real seed
images use (gzip as docker/buildah push them, zstd, plain tar), in a local OCI layout; the ISO found
in the top layer that holds one, cached by manifest digest; an image without one is no seed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from elemental_common.errors import Die
from iso import seedimage

FAKE_ISO = b"\0" * 0x8001 + b"CD001" + b"\0" * 2042


def test_parse_references() -> None:
    assert seedimage.parse("oci:/srv/seed-image:1.0") == seedimage.Ref(
        "oci", "/srv/seed-image", "1.0", "oci:/srv/seed-image:1.0"
    )
    assert seedimage.parse("oci:/srv/seed-image").tag == ""
    r = seedimage.parse("docker://registry.example:5000/elemental/seed:2")
    assert (r.kind, r.location, r.tag, r.host) == (
        "registry",
        "registry.example:5000/elemental/seed",
        "2",
        "registry.example:5000",
    )
    assert seedimage.parse("registry.suse.com/suse/sl-micro/6.0/baremetal-iso-image:2.1.1").location == (
        "registry.suse.com/suse/sl-micro/6.0/baremetal-iso-image"
    )
    for bad, match in (("", "empty"), ("https://x/seed.iso", "by URL"), ("a b", "not an image reference")):
        with pytest.raises(Die, match=match):
            seedimage.parse(bad)


def layer(members: dict[str, bytes], encoding: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    if encoding == "gzip":
        return gzip.compress(raw), seedimage.OCI_LAYER + "+gzip"
    if encoding == "zstd":
        out = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
        return out, seedimage.OCI_LAYER + "+zstd"
    return raw, seedimage.OCI_LAYER


def image(dest: Path, layers: list[tuple[bytes, str]], tag: str = "1") -> Path:
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, Any]:
        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return {"digest": f"sha256:{d}", "size": len(data)}

    manifest = {
        "schemaVersion": 2,
        "mediaType": seedimage.OCI_MANIFEST,
        "config": {"mediaType": seedimage.OCI_CONFIG, **blob(b"{}")},
        "layers": [{"mediaType": media, **blob(data)} for data, media in layers],
    }
    m = blob(json.dumps(manifest).encode())
    entry = {"mediaType": seedimage.OCI_MANIFEST, **m, "annotations": {seedimage.REF_NAME: tag}}
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return dest


@pytest.mark.parametrize("encoding", ["tar", "gzip", "zstd"])
def test_fetch_finds_the_iso_in_the_top_layer_that_has_one(tmp_path: Path, encoding: str) -> None:
    if encoding == "zstd" and shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    base = layer({"bin/busybox": b"\x7fELF", "elemental-iso/old.iso": b"not this one"}, encoding)
    top = layer({"./elemental-iso/sl-micro.x86_64.iso": FAKE_ISO}, encoding)
    layout = image(tmp_path / "img", [base, top, layer({"etc/motd": b"hi"}, encoding)])
    steps: list[str] = []
    got = seedimage.fetch(f"oci:{layout}:1", tmp_path / "cache", steps.append)
    assert got.iso is not None and got.iso.read_bytes() == FAKE_ISO
    assert got.dir.name == got.digest.partition(":")[2]
    assert any("looking for /elemental-iso" in s for s in steps)
    # cached by digest: a second fetch reads nothing
    again: list[str] = []
    assert seedimage.fetch(f"oci:{layout}", tmp_path / "cache", again.append).iso == got.iso
    assert again[-1].endswith("is cached")


def test_no_iso_is_no_seed_and_a_bad_iso_is_refused(tmp_path: Path) -> None:
    plain = image(tmp_path / "plain", [layer({"etc/os-release": b"ID=x\n"}, "gzip")])
    assert seedimage.fetch(f"oci:{plain}", tmp_path / "cache").iso is None
    bad = image(tmp_path / "bad", [layer({"elemental-iso/x.iso": b"garbage"}, "tar")])
    with pytest.raises(Die, match="not an ISO 9660 image"):
        seedimage.fetch(f"oci:{bad}", tmp_path / "cache")
    with pytest.raises(Die, match="no tag '9'"):
        seedimage.fetch(f"oci:{plain}:9", tmp_path / "cache")


def test_publish_round_trip(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    iso.write_bytes(FAKE_ISO)
    digest = seedimage.publish(iso, tmp_path / "seed-image", ["0.1.0", "latest"])
    index = json.loads((tmp_path / "seed-image/index.json").read_text())
    assert {m["annotations"][seedimage.REF_NAME] for m in index["manifests"]} == {"0.1.0", "latest"}
    got = seedimage.fetch(f"oci:{tmp_path / 'seed-image'}:0.1.0", tmp_path / "cache")
    assert got.digest == digest and got.iso is not None and got.iso.read_bytes() == FAKE_ISO
    # a republish replaces the layout whole (no leftovers of the old one)
    iso.write_bytes(FAKE_ISO + b"v2")
    assert seedimage.publish(iso, tmp_path / "seed-image", ["latest"]) != digest
    assert not (tmp_path / "seed-image.old").exists() and not (tmp_path / "seed-image.tmp").exists()
