"""The image build: wheel, skip decision, package lock, mkosi runs, os.raw (package docstring)."""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from elemental_common import consts
from elemental_common.errors import die, entry_point
from elemental_common.run import run, spawn
from imagebuild import keys, osimage

REPO = Path(__file__).resolve().parent.parent
# make target -> mkosi profile
PROFILES = {"os": "os", "seed": "seed", "operator-image": "operator", "operator": "operator"}
OUTPUTS = {
    "seed": ("seed.efi", "seed.vmlinuz", "seed.initrd"),
    "os": ("os/index.json", "os.raw"),
    "operator": ("operator/index.json",),
}
# Images whose systemd-boot and UKIs are signed for Secure Boot.
SIGNED = ("os", "seed")
# Besides the profile's own definition and overlay, these go into every image's input digest.
COMMON_INPUTS = ("mkosi.conf", "mkosi.pkgmngr", "imagebuild", "scripts/mkosi-install-wheel",
                 "scripts/mkosi-oci-postoutput")


@dataclass(frozen=True)
class Settings:
    repo: Path
    out: Path
    cache: Path
    os_version: str
    os_raw: str  # "installer" (elemental build-disk) or "mkosi"
    os_raw_size: str
    mkosi_args: tuple[str, ...]
    force: bool
    python: Path
    sb_key: Path  # Secure Boot signing key and certificate (PEM); ELEMENTAL_SB_KEY / _CERT
    sb_cert: Path
    sb_own: bool  # the user gave them (else the project's own, made on first use)

    @classmethod
    def from_env(cls, repo: Path = REPO) -> Settings:
        env = os.environ
        out = Path(env.get("OUT") or repo / "out")
        state = Path(env.get("ELEMENTAL_STATE") or consts.DEFAULT_STATE_DIR)
        key, cert = keys.default_paths(state)
        return cls(
            repo=repo,
            out=out if out.is_absolute() else repo / out,
            cache=Path(env.get("ELEMENTAL_CACHE") or consts.DEFAULT_CACHE_DIR),
            os_version=env.get("OS_VERSION") or "0.1.0",
            os_raw=env.get("OS_RAW") or "installer",
            os_raw_size=env.get("OS_RAW_SIZE") or "4G",
            mkosi_args=tuple((env.get("MKOSI_ARGS") or "").split()),
            force=bool(env.get("FORCE")),
            python=Path(env.get("PY") or repo / ".venv/bin/python"),
            sb_key=Path(env.get("ELEMENTAL_SB_KEY") or key),
            sb_cert=Path(env.get("ELEMENTAL_SB_CERT") or cert),
            sb_own=bool(env.get("ELEMENTAL_SB_KEY") or env.get("ELEMENTAL_SB_CERT")),
        )


def say(profile: str, msg: str) -> None:
    print(f"  · [{profile}] {msg}", flush=True)


@contextmanager
def locked(path: Path, *, wait_message: str = "") -> Iterator[None]:
    """Hold an exclusive flock on `path` for the block (printing `wait_message` if it must wait)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait_message:
                print(wait_message, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


# ------------------------------------------------------------------------------------ 1. the wheel


def wheel_record(dist: Path) -> str | None:
    """The sorted RECORD of the one wheel in `dist` (every file with its content hash), or None."""
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) != 1:
        return None
    with zipfile.ZipFile(wheels[0]) as zf:
        name = next((n for n in zf.namelist() if n.endswith(".dist-info/RECORD")), None)
        if name is None:
            return None
        return "\n".join(sorted(zf.read(name).decode().splitlines()))


def replace_if_changed(new: Path, dist: Path) -> bool:
    """Move the freshly built `new` over `dist` when its wheel differs; True when replaced."""
    if wheel_record(new) is not None and wheel_record(new) == wheel_record(dist):
        shutil.rmtree(new)
        return False
    shutil.rmtree(dist, ignore_errors=True)
    new.rename(dist)
    return True


def refresh_wheel(s: Settings, profile: str) -> str:
    """Build the wheel into build/dist (under a lock, replaced only on change); returns its RECORD."""
    build = s.repo / "build"
    say(profile, "wheel -> build/dist")
    with locked(build / ".wheel.lock"):
        new = build / "dist.new"
        shutil.rmtree(new, ignore_errors=True)
        # setuptools reuses build/lib: a module deleted from the tree would live on in the wheel.
        shutil.rmtree(build / "lib", ignore_errors=True)
        proc = run(
            [s.python, "-m", "pip", "wheel", "--no-deps", "-q", "-w", new, s.repo],
            check=False,
            cwd=s.repo,
        )
        (build / "wheel.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            die(f"building the wheel failed:\n{proc.stderr.strip()[-2000:]}", "see build/wheel.log")
        replace_if_changed(new, build / "dist")
        record = wheel_record(build / "dist")
    if record is None:
        die("build/dist does not hold exactly one wheel with a RECORD", "remove build/ and build again")
    return record


# ------------------------------------------------------------------------------ 2. the skip decision


def definition_files(repo: Path, profile: str) -> list[Path]:
    """Every file of the image's definition (config, overlay, build scripts), sorted."""
    roots = [repo / p for p in (*COMMON_INPUTS, f"profiles/{profile}", f"overlays/{profile}")]
    files: list[Path] = []
    for root in roots:
        if root.is_file() or root.is_symlink():
            files.append(root)
        elif root.is_dir():
            files += [
                p for p in root.rglob("*") if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts
            ]
    return sorted(files)


def inputs_digest(s: Settings, profile: str, mkosi_version: str, record: str) -> tuple[str, str]:
    """(sha256, the text it covers) of everything that goes into the image."""
    lines = [
        f"{mkosi_version} OS_VERSION={s.os_version} OS_RAW={s.os_raw} OS_RAW_SIZE={s.os_raw_size}",
        record,
    ]
    if profile in SIGNED and s.sb_cert.is_file():
        lines.append(f"secure-boot certificate {keys.fingerprint(s.sb_cert)}")
    for f in definition_files(s.repo, profile):
        data = os.readlink(f).encode() if f.is_symlink() else f.read_bytes()
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {f.relative_to(s.repo)}")
    text = "\n".join(lines) + "\n"
    return hashlib.sha256(text.encode()).hexdigest(), text


def up_to_date(stamp: Path, digest: str, outputs: Sequence[Path]) -> bool:
    """The last build had the same inputs and left every output in place."""
    try:
        last = stamp.read_text().strip()
    except OSError:
        return False
    return last == digest and all(o.exists() for o in outputs)


# ---------------------------------------------------------------------------- 3. the package lock


def may_install_packages(profile_cache: Path, definitions: Sequence[Path], mkosi_args: Sequence[str]) -> bool:
    """True when mkosi may run apt: no incremental cache yet, a forced rebuild, or a definition
    newer than the cache's manifest (then the cache is stale and mkosi reinstalls)."""
    if mkosi_args:
        return True
    manifests = [m for m in profile_cache.glob("*.manifest") if "~default-initrd" not in m.name]
    if not manifests:
        return True
    built = min(m.stat().st_mtime for m in manifests)
    return any(f.stat().st_mtime > built for f in definitions if f.exists())


# ---------------------------------------------------------------------------------- the mkosi runs


def mkosi_build(s: Settings, profile: str, *extra: str) -> None:
    log = s.repo / "build" / f"mkosi-{profile}.log"
    signing = keys.mkosi_args(s.sb_key, s.sb_cert) if profile in SIGNED else []
    argv = [
        "mkosi",
        f"--profile={profile}",
        f"--cache-dir={s.cache / 'mkosi' / profile}",
        f"--package-cache-dir={s.cache / 'packages'}",
        f"--output-dir={s.out}",
        f"--image-version={s.os_version}",
        *signing,
        *s.mkosi_args,
        "-f",
        *extra,
        "build",
    ]
    say(profile, f"mkosi --profile={profile} {' '.join(extra)} (log: {log.relative_to(s.repo)})")
    with open(log, "w") as f:
        rc = _wait(spawn(argv, stdout=f, stderr=subprocess.STDOUT, cwd=s.repo, stdin=subprocess.DEVNULL))
    lines = log.read_text(errors="replace").splitlines()
    if rc != 0:
        print("\n".join(lines[-40:]), flush=True)
        die(f"mkosi --profile={profile} failed (exit {rc})", f"the full log is {log}")
    # mkosi's progress lines (‣ …), for the impatient reader
    for line in [ln for ln in lines if ln.startswith("‣")][-12:]:
        print(f"    [{profile}] {line}", flush=True)


def _wait(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise


def build_os_raw(s: Settings) -> None:
    """$OUT/os.raw: the installed layout, written by the installer itself from the OCI image."""
    raw = s.out / "os.raw"
    raw.unlink(missing_ok=True)
    if s.os_raw == "mkosi":
        (s.out / "os-disk.raw").rename(raw)  # mkosi's own disk (ESP + root + verity, no A/B)
        return
    log = s.repo / "build" / "build-disk.log"
    say("os", f"elemental build-disk -> {raw} ({s.os_raw_size}; log: {log.relative_to(s.repo)})")
    elemental = s.python.parent / "elemental"
    proc = run(
        [elemental, "build-disk", "--system", f"oci:{s.out / 'os'}:{s.os_version}",
         "--output", raw, "--size", s.os_raw_size],
        check=False,
    )
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print("\n".join((proc.stdout + proc.stderr).splitlines()[-30:]), flush=True)
        die("elemental build-disk failed", f"see {log}; OS_RAW=mkosi builds a plain mkosi disk")


def pack_os(s: Settings) -> None:
    """$OUT/os: the OCI image of the slot (erofs + dm-verity), its UKI and systemd-boot, from the
    split artifacts of mkosi's disk build (profiles/os/repart)."""
    d = s.out
    say("os", f"OCI image of the verity slot -> {d / 'os'}")
    shutil.rmtree(d / "os", ignore_errors=True)
    sd_boot = osimage.systemd_boot_from_esp(d / "os-disk.esp.raw", d / "os-disk.systemd-boot.efi")
    digest = osimage.pack(
        d / "os",
        s.os_version,
        slot=d / "os-disk.slot.raw",
        verity=d / "os-disk.verity.raw",
        uki=d / "os-disk.efi",
        sd_boot=sd_boot,
        labels={
            "org.opencontainers.image.title": "elemental-os",
            "org.opencontainers.image.version": s.os_version,
        },
    )
    say("os", f"os:{s.os_version} {digest}")


def build(target: str, s: Settings) -> None:
    profile = PROFILES.get(target)
    if profile is None:
        die(f"unknown image {target!r}", "one of: os, seed, operator-image")
    for d in (s.cache / "packages", s.cache / "mkosi" / profile, s.out, s.repo / "build"):
        d.mkdir(parents=True, exist_ok=True)

    if profile in SIGNED:
        keys.ensure(s.sb_key, s.sb_cert, create=not s.sb_own)
    record = refresh_wheel(s, profile)
    mkosi_version = run(["mkosi", "--version"]).stdout.strip()
    digest, covered = inputs_digest(s, profile, mkosi_version, record)
    (s.repo / "build" / f"stamp-{profile}.txt").write_text(covered)
    stamp = s.out / ".stamps" / profile
    outputs = [s.out / o for o in OUTPUTS[profile]]
    if not s.force and not s.mkosi_args and up_to_date(stamp, digest, outputs):
        say(profile, f"{target} is up to date (inputs unchanged; FORCE=1 rebuilds)")
        return
    stamp.unlink(missing_ok=True)

    definitions = definition_files(s.repo, profile)
    with _package_lock(s, profile, definitions):
        if profile == "os":
            # another name: mkosi symlinks $Output -> $Output.raw, which would replace $OUT/os
            mkosi_build(s, "os", "--output=os-disk")
            pack_os(s)
            build_os_raw(s)
            for p in s.out.glob("os-disk*"):
                p.unlink()
        else:
            mkosi_build(s, profile)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")
    for o in outputs:
        say(profile, f"{o} ({_size(o)})")


@contextmanager
def _package_lock(s: Settings, profile: str, definitions: Sequence[Path]) -> Iterator[None]:
    if not may_install_packages(s.cache / "mkosi" / profile, definitions, s.mkosi_args):
        yield
        return
    wait = f"  · [{profile}] waiting for another build that is installing packages"
    with locked(s.cache / "packages" / ".build-lock", wait_message=wait):
        yield


def _size(p: Path) -> str:
    size = p.stat().st_size
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size} bytes"


@entry_point("imagebuild")
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m imagebuild", description=__doc__)
    ap.add_argument("target", choices=sorted(PROFILES))
    args = ap.parse_args(argv)
    build(args.target, Settings.from_env())
    return 0
