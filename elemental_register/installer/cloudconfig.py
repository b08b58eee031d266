"""The cloud-config subset Elemental users rely on: users, hostname, write_files, runcmd.

Declarative parts (users, hostname, write_files) are re-applied at every boot, because /etc is an
ephemeral overlay on the read-only slot (Elemental's yip stages also run every boot); runcmd runs
once per installation, guarded by a marker on COS_PERSISTENT.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import os
import pwd
from pathlib import Path
from typing import Any

import yaml

from elemental_common.run import run

log = logging.getLogger("elemental.cloud-config")
RUNCMD_MARK = "var/lib/elemental/cloud-config.runcmd"


def load(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    return data if isinstance(data, dict) else {}


def apply(cc: dict[str, Any], root: Path = Path("/"), *, run_commands: bool = True) -> list[str]:
    """Apply `cc` to the system at `root`; returns what was done (for the log and tests)."""
    done: list[str] = []
    if "stages" in cc:
        log.warning("yip 'stages' are not supported; only users, hostname, write_files, runcmd are applied")
    host = cc.get("hostname") or cc.get("fqdn")
    if host:
        set_hostname(str(host), root)
        done.append(f"hostname {host}")
    for user in cc.get("users") or []:
        if isinstance(user, str):
            user = {"name": user}
        if user.get("name") and user["name"] != "default":
            apply_user(user, root)
            done.append(f"user {user['name']}")
    for f in cc.get("write_files") or []:
        write_file(f, root)
        done.append(f"file {f['path']}")
    cmds = cc.get("runcmd") or []
    if cmds and run_commands:
        digest = hashlib.sha256(yaml.safe_dump(cmds).encode()).hexdigest()
        mark = root / RUNCMD_MARK
        if mark.is_file() and mark.read_text().strip() == digest:
            done.append("runcmd already run")
        else:
            for c in cmds:
                argv = ["/bin/sh", "-c", c] if isinstance(c, str) else [str(x) for x in c]
                proc = run(argv, check=False, cwd=root)
                done.append(f"runcmd {c!r} exit {proc.returncode}")
                if proc.returncode:
                    log.warning("runcmd %r failed (%d): %s", c, proc.returncode, proc.stderr.strip())
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.write_text(digest + "\n")
    return done


def set_hostname(name: str, root: Path) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text(name.split(".")[0] + "\n")
    if root == Path("/"):
        run(["hostname", name.split(".")[0]], check=False)


def _root_args(root: Path) -> list[str]:
    return [] if root == Path("/") else ["--root", str(root)]


def _exists(name: str, root: Path) -> bool:
    if root == Path("/"):
        try:
            pwd.getpwnam(name)
            return True
        except KeyError:
            return False
    passwd = root / "etc/passwd"
    return passwd.is_file() and any(line.split(":", 1)[0] == name for line in passwd.read_text().splitlines())


def apply_user(u: dict[str, Any], root: Path) -> None:
    name = str(u["name"])
    ra = _root_args(root)
    if not _exists(name, root):
        cmd = ["useradd", *ra, "--create-home"]
        if u.get("homedir"):
            cmd += ["--home-dir", str(u["homedir"])]
        if u.get("shell"):
            cmd += ["--shell", str(u["shell"])]
        if u.get("uid") is not None:
            cmd += ["--uid", str(u["uid"])]
        if u.get("system"):
            cmd.append("--system")
        run([*cmd, name])
    groups = u.get("groups")
    if groups:
        glist = groups if isinstance(groups, list) else [g.strip() for g in str(groups).split(",")]
        run(["usermod", *ra, "--append", "--groups", ",".join(glist), name], check=False)
    pw = u.get("passwd") or u.get("hashed_passwd")
    if pw:
        run(["usermod", *ra, "--password", str(pw), name])
    elif u.get("plain_text_passwd"):
        run(["chpasswd", *ra], input=f"{name}:{u['plain_text_passwd']}\n")
    if u.get("lock_passwd") is True and not pw:
        run(["usermod", *ra, "--lock", name], check=False)
    keys = u.get("ssh_authorized_keys") or u.get("ssh-authorized-keys") or []
    if keys:
        install_keys(name, [str(k) for k in keys], root, u.get("homedir"))


def _passwd_entry(name: str, root: Path) -> tuple[int, int, str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == name:
            return int(f[2]), int(f[3]), f[5]
    raise KeyError(name)


def install_keys(name: str, keys: list[str], root: Path, homedir: str | None) -> None:
    uid, gid, home = _passwd_entry(name, root)
    sshdir = root / (homedir or home).lstrip("/") / ".ssh"
    sshdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    auth = sshdir / "authorized_keys"
    existing = auth.read_text().splitlines() if auth.exists() else []
    merged = existing + [k for k in keys if k not in existing]
    auth.write_text("\n".join(merged) + "\n")
    os.chmod(sshdir, 0o700)
    os.chmod(auth, 0o600)
    for p in (sshdir, auth):
        os.chown(p, uid, gid)


def write_file(f: dict[str, Any], root: Path) -> None:
    path = root / str(f["path"]).lstrip("/")
    content: bytes | str = f.get("content", "")
    enc = str(f.get("encoding", "")).lower()
    data = content.encode() if isinstance(content, str) else content
    if enc in ("b64", "base64"):
        data = base64.b64decode(data)
    elif enc in ("gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        data = gzip.decompress(base64.b64decode(data))
    elif enc in ("gz", "gzip"):
        data = gzip.decompress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab" if f.get("append") else "wb") as fh:
        fh.write(data)
    perms = f.get("permissions")
    os.chmod(path, int(str(perms), 8) if perms is not None else 0o644)
    owner = f.get("owner")
    if owner and root == Path("/"):
        user, _, group = str(owner).partition(":")
        run(["chown", f"{user}:{group}" if group else user, str(path)], check=False)
