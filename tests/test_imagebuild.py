"""The decisions of the image build (imagebuild/build.py) on small trees made here."""

from __future__ import annotations

import dataclasses
import os
import time
import zipfile
from pathlib import Path

from imagebuild import build


def make_wheel(dist: Path, files: dict[str, str]) -> None:
    dist.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dist / "elemental_py-0.1.0-py3-none-any.whl", "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        record = "".join(f"{n},sha256={hash(t)},{len(t)}\n" for n, t in files.items())
        zf.writestr("elemental_py-0.1.0.dist-info/RECORD", record)


def test_wheel_is_replaced_only_when_its_content_changed(tmp_path: Path) -> None:
    dist, new = tmp_path / "dist", tmp_path / "dist.new"
    make_wheel(dist, {"a.py": "x = 1\n"})
    before = (dist / "elemental_py-0.1.0-py3-none-any.whl").stat().st_ino
    make_wheel(new, {"a.py": "x = 1\n"})
    assert build.replace_if_changed(new, dist) is False
    assert not new.exists()
    assert (dist / "elemental_py-0.1.0-py3-none-any.whl").stat().st_ino == before  # untouched
    make_wheel(new, {"a.py": "x = 2\n"})
    assert build.replace_if_changed(new, dist) is True
    assert build.wheel_record(dist) is not None and "a.py" in (build.wheel_record(dist) or "")


def repo_tree(root: Path) -> build.Settings:
    for rel in ("mkosi.conf", "profiles/seed/mkosi.conf", "overlays/seed/etc/x.conf", "imagebuild/build.py",
                "profiles/os/mkosi.conf"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel + "\n")
    return dataclasses.replace(
        build.Settings.from_env(repo=root), out=root / "out", cache=root / "cache", mkosi_args=(), force=False
    )


def test_inputs_digest_follows_the_image_definition(tmp_path: Path) -> None:
    s = repo_tree(tmp_path)
    d1, text = build.inputs_digest(s, "seed", "mkosi 24.3", "RECORD-1")
    assert "overlays/seed/etc/x.conf" in text and "profiles/os" not in text
    assert build.inputs_digest(s, "seed", "mkosi 24.3", "RECORD-1")[0] == d1
    # another profile's change does not touch this image
    (tmp_path / "profiles/os/mkosi.conf").write_text("changed\n")
    assert build.inputs_digest(s, "seed", "mkosi 24.3", "RECORD-1")[0] == d1
    # its overlay, the wheel, the version settings and mkosi itself do
    (tmp_path / "overlays/seed/etc/x.conf").write_text("changed\n")
    d2 = build.inputs_digest(s, "seed", "mkosi 24.3", "RECORD-1")[0]
    assert d2 != d1
    assert build.inputs_digest(s, "seed", "mkosi 24.3", "RECORD-2")[0] != d2
    s2 = dataclasses.replace(s, os_version="0.2.0")
    assert build.inputs_digest(s2, "seed", "mkosi 24.3", "RECORD-1")[0] != d2
    assert build.inputs_digest(s, "seed", "mkosi 25", "RECORD-1")[0] != d2


def test_up_to_date_needs_the_same_digest_and_every_output(tmp_path: Path) -> None:
    stamp, out = tmp_path / "stamp", tmp_path / "seed.efi"
    assert not build.up_to_date(stamp, "abc", [out])  # never built
    stamp.write_text("abc\n")
    assert not build.up_to_date(stamp, "abc", [out])  # output deleted
    out.write_text("uki")
    assert build.up_to_date(stamp, "abc", [out])
    assert not build.up_to_date(stamp, "def", [out])  # inputs changed


def test_package_lock_only_when_packages_may_be_installed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    definition = tmp_path / "mkosi.conf"
    definition.write_text("[Content]\n")
    past = time.time() - 100
    os.utime(definition, (past, past))
    assert build.may_install_packages(cache, [definition], ())  # no incremental cache yet
    (cache / "debian~trixie~x86-64~default-initrd.manifest").write_text("{}")
    assert build.may_install_packages(cache, [definition], ())  # the initrd's manifest does not count
    (cache / "debian~trixie~x86-64.manifest").write_text("{}")
    assert not build.may_install_packages(cache, [definition], ())  # warm: installs nothing
    assert build.may_install_packages(cache, [definition], ("-f",))  # forced rebuild
    definition.write_text("[Content]\nPackages=vim\n")  # newer than the cache
    assert build.may_install_packages(cache, [definition], ())
