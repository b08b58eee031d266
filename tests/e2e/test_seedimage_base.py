"""SeedImage from ``spec.baseImage`` (issue 13 item 3), host only, about a minute.

A real ``elemental-operator serve`` process builds SeedImages from a base seed image served by
the harness's registry on loopback (plain HTTP): a seed ISO packed by iso.pack (real xorriso) from
a synthetic seed and published by iso.seedimage as Elemental lays its seed images out
(``/elemental-iso/*.iso``). The downloaded ISO is opened with xorriso: it holds the registration
and the SeedImage's cloud-config and kept its UEFI boot entry; the checksum matches; the base is
pulled once for two SeedImages; cleanupAfterMinutes removes the artifact and its directory;
errors (no such tag, not a seed image, raw without an OS) are conditions with one clear message;
a ``type: raw`` SeedImage is a disk of the installed layout (the real ``elemental build-disk`` on a
loop device) whose COS_OEM holds the registration and the cloud-config.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import Operator, Registry, condition, fresh_dir
from installer_fixtures import build_pe, make_oci, make_rootfs

from iso import pack, seedimage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("xorriso") is None or shutil.which("mkfs.vfat") is None, reason="no xorriso"
    ),
]

CLOUD_CONFIG = {"users": [{"name": "root", "passwd": "from-the-seedimage"}], "runcmd": ["echo seeded"]}


def make_base(tmp: Path, *, with_os: bool = False) -> Path:
    """A real (tiny) seed ISO: iso.pack over a synthetic UKI (and, with_os, a synthetic OS image
    in /os), then published as an OCI seed image."""
    out = tmp / "out"
    out.mkdir(parents=True)
    if with_os:
        make_oci(out / "os", "1.0.0", make_rootfs(tmp / "rootfs"), tmp)
    (out / "seed.efi").write_bytes(build_pe({".cmdline": b"console=ttyS0", ".linux": b"K" * 4096}))
    (out / "seed.vmlinuz").write_bytes(b"K" * 4096)
    (out / "seed.initrd").write_bytes(b"I" * 4096)
    reg = tmp / "base-registration.yaml"
    reg.write_text("elemental:\n  registration:\n    url: https://base.invalid/registration\n")
    assert pack.main(["--out", str(out), "--registration", str(reg), "--work", str(tmp / "pack")]) == 0
    seedimage.publish(out / "seed.iso", out / "seed-image", ["0.1.0", "latest"])
    return out / "seed-image"


def not_a_seed(dest: Path) -> Path:
    """An OCI image whose layer holds something else than /elemental-iso/*.iso."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc/hostname")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"plain"))

    def blob(data: bytes) -> dict[str, Any]:
        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return {"digest": f"sha256:{d}", "size": len(data)}

    layer = blob(buf.getvalue())
    config = blob(json.dumps({"os": "linux", "architecture": "amd64", "rootfs": {"diff_ids": []}}).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": seedimage.OCI_MANIFEST,
        "config": {"mediaType": seedimage.OCI_CONFIG, **config},
        "layers": [{"mediaType": seedimage.OCI_LAYER, **layer}],
    }
    m = blob(json.dumps(manifest).encode())
    entry = {"mediaType": seedimage.OCI_MANIFEST, **m, "annotations": {seedimage.REF_NAME: "1"}}
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return dest


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Operator, Registry, Path]]:
    tmp = tmp_path_factory.mktemp("seedbase")
    base = make_base(tmp)
    with Registry({"elemental/seed": base, "plain": not_a_seed(tmp / "plain")}, tmp / "registry.log") as reg:
        mp = pytest.MonkeyPatch()
        mp.setenv("ELEMENTAL_INSECURE_REGISTRIES", f"127.0.0.1:{reg.port}")
        # the default base: the published layout's $OUT (as the container's /srv/elemental)
        op = Operator(fresh_dir(tmp / "op"), extra_args=("--seedimage-base", str(base.parent)))
        try:
            op.start()
            op.registration("seeded", {"config": {"elemental": {"install": {"device": "/dev/vda"}}}})
            yield op, reg, tmp
        finally:
            op.stop()
            mp.undo()


def seed(op: Operator, name: str, **spec: Any) -> None:
    op.create(
        {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "SeedImage",
            "metadata": {"name": name},
            "spec": {"registrationRef": {"name": "seeded", "namespace": "fleet-default"}, **spec},
        }
    )


def wait_built(op: Operator, name: str, messages: list[str] | None = None) -> dict[str, Any]:
    def built() -> dict[str, Any] | None:
        si = op.get("seedimages", name)
        if messages is not None:
            msg = condition(si, "SeedImageReady", "message")
            if msg and (not messages or messages[-1] != msg):
                messages.append(msg)
        if condition(si, "SeedImageReady", "reason") == "SeedImageBuildFailure":
            raise AssertionError(condition(si, "SeedImageReady", "message"))
        return si if (si.get("status") or {}).get("downloadURL") else None

    result: dict[str, Any] = op.wait(f"SeedImage {name} built", built, 120, 0.1)
    return result


def wait_failed(op: Operator, name: str) -> str:
    def failed() -> str | None:
        si = op.get("seedimages", name)
        if condition(si, "SeedImageReady", "reason") == "SeedImageBuildFailure":
            return condition(si, "SeedImageReady", "message")
        return None

    result: str = op.wait(f"SeedImage {name} failed", failed, 120, 0.2)
    return result


def download(op: Operator, url: str) -> bytes:
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    assert isinstance(op._ssl, ssl.SSLContext)
    with urllib.request.urlopen(op.local_url + path, timeout=60, context=op._ssl) as resp:
        data: bytes = resp.read()
    return data


def iso_read(iso: Path, path: str) -> bytes:
    dest = iso.with_name(iso.name + path.replace("/", "_"))
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", path, str(dest)],
        check=True,
        capture_output=True,
    )
    return dest.read_bytes()


def blob_gets(reg: Registry, digest: str) -> int:
    return sum(f"GET /v2/elemental/seed/blobs/{digest}" in line for line in reg.log.read_text().splitlines())


def test_seedimage_from_a_registry_base(env: tuple[Operator, Registry, Path]) -> None:
    op, reg, tmp = env
    ref = f"127.0.0.1:{reg.port}/elemental/seed:0.1.0"
    messages: list[str] = []
    seed(op, "from-registry", baseImage=ref, **{"cloud-config": CLOUD_CONFIG})
    si = wait_built(op, "from-registry", messages)
    # the build's steps show in the condition (this tiny base builds within one poll: the steps
    # themselves are checked in tests/test_seedimage_progress.py)
    assert messages[0] == f"seed image build started from {ref}", messages
    assert condition(si, "SeedImageReady", "reason") == "SeedImageBuildSuccess"
    assert si["status"]["state"] == "Completed"
    url = si["status"]["downloadURL"]
    assert url.startswith(op.public_url + "/elemental/seedimage/") and url.endswith("/seeded.iso")
    assert si["status"]["checksumURL"] == url + ".sha256"

    data = download(op, url)
    iso = tmp / "downloaded.iso"
    iso.write_bytes(data)
    assert download(op, si["status"]["checksumURL"]).decode().split() == [
        hashlib.sha256(data).hexdigest(),
        "seeded.iso",
    ]
    registration = op.get("machineregistrations", "seeded")
    for path in ("/registration.yaml", "/livecd-cloud-config.yaml"):
        served = yaml.safe_load(iso_read(iso, path))
        assert served["elemental"]["registration"]["url"] == registration["status"]["registrationURL"]
    cc = iso_read(iso, "/iso-config/cloud-config.yaml").decode()
    assert cc.startswith("#cloud-config") and yaml.safe_load(cc) == CLOUD_CONFIG
    report = subprocess.run(
        ["xorriso", "-indev", str(iso), "-report_el_torito", "plain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "UEFI" in report, report  # the base's boot equipment survived the repack

    # A second SeedImage of the same base: built from the cache, the layer is pulled once.
    manifest = json.loads(
        urllib.request.urlopen(f"http://127.0.0.1:{reg.port}/v2/elemental/seed/manifests/0.1.0").read()
    )
    layer = manifest["layers"][0]["digest"]
    assert blob_gets(reg, layer) == 1
    seed(op, "again", baseImage="docker://" + ref, **{"cloud-config": {"runcmd": ["echo other"]}})
    wait_built(op, "again")
    assert blob_gets(reg, layer) == 1
    assert len([p for p in (op.state / "seedimage-bases").iterdir() if not p.name.startswith(".")]) == 1


def test_default_base_and_ttl_cleanup(env: tuple[Operator, Registry, Path]) -> None:
    """No baseImage: the operator's default (the published out/seed-image); then the TTL."""
    op, _reg, _tmp = env
    seed(op, "default-base", cleanupAfterMinutes=1)
    si = wait_built(op, "default-base")
    artifact = si["metadata"]["annotations"]["elemental.cattle.io/seedimage-artifact"]
    build_dir = op.state / "seedimages" / artifact.partition("/")[0]
    assert (build_dir / "seeded.iso").is_file() and (build_dir / "seeded.iso.sha256").is_file()
    assert not build_dir.with_name(build_dir.name + ".work").exists()
    url = si["status"]["downloadURL"]
    assert download(op, url)[0x8001:0x8006] == b"CD001"
    # cleanupAfterMinutes elapsed: the Ready time moved back by the admin (status subresource)
    for c in si["status"]["conditions"]:
        c["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    op.request("PUT", op._path("seedimages", "default-base") + "/status", si)

    def expired() -> dict[str, Any] | None:
        s = op.get("seedimages", "default-base")
        return s if condition(s, "SeedImageReady", "reason") == "SeedImageBuildDeadline" else None

    si = op.wait("SeedImage expired", expired, 60, 0.5)
    assert "downloadURL" not in si["status"] and "checksumURL" not in si["status"]
    assert not build_dir.exists()
    with pytest.raises(urllib.error.HTTPError) as gone:
        download(op, url)
    assert gone.value.code == 404


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [
        ("no-tag", {"baseImage": "127.0.0.1:{port}/elemental/seed:9.9.9"}, "cannot pull base image .*404"),
        ("no-repo", {"baseImage": "127.0.0.1:{port}/nothing:1"}, "cannot pull base image .*404"),
        ("not-seed", {"baseImage": "127.0.0.1:{port}/plain:1"}, "is not a seed image: no /elemental-iso/"),
        ("no-layout", {"baseImage": "oci:/nonexistent/layout"}, "is not an OCI layout"),
        ("raw-no-os", {"type": "raw"}, "a seed without an OS image"),
        # one argv element (--base=…): an option-like value is a bad reference, not an option
        ("option-like", {"baseImage": "--cache=/etc"}, "is not an image reference"),
    ],
)
def test_build_errors_are_conditions(
    env: tuple[Operator, Registry, Path], name: str, spec: dict[str, Any], expected: str
) -> None:
    import re

    op, reg, _tmp = env
    spec = {k: v.format(port=reg.port) if isinstance(v, str) else v for k, v in spec.items()}
    seed(op, name, **spec)
    message = wait_failed(op, name)
    assert re.search(expected, message), message
    assert "\n" not in message and "Traceback" not in message
    assert op.get("seedimages", name)["status"]["state"] == "Failed"


def test_deleted_seedimage_build_dir_is_swept(env: tuple[Operator, Registry, Path]) -> None:
    op, _reg, _tmp = env
    seed(op, "short-lived", **{"cloud-config": {"runcmd": ["echo short-lived"]}})
    si = wait_built(op, "short-lived")
    build_dir = (
        op.state
        / "seedimages"
        / si["metadata"]["annotations"]["elemental.cattle.io/seedimage-artifact"].partition("/")[0]
    )
    assert build_dir.is_dir()
    # a build that finished moments ago is kept (its annotation may be pending): age it
    old = time.time() - 3600
    import os

    os.utime(build_dir, (old, old))
    op.delete("seedimages", "short-lived")
    op.wait("build directory removed", lambda: not build_dir.exists(), 30, 0.5)


def oem_file(raw: Path, path: str, tmp: Path) -> str:
    """A file of the raw disk's COS_OEM (ext4), read with debugfs from a copy of the partition."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, check=True).stdout)
    part = next(p for p in table["partitiontable"]["partitions"] if p.get("name") == "COS_OEM")
    img = tmp / "oem.img"
    with raw.open("rb") as src, img.open("wb") as dst:
        src.seek(part["start"] * 512)
        dst.write(src.read(part["size"] * 512))
    out = subprocess.run(["debugfs", "-R", f"cat {path}", str(img)], capture_output=True, check=True)
    return out.stdout.decode()


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
def test_raw_seedimage(env: tuple[Operator, Registry, Path]) -> None:
    op, _reg, tmp = env
    base = make_base(tmp / "with-os", with_os=True)
    seed(op, "raw", type="raw", baseImage=f"oci:{base}:0.1.0", **{"cloud-config": CLOUD_CONFIG})
    si = wait_built(op, "raw")
    assert si["status"]["downloadURL"].endswith("/seeded.raw")
    artifact = si["metadata"]["annotations"]["elemental.cattle.io/seedimage-artifact"]
    raw = op.state / "seedimages" / artifact
    registration = op.get("machineregistrations", "seeded")
    reg = yaml.safe_load(oem_file(raw, "registration/config.yaml", tmp))
    assert reg["elemental"]["registration"]["url"] == registration["status"]["registrationURL"]
    assert yaml.safe_load(oem_file(raw, "elemental/cloud-config.yaml", tmp)) == CLOUD_CONFIG
    checksum = (raw.parent / (raw.name + ".sha256")).read_text().split()
    assert checksum[1] == "seeded.raw" and len(checksum[0]) == 64
    # the checksum served is the file's (the builder computed it; read back here)
    assert download(op, si["status"]["checksumURL"]).decode().split() == checksum
    h = hashlib.sha256()
    with raw.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert h.hexdigest() == checksum[0]
