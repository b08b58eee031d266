"""The operator container image starts as its non-root user, answers the registration GET and
builds a SeedImage from a mounted out/ directory.

Runs the image's own entrypoint from ``out/operator`` (``make operator-image``) in a chroot of the
unpacked layer (podman is not installed on the build machines; the chroot runs the same files as
the same uid with the image config's environment). Needs root and umoci; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

OUT = Path(os.environ.get("OUT") or "out")
LAYOUT = OUT / "operator"


def _image_config() -> tuple[str, dict[str, Any]]:
    index = json.loads((LAYOUT / "index.json").read_text())
    desc = index["manifests"][0]
    tag = desc["annotations"]["org.opencontainers.image.ref.name"]
    blobs = LAYOUT / "blobs" / "sha256"
    manifest = json.loads((blobs / desc["digest"].removeprefix("sha256:")).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_text())
    return tag, config["config"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def rootfs(tmp_path: Path) -> Iterator[Path]:
    if not (LAYOUT / "index.json").is_file():
        pytest.skip(f"{LAYOUT} has not been built (make operator-image)")
    if os.geteuid() != 0 or shutil.which("umoci") is None:
        pytest.skip("needs root and umoci to unpack and chroot into the image")
    tag, _ = _image_config()
    root = tmp_path / "rootfs"
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{LAYOUT}:{tag}", str(root)], check=True)
    mounted: list[Path] = []
    try:
        for fs, target in (("proc", root / "proc"), ("/dev", root / "dev")):
            target.mkdir(exist_ok=True)
            args = ["mount", "-t", "proc", "proc"] if fs == "proc" else ["mount", "--bind", fs]
            subprocess.run([*args, str(target)], check=True)
            mounted.append(target)
        yield root
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)


@contextlib.contextmanager
def container(rootfs: Path, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """The image's entrypoint as its user with its environment; yields (state dir, port) once the
    operator wrote its registration file."""
    _, config = _image_config()
    assert config["User"] == "65532:65532"
    env = dict(e.split("=", 1) for e in config["Env"])
    state = rootfs / env["ELEMENTAL_STATE"].lstrip("/")
    state.mkdir(parents=True, exist_ok=True)
    os.chown(state, 65532, 65532)
    port = _free_port()
    cmd = [
        "chroot",
        f"--userspec={config['User']}",
        str(rootfs),
        "env",
        "-i",
        *config["Env"],
        *config["Entrypoint"],
        "--listen",
        f"127.0.0.1:{port}",
        "--public-url",
        f"https://127.0.0.1:{port}",
    ]
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=state)
    try:
        deadline = time.monotonic() + 60
        while not (state / "registration.yaml").exists():
            assert proc.poll() is None, f"operator exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no registration file: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield state, port
    except BaseException:
        print(log.read_text()[-3000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_container_serves_registration_get(rootfs: Path, tmp_path: Path) -> None:
    with container(rootfs, tmp_path) as (state, _):
        url = yaml.safe_load((state / "registration.yaml").read_text())["elemental"]["registration"]["url"]
        tls = ssl.create_default_context(cafile=str(state / "ca.crt"))
        with urllib.request.urlopen(url, context=tls, timeout=10) as resp:
            served = yaml.safe_load(resp.read())
        assert served["elemental"]["registration"]["url"] == url
        with pytest.raises(urllib.error.HTTPError) as unknown:
            urllib.request.urlopen(url.rsplit("/", 1)[0] + "/unknown", context=tls, timeout=10)
        assert unknown.value.code == 404


def test_container_builds_a_seedimage(rootfs: Path, tmp_path: Path) -> None:
    """With out/ mounted read-only on /srv/elemental (its seed-image/ is the image's default
    SeedImage base), a SeedImage is repacked inside the container (its own xorriso) and served."""
    if not (OUT / "seed-image/index.json").is_file():
        pytest.skip(f"{OUT}/seed-image missing (make iso publishes it)")
    base = rootfs / "srv/elemental"
    base.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", "-o", "ro", str(OUT.resolve()), str(base)], check=True)
    try:
        with container(rootfs, tmp_path) as (state, port):
            tls = ssl.create_default_context(cafile=str(state / "ca.crt"))
            token = (state / "admin-token").read_text().strip()

            def api(method: str, path: str, body: Any = None) -> Any:
                req = urllib.request.Request(
                    f"https://127.0.0.1:{port}{path}",
                    data=json.dumps(body).encode() if body is not None else None,
                    method=method,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, context=tls, timeout=30) as resp:
                    return json.loads(resp.read())

            seeds = "/elemental/admin/v1/namespaces/fleet-default/seedimages"
            api(
                "POST",
                seeds,
                {
                    "apiVersion": "elemental.cattle.io/v1beta1",
                    "kind": "SeedImage",
                    "metadata": {"name": "in-container", "namespace": "fleet-default"},
                    "spec": {"registrationRef": {"name": "default", "namespace": "fleet-default"}},
                },
            )
            deadline = time.monotonic() + 300
            while True:
                status = api("GET", f"{seeds}/in-container").get("status") or {}
                if status.get("downloadURL"):
                    break
                failed = [
                    c for c in status.get("conditions", []) if c.get("reason") == "SeedImageBuildFailure"
                ]
                assert not failed, failed
                assert time.monotonic() < deadline, status
                time.sleep(2)
            path = "/" + status["downloadURL"].split("://", 1)[1].split("/", 1)[1]
            iso = tmp_path / "seed.iso"
            with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=tls, timeout=120) as r:
                iso.write_bytes(r.read())
            with iso.open("rb") as f:
                f.seek(0x8001)
                assert f.read(5) == b"CD001", "not an ISO 9660 image"
            report = subprocess.run(
                ["xorriso", "-indev", str(iso), "-report_el_torito", "plain"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert "UEFI" in report, report
    finally:
        subprocess.run(["umount", "-l", str(base)], check=False)
