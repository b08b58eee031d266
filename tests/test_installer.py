"""Installer on loop-backed disk files: real partitions, file systems, boot entries, OEM files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from installer_fixtures import loop_disk, make_oci, make_rootfs, mounted

from elemental_common.errors import Die
from elemental_common.run import run
from elemental_register.installer import boot, disk, oem, setup, source
from elemental_register.installer.bless import bless
from elemental_register.installer.build_disk import build_disk
from elemental_register.installer.disk import GiB, MiB
from elemental_register.installer.efivars import LOADER_GUID
from elemental_register.installer.install import install

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("umoci"),
    reason="needs root, loop devices and umoci",
)

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def reg_config(device: str, system: str, **install: Any) -> dict[str, Any]:
    return {
        "elemental": {
            "registration": {"url": "https://op.example:9443/elemental/registration/abc", "ca-cert": CA},
            "install": {"device": device, "system-uri": system, **install},
            "reset": {"enabled": True},
            "system-agent": {
                "url": "https://op.example:9443",
                "token": "tok123",
                "secret-name": "m-1",
                "secret-namespace": "fleet-default",
            },
        },
        "cloud-config": {"users": [{"name": "root", "passwd": "$6$x$y"}], "hostname": "edge-1"},
    }


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.geteuid() != 0 or not shutil.which("umoci"):
        pytest.skip("needs root and umoci")
    d = tmp_path_factory.mktemp("img")
    root = make_rootfs(d / "rootfs", "1.0.0")
    return make_oci(d / "layout", "1.0.0", root, d)


# ------------------------------------------------------------------------------ pure logic


def test_device_selector_is_deterministic() -> None:
    disks = [
        disk.Disk("sdb", "/dev/sdb", 40 * GiB),
        disk.Disk("sda", "/dev/sda", 40 * GiB),
        disk.Disk("vda", "/dev/vda", 8 * GiB),
    ]
    rules = [{"key": "Size", "operator": "Gt", "values": ["20Gi"]}]
    assert disk.select_device({"device-selector": rules}, disks) == "/dev/sda"
    assert disk.select_device({"device-selector": rules}, list(reversed(disks))) == "/dev/sda"
    rules2 = [{"key": "Name", "operator": "NotIn", "values": ["/dev/sda"]}]
    assert disk.select_device({"device-selector": rules2}, disks) == "/dev/sdb"
    rules3 = [
        {"key": "Size", "operator": "Lt", "values": ["10G"]},
        {"key": "Name", "operator": "In", "values": ["vda"]},
    ]
    assert disk.select_device({"device-selector": rules3}, disks) == "/dev/vda"
    assert disk.select_device({"device": "/dev/nvme0n1", "device-selector": rules}, disks) == "/dev/nvme0n1"
    with pytest.raises(Die, match="no disk matches"):
        disk.select_device({"device-selector": [{"key": "Size", "operator": "Gt", "values": ["1Ti"]}]}, disks)
    with pytest.raises(Die, match="no install device"):
        disk.select_device({}, disks)


def test_quantities() -> None:
    assert disk.parse_quantity("20Gi") == 20 * GiB
    assert disk.parse_quantity("500M") == 500 * 10**6
    assert disk.parse_quantity("1024") == 1024


def test_layout_sizes() -> None:
    lay = disk.plan_layout(32 * GiB, 300 * MiB)
    sizes = {p.role: p.size for p in lay.parts}
    assert sizes["a"] == sizes["b"] == 2 * GiB
    assert 300 * MiB < sizes["recovery"] < 400 * MiB
    assert sizes["persistent"] == 0  # rest of the disk
    small = disk.plan_layout(4 * GiB, 300 * MiB)  # build-disk --size 4G must fit
    assert 600 * MiB <= small.part("a").size < 2 * GiB
    with pytest.raises(Die, match="disk too small"):
        disk.plan_layout(1 * GiB, 300 * MiB)


def test_source_parsing() -> None:
    assert source.parse("oci:/run/os:1.2") == source.Source("oci", "/run/os", "1.2")
    assert source.parse("oci:/run/os") == source.Source("oci", "/run/os", "")
    assert source.parse("docker://reg/os:1") == source.Source("docker", "reg/os:1")
    assert source.parse("reg.example/os:1") == source.Source("docker", "reg.example/os:1")
    assert source.parse("dir:/srv/root") == source.Source("dir", "/srv/root")
    assert source.parse(None).ref == source.SEED_LAYOUT


def test_entry_names() -> None:
    e = boot.parse_entry_name(Path("elemental-a+2-1.conf"))
    assert e and (e.id, e.tries_left, e.tries_done) == ("elemental-a", 2, 1)
    e = boot.parse_entry_name(Path("elemental-b+0-3.conf"))
    assert e and e.bad
    e = boot.parse_entry_name(Path("elemental-a.conf"))
    assert e and e.tries_left is None and not e.bad


def test_agent_files_unmanaged(tmp_path: Path) -> None:
    from elemental_register.installer import api

    api.install_unmanaged(reg_config("/dev/x", "dir:/"), tmp_path)
    conn = json.loads((tmp_path / "var/lib/elemental/agent/elemental_connection.json").read_text())
    # rancher-system-agent's form, as Elemental's register client writes it
    assert set(conn) == {"kubeConfig", "namespace", "secretName"}
    assert (conn["namespace"], conn["secretName"]) == ("fleet-default", "m-1")
    kc = yaml.safe_load(conn["kubeConfig"])
    assert kc["clusters"][0]["cluster"]["server"] == "https://op.example:9443"
    assert base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]).decode() == CA
    assert kc["users"][0]["user"]["token"] == "tok123"
    assert kc["current-context"] == "context"
    cfg = yaml.safe_load((tmp_path / "etc/rancher/elemental/agent/config.yaml").read_text())
    assert cfg["connectionInfoFile"] == "/var/lib/elemental/agent/elemental_connection.json"
    for p in ("var/lib/elemental/agent/elemental_connection.json", "etc/rancher/elemental/agent/config.yaml"):
        assert (tmp_path / p).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "var/lib/elemental/agent").stat().st_mode & 0o777 == 0o700
    assert not (tmp_path / "oem").exists()


# --------------------------------------------------------------------- on loop-backed disks


def _digest(path: Path, n: int = 8 * MiB) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(n)).hexdigest()


def esp_files(dev: str) -> dict[str, str]:
    out = run(["mdir", "-i", dev, "-/", "-b", "::/"]).stdout.split()
    return {p: p for p in out}


@needs_root
def test_install_on_loop_disk(tmp_path: Path, image: str) -> None:
    stages: list[tuple[str, int]] = []
    with loop_disk(tmp_path / "disk.raw", 6 * GiB) as dev:
        cfg = reg_config(dev, image)
        assert install(cfg, lambda s, p: stages.append((s, p)), state={"emulatedTPM": True}) == dev
        percents = [p for _, p in stages]
        assert percents == sorted(percents) and percents[0] == 0 and percents[-1] == 100

        table = {p["name"]: p for p in disk.read_table(dev)}
        assert list(table) == [
            "COS_EFI",
            "COS_OEM",
            "COS_RECOVERY",
            "COS_SYSTEM_A",
            "COS_SYSTEM_B",
            "COS_PERSISTENT",
        ]
        assert table["COS_EFI"]["type"] == disk.ESP_TYPE
        blk = {n: run(["blkid", "-o", "export", p["node"]], check=False).stdout for n, p in table.items()}
        assert "TYPE=vfat" in blk["COS_EFI"] and "LABEL=COS_EFI" in blk["COS_EFI"]
        assert "TYPE=erofs" in blk["COS_SYSTEM_A"] and "TYPE=erofs" in blk["COS_RECOVERY"]
        assert "TYPE=" not in blk["COS_SYSTEM_B"]
        assert "LABEL=COS_OEM" in blk["COS_OEM"] and "TYPE=ext4" in blk["COS_OEM"]
        assert "LABEL=COS_PERSISTENT" in blk["COS_PERSISTENT"]

        # boot loader and entries
        esp = table["COS_EFI"]["node"]
        files = esp_files(esp)
        assert "::/EFI/BOOT/BOOTX64.EFI" in files and "::/EFI/elemental/a/linux" in files
        entry_a = run(["mtype", "-i", esp, "::/loader/entries/elemental-a+3.conf"]).stdout
        uuid_a = table["COS_SYSTEM_A"]["uuid"].lower()
        assert f"root=PARTUUID={uuid_a}" in entry_a and "elemental.slot=a" in entry_a
        assert (
            "console=ttyS0,115200" in entry_a and "root=PARTUUID=dead" not in entry_a and " rw" not in entry_a
        )
        assert "sort-key elemental\nversion 1\n" in entry_a
        mid = table["COS_PERSISTENT"]["uuid"].lower().replace("-", "")
        assert f"systemd.machine_id={mid}" in entry_a
        rec = run(["mtype", "-i", esp, "::/loader/entries/elemental-recovery.conf"]).stdout
        assert "elemental.mode=recovery" in rec and ":/var:" not in rec
        kernel = run(["mtype", "-i", esp, "::/EFI/elemental/a/linux"]).stdout
        assert kernel.startswith("KERNEL-1.0.0")

        # slot A holds the OS
        with mounted(table["COS_SYSTEM_A"]["node"], tmp_path / "a", "-o", "ro") as a:
            assert (a / "usr/lib/os-release").read_text().count("IMAGE_VERSION=1.0.0") == 1
        with mounted(table["COS_PERSISTENT"]["node"], tmp_path / "p") as p:
            assert (p / "lib/demo/seed.txt").read_text() == "from the image's /var\n"
        with mounted(table["COS_OEM"]["node"], tmp_path / "oem") as o:
            reg = yaml.safe_load((o / "registration/config.yaml").read_text())
            assert reg["elemental"]["registration"]["url"].endswith("/abc")
            assert "install" not in reg["elemental"]
            assert (o / "registration/config.yaml").stat().st_mode & 0o777 == 0o600
            assert yaml.safe_load((o / "registration/state.yaml").read_text()) == {"emulatedTPM": True}
            conn = json.loads((o / "elemental/agent/elemental_connection.json").read_text())
            kc = yaml.safe_load(conn["kubeConfig"])
            assert kc["users"][0]["user"]["token"] == "tok123"
            assert base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]).decode() == CA
            assert yaml.safe_load((o / "elemental/cloud-config.yaml").read_text())["hostname"] == "edge-1"
            st = oem.load_system_state(o)
            assert st["partitions"]["a"] == uuid_a and st["slots"]["a"]["version"] == "1.0.0"


@needs_root
def test_bad_config_never_touches_the_disk(tmp_path: Path, image: str) -> None:
    with loop_disk(tmp_path / "small.raw", 512 * MiB) as dev:
        with open(dev, "r+b") as f:
            f.write(b"\xaa" * MiB)
            f.flush()
            os.fsync(f.fileno())
        before = _digest(tmp_path / "small.raw")
        with pytest.raises(Die, match="disk too small"):
            install(reg_config(dev, image))
        with pytest.raises(Die, match="cannot read the OS image|no tag"):
            install(reg_config(dev, f"oci:{tmp_path}/nolayout:1"))
        with pytest.raises(Die, match="no tag '9.9'"):
            install(reg_config(dev, image.rsplit(":", 1)[0] + ":9.9"))
        with pytest.raises(Die, match="does not exist"):
            install(reg_config("/dev/does-not-exist", image))
        assert _digest(tmp_path / "small.raw") == before


@needs_root
def test_damaged_image_is_refused(tmp_path: Path, image: str) -> None:
    layout = Path(image.split(":")[1])
    broken = tmp_path / "broken"
    shutil.copytree(layout, broken)
    man = json.loads((broken / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]
    layer = json.loads((broken / "blobs/sha256" / man).read_text())["layers"][0]["digest"].split(":")[1]
    with open(broken / "blobs/sha256" / layer, "r+b") as f:
        f.truncate(10)
    with pytest.raises(Die, match="missing or truncated"):
        source.check(source.parse(f"oci:{broken}:1.0.0"))


@needs_root
def test_interrupted_install_can_be_repeated(
    tmp_path: Path, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with loop_disk(tmp_path / "disk.raw", 6 * GiB) as dev:
        install(reg_config(dev, image))

        def boom(*a: Any, **k: Any) -> None:
            raise KeyboardInterrupt

        # cut off after the table and slot A are written, before the ESP
        monkeypatch.setattr(oem, "oem_tree", boom)
        with pytest.raises(KeyboardInterrupt):
            install(reg_config(dev, image))
        table = {p["name"]: p for p in disk.read_table(dev)}
        # no boot loader left: firmware falls through to the seed
        assert "TYPE=" not in run(["blkid", "-o", "export", table["COS_EFI"]["node"]], check=False).stdout
        monkeypatch.undo()
        install(reg_config(dev, image))
        esp = {p["name"]: p for p in disk.read_table(dev)}["COS_EFI"]["node"]
        assert "elemental-a+3.conf" in run(["mdir", "-i", esp, "-b", "::/loader/entries"]).stdout


@needs_root
def test_build_disk(tmp_path: Path, image: str) -> None:
    out = tmp_path / "os.raw"
    build_disk(image, out, 4 * GiB)
    table = {p["name"]: p for p in disk.read_table(str(out))}
    assert len(table) == 6
    assert out.stat().st_size == 4 * GiB
    assert not (tmp_path / "os.raw.part").exists()


@needs_root
@pytest.mark.parametrize("where", [0.5, -20, -3], ids=["deflate-stream", "near-trailer", "isize"])
def test_corrupt_layer_is_refused_before_the_disk(tmp_path: Path, image: str, where: float) -> None:
    layout = Path(image.split(":")[1])
    broken = tmp_path / "corrupt"
    shutil.copytree(layout, broken)
    man = json.loads((broken / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]
    layer = json.loads((broken / "blobs/sha256" / man).read_text())["layers"][0]["digest"].split(":")[1]
    data = bytearray((broken / "blobs/sha256" / layer).read_bytes())
    # same size, different bytes: a flipped bit in the deflate stream fails decompression, one
    # in the trailer fails gzip's CRC/size check or the sha256 of the blob; all must be refused
    data[int(len(data) * where) if isinstance(where, float) else where] ^= 0xFF
    (broken / "blobs/sha256" / layer).write_bytes(bytes(data))
    with loop_disk(tmp_path / "d.raw", 6 * GiB) as dev:
        before = _digest(tmp_path / "d.raw")
        with pytest.raises(Die, match="digest|unpacking layer|decompressed"):
            install(reg_config(dev, f"oci:{broken}:1.0.0"))
        assert _digest(tmp_path / "d.raw") == before


@needs_root
def test_layers_and_whiteouts(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "rootfs", "1.0.0")
    system = make_oci(tmp_path / "layout", "1.0.0", root, tmp_path)
    # second layer: delete a file and replace a directory's content (umoci writes whiteouts)
    bundle = tmp_path / "b2"
    run(["umoci", "unpack", "--image", f"{tmp_path}/layout:1.0.0", str(bundle)])
    (bundle / "rootfs/var/lib/demo/seed.txt").unlink()
    (bundle / "rootfs/etc/new.conf").write_text("new\n")
    run(["umoci", "repack", "--image", f"{tmp_path}/layout:1.0.0", str(bundle)])
    src = source.check(source.parse(system))
    out = source.unpack(src, tmp_path / "work")
    assert not (out / "var/lib/demo/seed.txt").exists()
    assert (out / "etc/new.conf").read_text() == "new\n"
    assert (out / "usr/lib/os-release").is_file()
    assert not list(out.rglob(".wh.*"))


def _recording_fsync(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Calls the real os.fsync and records the path each call was for, in order."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_bless_is_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the vfat ESP an unsynced rename was found as a 0-byte entry after a power cut (the machine
    then booted recovery for good): the blessed entry and its directory are fsynced after the rename."""
    entries = tmp_path / "esp/loader/entries"
    entries.mkdir(parents=True)
    (entries / "elemental-a+2-1.conf").write_text("title A\n")
    efivars = tmp_path / "efivars"
    efivars.mkdir()
    value = "\\loader\\entries\\elemental-a+2-1.conf".encode("utf-16-le") + b"\0\0"
    (efivars / f"LoaderBootCountPath-{LOADER_GUID}").write_bytes(b"\x06\0\0\0" + value)
    synced = _recording_fsync(monkeypatch)
    assert bless(tmp_path / "esp", efivars, tmp_path / "no-systemd-bless-boot") == "elemental-a.conf"
    assert str(entries / "elemental-a.conf") in synced and str(entries) in synced
    assert synced.index(str(entries)) > synced.index(str(entries / "elemental-a.conf"))


def test_boot_entries_are_written_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = _recording_fsync(monkeypatch)
    path = boot.write_entry(tmp_path, "elemental-b", "title B\n", 3)
    assert path.read_text() == "title B\n"
    # data (under its temporary name), then the renamed file and the directory holding the name
    assert synced == [f"{path}.tmp", str(path), str(path.parent)]


def test_interrupted_upgrade_work_is_removed_at_boot(tmp_path: Path) -> None:
    """An upgrade cut off by a power loss leaves ~520 MiB in /var/tmp on persistent: the next
    boot's `elemental setup` removes it, sparing a running upgrade's (locked) directory."""
    import fcntl

    work = tmp_path / "var/tmp"
    stale = work / "elemental-upgrade-cut"
    (stale / "rootfs/usr").mkdir(parents=True)
    (stale / "rootfs/usr/big").write_bytes(b"x" * 4096)
    busy = work / "elemental-upgrade-running"
    busy.mkdir()
    other = work / "unrelated"
    other.mkdir()
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        done = setup.setup(tmp_path, tmp_path / "oem")
    finally:
        os.close(fd)
    assert not stale.exists() and busy.is_dir() and other.is_dir()
    assert done == [f"removed {stale}"]


def test_system_state_is_written_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The system state in COS_OEM says which slot holds what (an upgrade's record decides whether
    the next upgrade writes anything): its rename is fsynced with its directory."""
    synced = _recording_fsync(monkeypatch)
    oem.save_system_state(tmp_path, {"generation": 2})
    path = tmp_path / oem.OEM_SYSTEM_STATE
    assert synced[-2:] == [str(path), str(path.parent)]
