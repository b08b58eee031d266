"""`elemental install` and `elemental reset` driven only as Elemental's register client drives the
toolkit: ELEMENTAL_* variables and its yip hook file (tests/data/toolkit), on loop disks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from installer_fixtures import disk_partitions, esp_dir, loop_disk, make_oci, make_rootfs, mounted

from elemental_register.installer import disk, setup
from elemental_register.installer.build_disk import build_disk
from elemental_register.installer.disk import GiB

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("umoci"),
    reason="needs root, loop devices and umoci",
)

DATA = Path(__file__).parent / "data" / "toolkit"
REG_URL = "https://operator.example/elemental/registration/golden"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("img")
    return make_oci(d / "layout", "1.0.0", make_rootfs(d / "rootfs", "1.0.0"), d)


def go_env(name: str, work: Path, **fill: str) -> dict[str, str]:
    """The environment Elemental's client sets (tests/data/toolkit/<name>), over a bare one: no
    ELEMENTAL_* of ours, a PATH where `systemctl` only records (the power action must not reach
    the host running the tests)."""
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {work}/power\n')
    (bin_dir / "systemctl").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(Path(__file__).parent.parent),
        "HOME": str(work),
    }
    for line in (DATA / name).read_text().splitlines():
        key, _, val = line.partition("=")
        for k, v in fill.items():
            val = val.replace(f"@{k}@", v)
        env[key] = val
    return env


def hook_dir(work: Path, golden: str) -> Path:
    d = work / "cloud-init"  # the client's /tmp/elemental/cloud-init
    d.mkdir()
    shutil.copy(DATA / golden, d / "elemental-before-hook.yaml")
    return d


def elemental(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "elemental_register.installer.cli", *args],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def check_oem(o: Path) -> None:
    """COS_OEM holds what the hook wrote, where our OS reads it."""
    reg = yaml.safe_load((o / "registration/config.yaml").read_text())
    assert reg["elemental"]["registration"]["url"] == REG_URL
    assert (o / "registration/config.yaml").stat().st_mode & 0o777 == 0o600
    state = yaml.safe_load((o / "registration/state.yaml").read_text())
    assert state["emulatedTPM"] is True and state["emulatedTPMSeed"] == 9
    conn = json.loads((o / "elemental/agent/elemental_connection.json").read_text())
    assert conn["secretName"] == "m-golden" and conn["namespace"] == "fleet-default"
    assert "server: https://operator.example/k8s/clusters/local" in conn["kubeConfig"]
    agent = yaml.safe_load((o / "elemental/agent/config.yaml").read_text())
    assert agent["connectionInfoFile"] == "/var/lib/elemental/agent/elemental_connection.json"
    assert (o / "elemental/agent/envs").read_text() == 'CATTLE_AGENT_STRICT_VERIFY="true"'
    cc = yaml.safe_load((o / "elemental/cloud-config.yaml").read_text())
    assert cc["hostname"] == "edge-go" and cc["runcmd"] == ["echo one"]
    # Elemental's own files are kept under their names too
    for name in ("registration", "state", "cloud-init", "system-agent", "network"):
        assert (o / f"elemental-{name}.yaml").stat().st_mode & 0o777 == 0o600


def test_install_from_the_toolkit_environment(tmp_path: Path, image: str) -> None:
    hooks = hook_dir(tmp_path, "elemental-before-hook.yaml")
    with loop_disk(tmp_path / "disk.raw", 6 * GiB) as dev:
        env = go_env("go-install.env", tmp_path, TARGET=dev, SYSTEM=image, CLOUD_INIT=str(hooks))
        proc = elemental(["install"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # Elemental settings with no meaning for A/B slots are accepted and said so
        assert "ELEMENTAL_SNAPSHOTTER_TYPE='loopdevice': A/B slots" in proc.stderr
        assert (tmp_path / "power").read_text() == "reboot\n"  # ELEMENTAL_REBOOT=true, once, at the end
        nodes = {p["name"]: p["node"] for p in disk.read_table(dev)}
        assert "TYPE=erofs" in subprocess.run(
            ["blkid", "-o", "export", nodes["COS_SYSTEM_A"]], capture_output=True, text=True
        ).stdout
        with mounted(nodes["COS_OEM"], tmp_path / "oem") as o:
            check_oem(o)
            # and the installed OS's boot puts the agent's files in place from there
            root = tmp_path / "root"
            (root / "etc").mkdir(parents=True)
            done = setup.setup(root=root, oem_dir=o)
            assert "/var/lib/elemental/agent/elemental_connection.json" in done
            conn = json.loads((root / "var/lib/elemental/agent/elemental_connection.json").read_text())
            assert conn["secretName"] == "m-golden"
            assert (root / "etc/hostname").read_text().strip() == "edge-go"


def test_install_after_hooks_see_the_new_partitions(tmp_path: Path, image: str) -> None:
    """after-install and post-install run with COS_OEM and COS_PERSISTENT where the toolkit
    mounts them; a chroot hook is said not to run; with --strict a failing hook fails."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "after.yaml").write_text(yaml.safe_dump({"stages": {
        "after-install-chroot": [{"commands": ["touch /etc/never"]}],
        "after-install": [{
            "files": [{"path": "/run/elemental/oem/from-after.txt", "content": "a", "permissions": 0o600}],
            "directories": [{"path": "/run/elemental/persistent/lib/hooked", "permissions": 0o750}],
        }],
        "post-install": [{"files": [{"path": "/run/elemental/efi/x", "content": "skipped"}]}],
    }}))
    with loop_disk(tmp_path / "disk.raw", 6 * GiB) as dev:
        env = go_env("go-install.env", tmp_path, TARGET=dev, SYSTEM=image, CLOUD_INIT=str(hooks))
        env["ELEMENTAL_REBOOT"] = "false"
        proc = elemental(["install"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "after-install-chroot hook: not run" in proc.stderr
        assert not (tmp_path / "power").exists()
        nodes = {p["name"]: p["node"] for p in disk.read_table(dev)}
        with mounted(nodes["COS_OEM"], tmp_path / "oem") as o:
            assert (o / "from-after.txt").read_text() == "a"
        with mounted(nodes["COS_PERSISTENT"], tmp_path / "p") as p:
            assert (p / "lib/hooked").stat().st_mode & 0o777 == 0o750
        assert not Path("/run/elemental/efi/x").exists()
        failing = {"stages": {"post-install": [{"commands": ["exit 7"]}]}}
        (hooks / "after.yaml").write_text(yaml.safe_dump(failing))
        assert elemental(["install"], env).returncode == 0  # not strict: logged
        proc = elemental(["install", "--strict"], env)
        assert proc.returncode != 0 and "post-install hook failed" in proc.stderr


def _installed(tmp_path: Path, image: str) -> Path:
    raw = tmp_path / "disk.raw"
    old = {
        "elemental": {
            "registration": {"url": "https://op/old", "ca-cert": "PEM"},
            "system-agent": {
                "url": "https://op", "token": "t1", "secret-name": "old", "secret-namespace": "ns"
            },
        },
        "cloud-config": {"hostname": "old"},
    }
    build_disk(image, raw, 6 * GiB, old)
    return raw


def _reset(tmp_path: Path, raw: Path, **env_over: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    hooks = hook_dir(tmp_path, "elemental-before-reset-hook.yaml")
    env = {**go_env("go-reset.env", tmp_path, CLOUD_INIT=str(hooks)), **env_over}
    with disk_partitions(raw) as parts:
        with mounted(parts["COS_PERSISTENT"], tmp_path / "p") as p:
            (p / "junk").write_text("user data")
        with mounted(parts["COS_OEM"], tmp_path / "oem") as o, esp_dir(parts["COS_EFI"], tmp_path) as esp:
            (o / "stale").write_text("x")
            # --force, --oem-dir, --esp: this host is not the machine's recovery system
            proc = elemental(["reset", "--force", "--oem-dir", str(o), "--esp", str(esp)], env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            kept = tmp_path / "oem-after"
            shutil.copytree(o, kept, symlinks=True)
        with mounted(parts["COS_PERSISTENT"], tmp_path / "p") as p:
            (kept / "persistent-junk").write_text(str((p / "junk").exists()))
    return proc, kept


def test_reset_from_the_toolkit_environment(tmp_path: Path, image: str) -> None:
    raw = _installed(tmp_path, image)
    proc, o = _reset(tmp_path, raw)
    assert (tmp_path / "power").read_text() == "reboot\n"
    assert not (o / "stale").exists()  # ELEMENTAL_RESET_OEM=true: COS_OEM reformatted
    assert (o / "persistent-junk").read_text() == "False"  # ELEMENTAL_RESET_PERSISTENT=true
    check_oem(o)  # the new registration, from the before-reset hook


def test_reset_keeps_oem_and_persistent_when_told(tmp_path: Path, image: str) -> None:
    raw = _installed(tmp_path, image)
    off = {"ELEMENTAL_RESET_OEM": "false", "ELEMENTAL_RESET_PERSISTENT": "false", "ELEMENTAL_REBOOT": "false"}
    _, o = _reset(tmp_path, raw, **off)
    assert not (tmp_path / "power").exists()
    assert (o / "stale").read_text() == "x"
    assert (o / "persistent-junk").read_text() == "True"
    check_oem(o)
