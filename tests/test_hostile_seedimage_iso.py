"""A SeedImage's cloud-config reaches its ISO (issue 10's bug, fixed with issue 11 item 3): the
real controller runs the default build (python -m iso.repack, real xorriso) over a synthetic seed
published as an OCI seed image (iso.pack, then iso.seedimage), then the ISO is opened and the file
read back."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from installer_fixtures import build_pe
from operator_fixtures import run_until

from elemental_operator.context import OperatorContext
from elemental_operator.controllers import Manager
from elemental_operator.controllers.base import condition_true
from elemental_operator.controllers.machineregistration import MachineRegistrationController
from elemental_operator.controllers.seedimage import SeedImageController, artifact_path
from elemental_operator.store.sql import SqlStore, open_store
from iso import pack, seedimage
from iso.pack import ISO_CLOUD_CONFIG

NS = "fleet-default"
API = "elemental.cattle.io/v1beta1"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}", poll_interval=0.02)
    yield s
    s.close()


def fake_seed(out: Path) -> Path:
    """The mkosi outputs iso.pack reads: a seed UKI with a command line, its kernel and initrd."""
    out.mkdir(parents=True)
    (out / "seed.efi").write_bytes(build_pe({".cmdline": b"console=ttyS0 quiet", ".linux": b"K" * 4096}))
    (out / "seed.vmlinuz").write_bytes(b"K" * 4096)
    (out / "seed.initrd").write_bytes(b"I" * 4096)
    return out


def seed_image(tmp: Path) -> Path:
    """A seed ISO packed by iso.pack from a synthetic seed, published as an OCI seed image."""
    out = fake_seed(tmp / "out")
    reg = tmp / "base-registration.yaml"
    reg.write_text("elemental:\n  registration:\n    url: https://base.invalid/registration\n")
    assert pack.main(["--out", str(out), "--registration", str(reg), "--work", str(tmp / "pack")]) == 0
    seedimage.publish(out / "seed.iso", tmp / "seed-image", ["0.1.0", "latest"])
    return tmp / "seed-image"


def iso_file(iso: Path, path: str, dest: Path) -> bytes:
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", path, str(dest)],
        check=True,
        capture_output=True,
    )
    return dest.read_bytes()


@pytest.mark.skipif(shutil.which("xorriso") is None or shutil.which("mkfs.vfat") is None, reason="no xorriso")
def test_seedimage_cloud_config_is_in_the_iso(store: SqlStore, tmp_path: Path) -> None:
    ctx = OperatorContext(store=store, public_url="https://op.test:8443", secret_key=b"k" * 32)
    state = tmp_path / "state"
    seeds = SeedImageController(ctx, state, base_dir=seed_image(tmp_path))
    mgr = Manager(ctx, [MachineRegistrationController(ctx), seeds])
    store.create(
        {
            "apiVersion": API,
            "kind": "MachineRegistration",
            "metadata": {"name": "reg", "namespace": NS},
            "spec": {},
        }
    )
    cloud_config = {"users": [{"name": "root", "passwd": "from-the-seedimage"}], "runcmd": ["echo hi"]}
    store.create(
        {
            "apiVersion": API,
            "kind": "SeedImage",
            "metadata": {"name": "s1", "namespace": NS},
            "spec": {"registrationRef": {"name": "reg", "namespace": NS}, "cloud-config": cloud_config},
        }
    )

    def ready() -> bool:
        return condition_true(store.get("SeedImage", NS, "s1"), "SeedImageReady")

    run_until(mgr, ready, timeout=120)
    si = store.get("SeedImage", NS, "s1")
    ref = si["metadata"]["annotations"]["elemental.cattle.io/seedimage-artifact"]
    iso = artifact_path(state, ref, "reg.iso")
    assert iso is not None
    text = iso_file(iso, ISO_CLOUD_CONFIG, tmp_path / "cc.yaml").decode()
    assert text.startswith("#cloud-config")
    assert yaml.safe_load(text) == cloud_config
    registration = yaml.safe_load(iso_file(iso, "/registration.yaml", tmp_path / "reg.yaml"))
    assert registration["elemental"]["registration"]["url"].startswith(
        "https://op.test:8443/elemental/registration/"
    )
