"""The installer's registry client (no skopeo on the OS) against the e2e harness's registry.

Host only, seconds: a tiny synthetic OS image, derived into a second version, pulled over plain
HTTP (ELEMENTAL_INSECURE_REGISTRIES) with skopeo hidden, unpacked and checked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from harness import Registry
from installer_fixtures import derive_os_version, make_oci, make_rootfs

from elemental_common import registry
from elemental_register.installer import source


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    make_oci(tmp_path / "base", "1.0.0", make_rootfs(tmp_path / "rootfs", "1.0.0"), tmp_path)
    derive_os_version(tmp_path / "base", tmp_path / "v2", "2.0.0", {"/etc/marker": (b"v2\n", 0o600)})
    return tmp_path / "v2"


def test_parse_ref() -> None:
    assert registry.parse_ref("10.0.2.2:5000/elemental-os:0.2.0") == (
        "10.0.2.2:5000",
        "elemental-os",
        "0.2.0",
    )
    assert registry.parse_ref("ubuntu") == ("registry-1.docker.io", "library/ubuntu", "latest")
    assert registry.parse_ref("quay.io/a/b@sha256:00") == ("quay.io", "a/b", "sha256:00")


def test_pull_without_skopeo(layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "skopeo" else real_which(name))
    with Registry({"os": layout}, tmp_path / "registry.log") as reg:
        host = f"127.0.0.1:{reg.port}"
        monkeypatch.setenv("ELEMENTAL_INSECURE_REGISTRIES", host)
        src = source.check(source.parse(f"{host}/os:2.0.0"))
        root = source.unpack(src, tmp_path / "work")
        assert source.os_release(root)["IMAGE_VERSION"] == "2.0.0"
        assert (root / "etc/marker").read_text() == "v2\n"
        assert (root / "var/lib/demo/seed.txt").is_file()  # the base layer is there too
        with pytest.raises(Exception, match="404|MANIFEST_UNKNOWN"):
            source.check(source.parse(f"{host}/os:9.9.9"))


def test_slot_streams_from_the_registry_onto_the_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image of prebuilt verity slots: install reads the slot blob once, straight from the
    registry onto slot A and recovery (no copy on the machine's disk), its digest checked."""
    from installer_fixtures import blob_path, disk_partitions, make_slot_oci

    from elemental_common import osimage
    from elemental_register.installer.build_disk import build_disk
    from elemental_register.installer.disk import GiB

    if shutil.which("systemd-repart") is None or shutil.which("losetup") is None:
        pytest.skip("needs systemd-repart and loop devices")
    system = make_slot_oci(
        tmp_path / "slots", "1.0.0", make_rootfs(tmp_path / "r", "1.0.0", payload_mib=4), tmp_path
    )
    src = source.check(source.parse(system))
    man = source._manifest(Path(src.ref), src.tag)
    desc = next(la for la in man["layers"] if la["mediaType"] == osimage.MEDIA_SLOT)
    data = blob_path(Path(src.ref), desc["digest"]).read_bytes()
    with Registry({"os": Path(src.ref)}, tmp_path / "registry.log") as reg:
        host = f"127.0.0.1:{reg.port}"
        monkeypatch.setenv("ELEMENTAL_INSECURE_REGISTRIES", host)
        build_disk(f"{host}/os:1.0.0", tmp_path / "disk.raw", 6 * GiB)
    gets = [ln for ln in (tmp_path / "registry.log").read_text().splitlines() if desc["digest"] in ln]
    assert len(gets) == 1, gets  # one read feeds both partitions
    with disk_partitions(tmp_path / "disk.raw") as parts:
        for name in ("COS_SYSTEM_A", "COS_RECOVERY"):
            with open(parts[name], "rb") as f:
                assert f.read(len(data)) == data
