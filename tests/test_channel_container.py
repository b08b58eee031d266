"""`custom` channels inside the operator container: its own bwrap and prlimit, as its user 65532.

The image from ``out/operator`` (``make operator-image``) is unpacked as in
tests/test_operator_container.py (podman is not on the build machines), but entered with the host's
bwrap (pivot_root into a new mount and pid namespace, then ``setpriv`` to the image's user) rather
than chroot: the kernel refuses a new user namespace to a chrooted process (clone(2): EPERM), so the
channel sandbox cannot start under chroot, while it does in a runtime that pivots, as container
runtimes do. The channel image is test_channel_custom's, from the loopback registry; the channels
are created through the operator's admin API. Needs root, umoci and the built image.
"""

# ruff: noqa: F811  (pytest fixtures imported from other test modules)

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_channel_custom import registry  # noqa: F401
from test_operator_container import _image_config, rootfs  # noqa: F401
from waiting import wait_until

from elemental_common.run import spawn

pytestmark = [pytest.mark.integration]

NS = "fleet-default"
API = "elemental.cattle.io/v1beta1"
ADMIN = f"/elemental/admin/v1/namespaces/{NS}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def operator(rootfs: Path, tmp_path: Path, registry: Any) -> Iterator[Any]:
    """The image's entrypoint as its user, with the registry allowed over plain HTTP; yields `api`."""
    if not (rootfs / "usr/bin/bwrap").exists():
        pytest.skip("this out/operator predates bubblewrap in its packages: make operator-image")
    _, config = _image_config()
    env = dict(e.split("=", 1) for e in config["Env"])
    state = rootfs / env["ELEMENTAL_STATE"].lstrip("/")
    state.mkdir(parents=True, exist_ok=True)
    os.chown(state, 65532, 65532)
    port = _free_port()
    uid, gid = config["User"].split(":")
    cmd = [
        "bwrap",
        "--dev-bind",  # devices allowed: the fixture's bind of the host's /dev is the container's /dev
        str(rootfs),
        "/",
        "--proc",
        "/proc",
        "--unshare-pid",
        "--die-with-parent",
        "--chdir",
        env["ELEMENTAL_STATE"],
        "--clearenv",
        *[a for e in config["Env"] for a in ("--setenv", *e.split("=", 1))],
        "--setenv",
        "ELEMENTAL_INSECURE_REGISTRIES",
        f"127.0.0.1:{registry.port}",
        "--",
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--",
        *config["Entrypoint"],
        "--listen",
        f"127.0.0.1:{port}",
        "--public-url",
        f"https://127.0.0.1:{port}",
    ]
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = spawn(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (state / "admin-token").exists() and (state / "registration.yaml").exists(), 60)
        tls = ssl.create_default_context(cafile=str(state / "ca.crt"))
        token = (state / "admin-token").read_text().strip()

        def api(method: str, path: str, body: Any = None) -> Any:
            req = urllib.request.Request(
                f"https://127.0.0.1:{port}{ADMIN}{path}",
                data=json.dumps(body).encode() if body is not None else None,
                method=method,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, context=tls, timeout=30) as resp:
                return json.loads(resp.read())

        yield api
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


def _ready(api: Any, name: str) -> dict[str, Any]:
    status = api("GET", f"/managedosversionchannels/{name}").get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})


def test_container_syncs_a_custom_channel(operator: Any, registry: Any) -> None:
    host = f"127.0.0.1:{registry.port}"
    for name, tag in (("ch", "v1"), ("probe", "probe")):
        envs = [{"name": "PORT", "value": str(registry.port)}, {"name": "NAME", "value": "probe"}]
        operator(
            "POST",
            "/managedosversionchannels",
            {
                "apiVersion": API,
                "kind": "ManagedOSVersionChannel",
                "metadata": {"name": name, "namespace": NS},
                "spec": {
                    "type": "custom",
                    "options": {"image": f"{host}/channels/busybox:{tag}", "envs": envs},
                    **({"registry": "mirror.local"} if name == "ch" else {}),
                },
            },
        )
    last: dict[str, Any] = {}
    for name in ("ch", "probe"):

        def synced(n: str = name) -> bool:
            last.clear()
            last.update(_ready(operator, n))
            return last.get("reason") == "Synchronized"

        try:
            wait_until(synced, 60, interval=0.5, what=f"channel {name} to sync")
        except AssertionError:
            pytest.fail(f"channel {name}: {last.get('reason')}: {last.get('message')}")
    version = operator("GET", "/managedosversions/v1.0.0")
    assert version["spec"]["metadata"]["upgradeImage"] == "mirror.local/elemental/os:1.0.0"
    # test_channel_custom's PROBE: no network, nothing but /data writable, as on the host
    report = operator("GET", "/managedosversions/probe")["spec"]["version"].strip()
    assert report == "net=no net=no /etc/x=ro /x=ro /tmp/x=ro /bin/busybox=ro /data/x=rw 0 /work", report
