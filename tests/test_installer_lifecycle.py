"""Upgrade, reset and cloud-config on loop-backed disks (no VM)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from installer_fixtures import (
    disk_partitions,
    esp_dir,
    esp_entries,
    make_oci,
    make_rootfs,
    mounted,
    offline_upgrade,
)

from elemental_common.errors import Die
from elemental_common.run import run
from elemental_register.installer import cloudconfig, oem, setup
from elemental_register.installer.bless import bless
from elemental_register.installer.build_disk import build_disk
from elemental_register.installer.disk import GiB
from elemental_register.installer.efivars import LOADER_GUID
from elemental_register.installer.reset import reset
from elemental_register.installer.upgrade import upgrade_outcome

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("umoci"),
    reason="needs root, loop devices and umoci",
)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("imgs")
    v1 = make_oci(d / "layout", "1.0.0", make_rootfs(d / "r1", "1.0.0"), d)
    v2 = make_oci(d / "layout", "2.0.0", make_rootfs(d / "r2", "2.0.0"), d)
    return v1, v2


def installed(tmp_path: Path, system: str, **install: object) -> Path:
    raw = tmp_path / "disk.raw"
    config = {
        "elemental": {
            "install": install,
            "registration": {"url": "https://op/reg", "ca-cert": "PEM"},
            "system-agent": {
                "url": "https://op",
                "token": "t1",
                "secret-name": "m",
                "secret-namespace": "ns",
            },
            "reset": {"reset-persistent": True, "reset-oem": True},
        },
        "cloud-config": {"hostname": "edge"},
    }
    build_disk(system, raw, 6 * GiB, config)
    return raw


def test_upgrade_writes_inactive_slot_with_tries(tmp_path: Path, images: tuple[str, str]) -> None:
    v1, v2 = images
    raw = installed(tmp_path, v1)
    assert esp_entries(raw) == ["elemental-a+3.conf", "elemental-recovery.conf"]
    assert offline_upgrade(raw, v2, "a", tmp_path) == "b"
    assert esp_entries(raw) == [
        "elemental-a+3.conf",
        "elemental-b+3.conf",
        "elemental-recovery.conf",
    ]
    with disk_partitions(raw) as parts:
        with esp_dir(parts["COS_EFI"], tmp_path) as esp:
            entry = (esp / "loader/entries/elemental-b+3.conf").read_text()
            assert "version 2\n" in entry and "elemental.slot=b" in entry and "2.0.0" in entry
            assert (esp / "EFI/elemental/b/linux").read_bytes().startswith(b"KERNEL-2.0.0")
            assert (esp / "EFI/elemental/a/linux").read_bytes().startswith(b"KERNEL-1.0.0")
        with mounted(parts["COS_SYSTEM_B"], tmp_path / "b", "-o", "ro") as b:
            assert "IMAGE_VERSION=2.0.0" in (b / "usr/lib/os-release").read_text()
        with mounted(parts["COS_OEM"], tmp_path / "oem") as o:
            st = oem.load_system_state(o)
    assert st["generation"] == 2 and st["slots"]["b"]["version"] == "2.0.0"
    assert st["upgrade"]["target"] == "b" and st["upgrade"]["from"] == "a"
    # outcome as the agent sees it
    assert upgrade_outcome(st, "a", st["upgrade"]["boot_id"])[0] == "pending"  # type: ignore[index]
    assert upgrade_outcome(st, "b", "next-boot")[0] == "succeeded"  # type: ignore[index]
    assert upgrade_outcome(st, "a", "next-boot")[0] == "failed"  # type: ignore[index]
    # running B now: the next upgrade goes to A, with a higher version than B
    assert offline_upgrade(raw, v1, "b", tmp_path) == "a"
    with disk_partitions(raw) as parts, esp_dir(parts["COS_EFI"], tmp_path) as esp:
        assert "version 3\n" in (esp / "loader/entries/elemental-a+3.conf").read_text()


def test_upgrade_refuses_image_too_big_for_slot(tmp_path: Path, images: tuple[str, str]) -> None:
    v1, _ = images
    raw = installed(tmp_path, v1, partitions={"system": 128})
    big = make_oci(
        tmp_path / "big", "3.0.0", make_rootfs(tmp_path / "r3", "3.0.0", payload_mib=150), tmp_path
    )
    with pytest.raises(Die, match="does not fit slot B"):
        offline_upgrade(raw, big, "a", tmp_path)
    assert "elemental-a+3.conf" in esp_entries(raw)


def test_reset_restores_slot_a_and_wipes(tmp_path: Path, images: tuple[str, str]) -> None:
    v1, v2 = images
    raw = installed(tmp_path, v1)
    offline_upgrade(raw, v2, "a", tmp_path)
    new_config = {
        "elemental": {
            "registration": {"url": "https://op/reg2", "ca-cert": "PEM2"},
            "system-agent": {
                "url": "https://op",
                "token": "t2",
                "secret-name": "m2",
                "secret-namespace": "ns",
            },
            "reset": {"reset-persistent": True, "reset-oem": True, "reboot": False},
        },
        "cloud-config": {"hostname": "edge-after-reset"},
    }
    with disk_partitions(raw) as parts:
        with mounted(parts["COS_PERSISTENT"], tmp_path / "p") as p:
            (p / "junk").write_text("user data")
        with mounted(parts["COS_OEM"], tmp_path / "oem") as o:
            (o / "elemental/reset-requested").write_text("now")
            (o / "stale-file").write_text("x")
            with esp_dir(parts["COS_EFI"], tmp_path) as esp:
                reset(new_config, esp=esp, oem_dir=o, state={"emulatedTPM": False}, force=True)
            reg = yaml.safe_load((o / "registration/config.yaml").read_text())
            assert reg["elemental"]["registration"]["url"] == "https://op/reg2"
            conn = json.loads((o / "elemental/agent/elemental_connection.json").read_text())
            assert yaml.safe_load(conn["kubeConfig"])["users"][0]["user"]["token"] == "t2"
            assert not (o / "stale-file").exists() and not (o / "elemental/reset-requested").exists()
            st = oem.load_system_state(o)
        with mounted(parts["COS_PERSISTENT"], tmp_path / "p") as p:
            assert not (p / "junk").exists()
            assert (p / "lib/demo/seed.txt").exists()  # the image's /var again
        with mounted(parts["COS_SYSTEM_A"], tmp_path / "a", "-o", "ro") as a:
            assert "IMAGE_VERSION=1.0.0" in (a / "usr/lib/os-release").read_text()
        assert "TYPE=" not in run(["blkid", "-o", "export", parts["COS_SYSTEM_B"]], check=False).stdout
    assert st["slots"]["b"] is None and st["upgrade"] is None and st["generation"] == 3
    assert esp_entries(raw) == ["elemental-a+3.conf", "elemental-recovery.conf"]


def test_reset_refused_outside_recovery(tmp_path: Path) -> None:
    with pytest.raises(Die, match="only runs from the recovery"):
        reset({}, oem_dir=tmp_path)


# ------------------------------------------------------------------------------- cloud-config


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for f in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if Path("/etc", f).exists():
            shutil.copy(Path("/etc", f), root / "etc" / f)
    (root / "bin").mkdir()
    return root


def test_cloud_config_subset(fake_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cc = {
        "hostname": "edge-7.example.com",
        "users": [
            {
                "name": "alice",
                "passwd": "$6$salt$hash",
                "ssh_authorized_keys": ["ssh-ed25519 AAAA alice@x"],
                "groups": ["users"],
            },
            {"name": "root", "passwd": "$6$r$oot"},
        ],
        "write_files": [
            {"path": "/etc/motd", "content": "hello\n", "permissions": "0640"},
            {"path": "/etc/b64", "content": base64.b64encode(b"bin").decode(), "encoding": "b64"},
            {
                "path": "/etc/gz",
                "content": base64.b64encode(gzip.compress(b"zip")).decode(),
                "encoding": "gzip+base64",
            },
        ],
        "runcmd": [f"echo once >> {marker}", ["/bin/sh", "-c", f"echo list >> {marker}"]],
    }
    done = cloudconfig.apply(cc, fake_root)
    assert (fake_root / "etc/hostname").read_text() == "edge-7\n"
    passwd = (fake_root / "etc/passwd").read_text()
    assert "\nalice:" in passwd
    assert "alice:$6$salt$hash:" in (fake_root / "etc/shadow").read_text()
    assert "root:$6$r$oot:" in (fake_root / "etc/shadow").read_text()
    keys = fake_root / "home/alice/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAA alice@x\n" and keys.stat().st_mode & 0o777 == 0o600
    assert (fake_root / "etc/motd").stat().st_mode & 0o777 == 0o640
    assert (fake_root / "etc/b64").read_bytes() == b"bin" and (fake_root / "etc/gz").read_bytes() == b"zip"
    assert marker.read_text() == "once\nlist\n"
    # every boot: declarative parts again (idempotent), runcmd not
    cloudconfig.apply(cc, fake_root)
    assert marker.read_text() == "once\nlist\n"
    assert passwd == (fake_root / "etc/passwd").read_text()
    assert keys.read_text() == "ssh-ed25519 AAAA alice@x\n"
    assert any(d.startswith("runcmd") for d in done)


def test_setup_copies_oem_agent_files(fake_root: Path, tmp_path: Path) -> None:
    o = tmp_path / "oem"
    config = {
        "elemental": {
            "registration": {"ca-cert": "PEM"},
            "system-agent": {"url": "https://op", "token": "t", "secret-name": "m", "secret-namespace": "ns"},
        },
        "cloud-config": {"hostname": "from-oem"},
    }
    oem.oem_tree(o, config, {})
    setup.setup(fake_root, o)
    conn = fake_root / "var/lib/elemental/agent/elemental_connection.json"
    kubeconfig = yaml.safe_load(json.loads(conn.read_text())["kubeConfig"])
    assert kubeconfig["users"][0]["user"]["token"] == "t" and conn.stat().st_mode & 0o777 == 0o600
    assert (fake_root / "etc/rancher/elemental/agent/config.yaml").is_file()
    assert (
        fake_root / "etc/rancher/elemental/agent/envs"
    ).read_text() == 'CATTLE_AGENT_STRICT_VERIFY="false"\n'
    assert (fake_root / "etc/hostname").read_text() == "from-oem\n"


def test_bless_renames_the_booted_entry(tmp_path: Path) -> None:
    esp = tmp_path / "esp"
    (esp / "loader/entries").mkdir(parents=True)
    (esp / "loader/entries/elemental-b+1-2.conf").write_text("x")
    efivars = tmp_path / "efivars"
    efivars.mkdir()
    value = "\\loader\\entries\\elemental-b+1-2.conf".encode("utf-16-le") + b"\0\0"
    (efivars / f"LoaderBootCountPath-{LOADER_GUID}").write_bytes(b"\x06\0\0\0" + value)
    absent = tmp_path / "no-systemd-bless-boot"
    assert bless(esp, efivars, Path("/bin/sh")) is None  # systemd's own tool present: defer
    assert bless(esp, efivars, absent) == "elemental-b.conf"
    assert [p.name for p in (esp / "loader/entries").iterdir()] == ["elemental-b.conf"]
    assert bless(esp, efivars, absent) is None  # already blessed


def test_upgrade_is_idempotent(tmp_path: Path, images: tuple[str, str]) -> None:
    """The version already running in a slot is never written into the other slot: the upgrade
    instruction run again after its reboot (a power cut before the agent recorded the plan) or an
    upgrade to the running version writes nothing, so the fallback slot survives."""
    v1, v2 = images
    raw = installed(tmp_path, v1)
    assert offline_upgrade(raw, v1, "a", tmp_path) == "a"  # already running 1.0.0 in A
    assert esp_entries(raw) == ["elemental-a+3.conf", "elemental-recovery.conf"]
    assert offline_upgrade(raw, v2, "a", tmp_path) == "b"
    entries = esp_entries(raw)
    assert offline_upgrade(raw, v2, "b", tmp_path) == "b"  # booted B, the same instruction again
    assert esp_entries(raw) == entries
    with disk_partitions(raw) as parts:
        with mounted(parts["COS_SYSTEM_A"], tmp_path / "a", "-o", "ro") as a:
            assert "IMAGE_VERSION=1.0.0" in (a / "usr/lib/os-release").read_text()
        with mounted(parts["COS_OEM"], tmp_path / "oem") as o:
            st = oem.load_system_state(o)
    assert st["generation"] == 2 and st["slots"]["a"]["version"] == "1.0.0"


def test_slot_is_durable_before_its_entry(
    tmp_path: Path, images: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut must never leave an entry pointing at a half-written slot: the slot device is
    fsynced before its boot entry is written."""
    v1, v2 = images
    raw = installed(tmp_path, v1)
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:  # the real fsync, and which file it was for
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    assert offline_upgrade(raw, v2, "a", tmp_path) == "b"
    entry = next(i for i, p in enumerate(synced) if p.endswith("/loader/entries/elemental-b+3.conf.tmp"))
    assert any(p.startswith("/dev/") for p in synced[:entry]), synced
