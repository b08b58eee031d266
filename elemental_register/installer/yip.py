"""A yip runner for the stages and directives Elemental's register client and toolkit hooks use.

yip (rancher/yip) is the cloud-init-like engine Elemental's toolkit runs at its install, reset
and upgrade hooks (`before-install`, `after-install`, ...) and at boot. Ours runs the subset the
register client writes and hooks commonly use: `if`, `directories`, `files`, `commands`,
`environment` (in yip's plugin order). Every other directive is logged and skipped, never
silently dropped. A `Target` says where absolute paths land: the toolkit writes into partitions
it has mounted (`/run/elemental/oem`, `/oem`); we write into the directory that becomes COS_OEM.
"""

from __future__ import annotations

import base64
import grp
import gzip
import logging
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from elemental_common.errors import Die
from elemental_common.run import run

log = logging.getLogger("elemental.yip")

# yip's own order of the plugins we implement (pkg/executor: directories, files, commands, ...,
# environment); "name" and "if" are not directives.
SUPPORTED = ("directories", "files", "commands", "environment", "environment_file")
IGNORED_KEYS = ("name", "if")
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Target:
    """Where a yip file's absolute paths land and what may run.

    remap: {absolute prefix: directory}, longest prefix first; confined: a path outside remap is
    skipped (logged) instead of written to the live system; run_commands: False when commands
    would run on the wrong system (a file meant for the installed OS's boot, read at install);
    assume_if: conditions are not evaluated but taken as true (see oem.import_elemental)."""

    remap: dict[str, Path] = field(default_factory=dict)
    blocked: tuple[str, ...] = ()  # prefixes the toolkit would have mounted and we have not
    confined: bool = False
    run_commands: bool = True
    assume_if: bool = False

    def path(self, p: str) -> Path | None:
        norm = os.path.normpath("/" + p.lstrip("/")) if p else ""
        if not norm:
            return None
        if any(norm == b or norm.startswith(b.rstrip("/") + "/") for b in self.blocked):
            return None
        for prefix in sorted(self.remap, key=len, reverse=True):
            pre = prefix.rstrip("/") or "/"
            if norm == pre or norm.startswith(pre + "/"):
                rest = norm[len(pre) :].lstrip("/")
                return self.remap[prefix] / rest if rest else self.remap[prefix]
        return None if self.confined else Path(norm)


@dataclass
class Report:
    """What a run did, for the log and the tests; errors count against --strict."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def config_files(paths: list[str]) -> list[Path]:
    """The yip files of cloud-init paths, in yip's order: each path as given, a directory's
    YAML files sorted by name (recursively, as yip walks it). Missing paths are skipped, as the
    toolkit filters them; URLs are logged (not fetched)."""
    out: list[Path] = []
    for p in paths:
        if "://" in p:
            log.info("cloud-init path %s: remote sources are not fetched here, skipped", p)
            continue
        path = Path(p)
        if path.is_dir():
            out += sorted(
                (f for f in path.rglob("*") if f.is_file() and f.suffix in YAML_SUFFIXES),
                key=lambda f: str(f.relative_to(path)),
            )
        elif path.is_file():
            out.append(path)
    return out


def load(path: Path) -> dict[str, Any]:
    """One yip file: a mapping (cloud-config or yip); anything else is an error the caller logs."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError("not a YAML mapping")
    return data


def run_stage(stage: str, paths: list[str], target: Target | None = None) -> Report:
    """Run `stage` of every yip file under `paths`, as the toolkit's RunStage does: the
    `<stage>.before`, `<stage>` and `<stage>.after` stages, each over all files."""
    target = target or Target()
    report = Report()
    docs = []
    for f in config_files(paths):  # each read once: a bad file is one error, not three
        try:
            docs.append((f, load(f)))
        except (OSError, ValueError, yaml.YAMLError) as e:
            report.errors.append(f"{f}: {e}")
            log.warning("yip: cannot read %s: %s", f, e)
    for name in (f"{stage}.before", stage, f"{stage}.after"):
        for f, doc in docs:
            run_config(doc, name, target, report, source=str(f))
    return report


def has_stage(stage: str, paths: list[str]) -> bool:
    """Whether any yip file under `paths` has `stage` (or its .before/.after), so a hook that
    needs partitions mounted mounts them only when there is something to run."""
    names = {f"{stage}.before", stage, f"{stage}.after"}
    for f in config_files(paths):
        try:
            stages = load(f).get("stages") or {}
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if isinstance(stages, dict) and names & {k for k, v in stages.items() if v}:
            return True
    return False


def run_config(doc: dict[str, Any], stage: str, target: Target, report: Report, source: str = "") -> None:
    stages = doc.get("stages") or {}
    if not isinstance(stages, dict):
        report.errors.append(f"{source}: 'stages' is not a mapping")
        return
    for i, st in enumerate(stages.get(stage) or []):
        if not isinstance(st, dict):
            report.errors.append(f"{source}: {stage}[{i}] is not a mapping")
            continue
        label = f"{source}: {stage} {st.get('name') or f'#{i}'!r}"
        run_step(st, target, report, label)


def run_step(st: dict[str, Any], target: Target, report: Report, label: str) -> None:
    """One yip stage entry: its `if`, then the directives in yip's plugin order."""
    cond = st.get("if")
    if cond and not target.assume_if:
        ok = run(["sh", "-c", str(cond)], check=False).returncode == 0
        if not ok:
            report.skipped.append(f"{label}: if {cond!r} is false")
            log.info("yip %s: skipped, 'if' is false", label)
            return
    for key, val in st.items():
        if key in SUPPORTED or key in IGNORED_KEYS or val in (None, "", [], {}, 0, False):
            continue
        report.skipped.append(f"{label}: {key}")
        log.warning("yip %s: directive %r is not supported here, skipped", label, key)
    for d in st.get("directories") or []:
        _guard(report, label, "directory", lambda d=d: _directory(d, target, report, label))
    for f in st.get("files") or []:
        _guard(report, label, "file", lambda f=f: _file(f, target, report, label))
    for cmd in st.get("commands") or []:
        if not target.run_commands:
            report.skipped.append(f"{label}: command {cmd!r}")
            log.info("yip %s: command %r not run here (it is meant for the installed system)", label, cmd)
            continue
        proc = run(["sh", "-c", str(cmd)], check=False)
        if proc.returncode != 0:
            report.errors.append(f"{label}: {cmd!r} exited {proc.returncode}: {(proc.stderr or '').strip()}")
            log.warning("yip %s: %r failed (%d)", label, cmd, proc.returncode)
        else:
            report.done.append(f"ran {cmd}")
    env = st.get("environment") or {}
    if env:
        _guard(report, label, "environment", lambda: _environment(env, st, target, report, label))


def _guard(report: Report, label: str, what: str, fn: Any) -> None:
    # yip keeps going after a failing directive and reports all errors at the end
    try:
        fn()
    except (OSError, ValueError, KeyError, TypeError, Die) as e:
        report.errors.append(f"{label}: {what}: {e}")
        log.warning("yip %s: %s failed: %s", label, what, e)


def mode_of(value: Any, default: int) -> int:
    """yip's permissions: an integer (the Go client writes 0600 as 384; YAML's 0600 is octal
    already) or an octal string ("0600", "0o600")."""
    if value in (None, "", 0):
        return default
    if isinstance(value, int):
        return value
    return int(str(value).removeprefix("0o"), 8)


def _dest(p: Any, target: Target, report: Report, label: str) -> Path | None:
    dest = target.path(str(p or ""))
    if dest is None:
        report.skipped.append(f"{label}: {p}")
        log.info("yip %s: %s is outside the installed system's files here, skipped", label, p)
    return dest


def _ids(item: dict[str, Any]) -> tuple[int, int]:
    uid, gid = int(item.get("owner") or 0), int(item.get("group") or 0)
    owner = item.get("owner_string") or item.get("ownerstring")
    if owner:
        user, _, group = str(owner).partition(":")
        uid = pwd.getpwnam(user).pw_uid
        gid = grp.getgrnam(group).gr_gid if group else pwd.getpwnam(user).pw_gid
    return uid, gid


def _directory(d: dict[str, Any], target: Target, report: Report, label: str) -> None:
    dest = _dest(d.get("path"), target, report, label)
    if dest is None:
        return
    mode = mode_of(d.get("permissions"), 0o755)
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, mode)
    os.chown(dest, *_ids(d))
    report.done.append(f"directory {d.get('path')} -> {dest}")


def decode(content: str, encoding: str) -> bytes:
    """yip's encodings: b64/base64, gz/gzip, gz+b64/gzip+base64 (as cloud-init names them)."""
    enc = (encoding or "").lower()
    if enc in ("", "text", "text/plain"):
        return content.encode()
    if enc in ("b64", "base64"):
        return base64.b64decode(content)
    if enc in ("gz", "gzip"):
        return gzip.decompress(content.encode("latin-1"))
    if enc in ("gz+b64", "gz+base64", "gzip+b64", "gzip+base64"):
        return gzip.decompress(base64.b64decode(content))
    raise ValueError(f"unknown encoding {encoding!r}")


def _file(f: dict[str, Any], target: Target, report: Report, label: str) -> None:
    dest = _dest(f.get("path"), target, report, label)
    if dest is None:
        return
    data = decode(str(f.get("content") or ""), str(f.get("encoding") or ""))
    mode = mode_of(f.get("permissions"), 0o644)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.yip")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fchown(fd, *_ids(f))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    report.done.append(f"file {f.get('path')} -> {dest}")


def _environment(
    env: dict[str, Any], st: dict[str, Any], target: Target, report: Report, label: str
) -> None:
    """yip's environment: KEY=value lines merged into environment_file (default /etc/environment)."""
    name = str(st.get("environment_file") or "/etc/environment")
    dest = _dest(name, target, report, label)
    if dest is None:
        return
    lines: dict[str, str] = {}
    if dest.is_file():
        for line in dest.read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep:
                lines[k.strip()] = v
    for k, v in env.items():
        lines[str(k)] = f'"{v}"'
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    report.done.append(f"environment {name} -> {dest}")
