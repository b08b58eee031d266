"""The operator container image starts as its non-root user and answers the registration GET.

Runs the image's own entrypoint from ``out/operator`` (``make operator-image``) in a chroot of the
unpacked layer (podman is not installed on the build machines; the chroot runs the same files as
the same uid with the image config's environment). Needs root and umoci; skipped otherwise.
"""

from __future__ import annotations

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


def test_container_serves_registration_get(rootfs: Path, tmp_path: Path) -> None:
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
        registration = state / "registration.yaml"
        deadline = time.monotonic() + 60
        while not registration.exists():
            assert proc.poll() is None, f"operator exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no registration file: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        url = yaml.safe_load(registration.read_text())["elemental"]["registration"]["url"]
        tls = ssl.create_default_context(cafile=str(state / "ca.crt"))
        with urllib.request.urlopen(url, context=tls, timeout=10) as resp:
            served = yaml.safe_load(resp.read())
        assert served["elemental"]["registration"]["url"] == url
        with pytest.raises(urllib.error.HTTPError) as unknown:
            urllib.request.urlopen(url.rsplit("/", 1)[0] + "/unknown", context=tls, timeout=10)
        assert unknown.value.code == 404
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
