# ruff: noqa: F811  (pytest fixtures imported from operator_fixtures)
"""Elemental's own Go register client runs `elemental-register --install` against our operator,
and the `elemental` it executes is ours: the install lands on a loop disk (issue 12, item 2).

Needs the Go client (ELEMENTAL_GO_REGISTER, built by hand: docs/compatibility.md), root, loop
devices and umoci; skips without them, also under CI. The hook file the Go client lays is also
compared with tests/data/toolkit/elemental-before-hook.yaml, the golden the env-only test uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from installer_fixtures import loop_disk, make_oci, make_rootfs, mounted
from operator_fixtures import RunningOperator, operator, postgres_server, store, store_url, wait_for  # noqa: F401

from elemental_register.installer import disk
from elemental_register.installer.disk import GiB

GO_REGISTER = os.environ.get("ELEMENTAL_GO_REGISTER", "")
DATA = Path(__file__).parent / "data" / "toolkit"
HOOK = Path("/tmp/elemental/cloud-init/elemental-before-hook.yaml")  # elementalcli.TempCloudInitDir
# with --install the Go client reads only these (cmd/register: defaultLive{Config,State}Path)
LIVE_CONFIG = Path("/run/initramfs/live/livecd-cloud-config.yaml")
LIVE_STATE = Path("/tmp/registration/state.yaml")

pytestmark = [
    pytest.mark.allow_skip_in_ci("Elemental's Go client is built by hand (ELEMENTAL_GO_REGISTER)"),
    pytest.mark.skipif(
        not os.access(GO_REGISTER or "/nonexistent", os.X_OK),
        reason="ELEMENTAL_GO_REGISTER does not name Elemental's Go register client",
    ),
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("umoci"),
        reason="needs root, loop devices and umoci",
    ),
]


def _shape(doc: object) -> object:
    """A hook file's structure: stage names, step names, file paths and modes, and for each
    file's content its own yip structure (not the per-machine values)."""
    if isinstance(doc, dict):
        return {k: _shape(v) for k, v in doc.items() if k not in ("content",)} | (
            {"content": _shape(yaml.safe_load(doc["content"]) or {})} if "content" in doc else {}
        )
    if isinstance(doc, list):
        return [_shape(v) for v in doc]
    if isinstance(doc, str) and doc.startswith(("/", "[")):
        return doc  # paths and conditions
    return doc if isinstance(doc, int) else f"<{type(doc).__name__}>"


@contextlib.contextmanager
def live_files() -> Iterator[None]:
    """The seed's paths the Go client insists on, created for the run and removed after; a
    machine that already has them (a real seed) is not a place to run this test."""
    for p in (LIVE_CONFIG, LIVE_STATE, HOOK):
        if p.exists():
            pytest.skip(f"{p} exists: not touching a live system's files")
    dirs = (LIVE_CONFIG.parent, LIVE_STATE.parent, HOOK.parent.parent, HOOK.parent)
    made = [d for d in dirs if not d.exists()]
    LIVE_CONFIG.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        for p in (LIVE_CONFIG, LIVE_STATE, HOOK):
            p.unlink(missing_ok=True)
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        if not any(Path("/run/initramfs").iterdir()):
            Path("/run/initramfs").rmdir()


def test_go_client_install_runs_our_installer(operator: RunningOperator, tmp_path: Path) -> None:
    img = make_oci(tmp_path / "layout", "1.0.0", make_rootfs(tmp_path / "rootfs", "1.0.0"), tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    record.mkdir()
    # `elemental` is ours; it also keeps what the Go client handed over (environment, hook file)
    (bin_dir / "elemental").write_text(
        "#!/bin/sh\n"
        f"env | grep ^ELEMENTAL_ | sort > {record}/env\n"
        f"echo \"$@\" > {record}/args\n"
        f"cp {HOOK} {record}/hook.yaml\n"
        f"exec {sys.executable} -m elemental_register.installer.cli \"$@\"\n"
    )
    (bin_dir / "elemental").chmod(0o755)
    with loop_disk(tmp_path / "disk.raw", 6 * GiB) as dev:
        store_ = operator.ctx.store
        store_.create(
            {
                "apiVersion": "elemental.cattle.io/v1beta1",
                "kind": "MachineRegistration",
                "metadata": {"name": "go-install", "namespace": "fleet-default"},
                "spec": {
                    "machineName": "go-${Random/UUID}",
                    "config": {
                        "elemental": {
                            "registration": {"auth": "tpm", "emulate-tpm": True, "emulated-tpm-seed": 9},
                            "install": {"device": dev, "system-uri": img},
                        },
                        "cloud-config": {"hostname": "edge-go", "runcmd": ["echo one"]},
                    },
                },
            }
        )

        def url() -> str:
            reg = store_.get("MachineRegistration", "fleet-default", "go-install")
            return str(((reg or {}).get("status") or {}).get("registrationURL") or "")

        wait_for(url, timeout=20)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(Path.cwd())}
        with live_files():
            LIVE_CONFIG.write_text(yaml.safe_dump({"elemental": {"registration": {"url": url()}}}))
            proc = subprocess.run(
                [GO_REGISTER, "--install", "--no-smbios", "--debug", "--emulate-tpm",
                 "--emulated-tpm-seed", "9"],
                capture_output=True, text=True, timeout=600, check=False, env=env,
            )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert (record / "args").read_text().split() == ["install"]
        sent = dict(line.split("=", 1) for line in (record / "env").read_text().splitlines())
        assert sent["ELEMENTAL_INSTALL_TARGET"] == dev
        assert sent["ELEMENTAL_CLOUD_INIT_PATHS"] == "/tmp/elemental/cloud-init"
        hook = yaml.safe_load((record / "hook.yaml").read_text())
        golden = yaml.safe_load((DATA / "elemental-before-hook.yaml").read_text())
        assert _shape(hook) == _shape(golden)

        nodes = {p["name"]: p["node"] for p in disk.read_table(dev)}
        with mounted(nodes["COS_OEM"], tmp_path / "oem") as o:
            reg = yaml.safe_load((o / "registration/config.yaml").read_text())
            assert reg["elemental"]["registration"]["url"] == url()
            assert (o / "registration/state.yaml").stat().st_size > 0
            conn = json.loads((o / "elemental/agent/elemental_connection.json").read_text())
            assert conn["secretName"].startswith("go-")
            cc = yaml.safe_load((o / "elemental/cloud-config.yaml").read_text())
            assert cc["hostname"] == "edge-go" and cc["runcmd"] == ["echo one"]
