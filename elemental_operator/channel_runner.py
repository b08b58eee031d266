"""Run a ``custom`` ManagedOSVersionChannel's image as Elemental's syncer pod would, in a bubblewrap sandbox.

Upstream (pkg/syncer/syncer.go, controllers/managedosversionchannel_controller.go) starts a pod
whose init container is the channel image — ``spec.options`` is a system-upgrade-controller
ContainerSpec (``image``, ``command``, ``args``, ``envs``, ``envFrom``) plus ``mountPath`` (default
/data) and ``outputFile`` (default /data/output) on an emptyDir — and reads the JSON list of
ManagedOSVersions the image wrote there. We have no kubelet, so:

- the image is pulled with elemental_common.registry (tag resolved on every sync like upstream's
  ``PullAlways``), and its layers are unpacked once per manifest digest into a cached rootfs;
- the container's argv is the image's Entrypoint/Cmd overridden by command/args (Kubernetes rules),
  its environment the image's Env then ``envs``, its cwd the image's WorkingDir, its user the image's;
- it runs under ``bwrap``: every namespace unshared (no network unless the channel carries
  ``NETWORK_ANNOTATION: "true"``), the rootfs bound read-only, only a fresh directory writable at
  mountPath, capabilities dropped, killed after ``options.timeout`` (default 120 s), every file it
  writes capped at MAX_OUTPUT bytes (RLIMIT_FSIZE via prlimit, so a flood ends the run).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elemental_common import registry
from elemental_common.errors import Die
from elemental_common.run import describe_exit, spawn

log = logging.getLogger(__name__)

# Ours (upstream pods always have the cluster network): a channel whose image must reach the
# network to build its list says so with this annotation set to "true".
NETWORK_ANNOTATION = "elemental.cattle.io/channel-network"
DEFAULT_MOUNT_PATH = "/data"  # upstream syncer.go defaultMountDir
DEFAULT_OUTPUT_FILE = "/data/output"  # upstream syncer.go defaultOutFile
DEFAULT_TIMEOUT = 120.0
PRUNE_AFTER = 7 * 86400.0  # seconds an unpacked channel image stays cached unused
MAX_OUTPUT = 16 << 20  # bytes: per file written in the sandbox, and the output file read back
# containerd's default when the image sets none
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_XFSZ_EXITS = (-25, 128 + 25)  # SIGXFSZ seen directly, or as bwrap reports its child's signal


class InvalidChannel(ValueError):
    """spec.options cannot describe a runnable container (→ Ready=False InvalidConfiguration)."""


class ChannelRunError(Exception):
    """The image could not be fetched or run, or its output is unusable (→ FailedToSync)."""


@dataclass
class CustomOptions:
    image: str
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[tuple[str, str]] = field(default_factory=list)
    mount_path: str = DEFAULT_MOUNT_PATH
    output_file: str = DEFAULT_OUTPUT_FILE
    timeout: float = DEFAULT_TIMEOUT
    network: bool = False


def _strings(options: dict[str, Any], key: str) -> list[str] | None:
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidChannel(f"options.{key} must be a list of strings")
    return list(value)


def _abs_path(options: dict[str, Any], key: str, default: str) -> str:
    value = options.get(key) or default
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidChannel(f"options.{key} must be an absolute path, got {value!r}")
    norm = posixpath.normpath(value)
    if norm == "/" or ".." in norm.split("/"):
        raise InvalidChannel(f"options.{key} {value!r} must name a directory or file below /")
    return norm


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command, args and env values (k8s.io/kubernetes
    third_party/forked/golang/expansion): a defined name is replaced, an undefined reference is
    kept as written, ``$$`` is a literal ``$``. Only the spec's envs count, not the image's."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def parse_options(options: dict[str, Any], timeout: float, network: bool) -> CustomOptions:
    """spec.options of a custom channel (field names as upstream's CustomSyncer: ``envs``, not ``env``)."""
    image = options.get("image")
    if not image or not isinstance(image, str):
        raise InvalidChannel("options.image is required for custom channels")
    if options.get("envFrom"):
        raise InvalidChannel("options.envFrom is not supported here (use options.envs with values)")
    env: list[tuple[str, str]] = []
    for item in options.get("envs") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise InvalidChannel("options.envs entries need a name")
        if item.get("valueFrom"):
            raise InvalidChannel(f"options.envs {item['name']}: valueFrom is not supported here")
        # each value may name the entries before it, as Kubernetes expands them
        env.append((item["name"], expand(str(item.get("value") or ""), dict(env))))
    mount = _abs_path(options, "mountPath", DEFAULT_MOUNT_PATH)
    # upstream's outputFile default is /data/output whatever mountPath is
    output = _abs_path(options, "outputFile", DEFAULT_OUTPUT_FILE)
    if not output.startswith(mount + "/"):
        raise InvalidChannel(f"options.outputFile {output} is not inside options.mountPath {mount}")
    defined = dict(env)
    command, args = _strings(options, "command"), _strings(options, "args")
    return CustomOptions(
        image=image,
        command=None if command is None else [expand(c, defined) for c in command],
        args=None if args is None else [expand(a, defined) for a in args],
        env=env,
        mount_path=mount,
        output_file=output,
        timeout=timeout,
        network=network,
    )


def container_argv(config: dict[str, Any], command: list[str] | None, args: list[str] | None) -> list[str]:
    """Kubernetes' rule: command replaces Entrypoint (and drops Cmd); args replace Cmd."""
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(config.get("Cmd") or [])
    if command:
        return command + (args or [])
    return entrypoint + (args if args else cmd)


def _inside(root: Path, path: str, create_dir: bool = False) -> Path:
    """`path` (absolute, in the container) under `root`, refusing symlinks on the way: a host-side
    mkdir or read must never follow a link an image planted."""
    cur = root
    for part in [p for p in path.split("/") if p]:
        cur = cur / part
        if cur.is_symlink():
            raise ChannelRunError(f"{path} crosses a symlink in the channel image ({cur.relative_to(root)})")
        if create_dir and not cur.exists():
            cur.mkdir(mode=0o755)
    return cur


class ChannelRunner:
    """Pulls, caches (by manifest digest, under ``cache_dir``) and runs channel images."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._lock = threading.Lock()  # one pull/unpack at a time; runs themselves are concurrent
        self._proc = True  # False once a /proc mount failed here (see run)

    @staticmethod
    def _wait(cmd: list[str], log_path: Path, opts: CustomOptions) -> int:
        """Run the sandbox `cmd` (its output to `log_path`), killed after ``opts.timeout``."""
        with open(log_path, "wb") as out:
            proc = spawn(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                hint="install bubblewrap and util-linux (prlimit)",
            )
            try:
                return proc.wait(timeout=opts.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # bwrap: its pid namespace and everything in it go with it
                proc.wait()
                raise ChannelRunError(
                    f"channel image {opts.image} timed out after {opts.timeout:g}s (killed)"
                ) from None

    def fetch(self, opts: CustomOptions) -> bytes:
        """The output file's bytes after one run of the channel image."""
        rootfs, config = self.image(opts.image)
        return self.run(rootfs, config, opts)

    # ---- image ----------------------------------------------------------------------------
    def image(self, ref: str) -> tuple[Path, dict[str, Any]]:
        try:
            digest = registry.resolve(ref)
        except Die as exc:
            raise ChannelRunError(f"channel image {ref} not found: {exc.message}") from None
        entry = self.cache_dir / digest.replace(":", "-")
        with self._lock:
            if not (entry / "config.json").is_file():
                self._prune()
                self._unpack(ref, digest, entry)
            os.utime(entry)  # last use: what _prune goes by
        return entry / "rootfs", json.loads((entry / "config.json").read_text())

    def _prune(self) -> None:
        """Drop images no channel ran for PRUNE_AFTER (a moved tag leaves its old digest behind)
        and pulls a crash left half done."""
        now = time.time()
        for old in self.cache_dir.glob("*"):
            age = now - old.stat().st_mtime
            if (old.name.startswith("sha256-") and age > PRUNE_AFTER) or (
                old.name.startswith(".pull-") and age > 3600
            ):
                shutil.rmtree(old, ignore_errors=True)

    def _unpack(self, ref: str, digest: str, entry: Path) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=self.cache_dir))
        try:
            layout = tmp / "layout"
            try:
                registry.pull(registry.pinned(ref, digest), layout, "channel")
            except Die as exc:
                raise ChannelRunError(f"cannot pull channel image {ref}: {exc.message}") from None
            index = json.loads((layout / "index.json").read_text())
            manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_bytes())
            config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes()).get("config") or {}
            rootfs = tmp / "rootfs"
            rootfs.mkdir()
            for layer in manifest.get("layers") or []:
                try:
                    _extract_layer(_blob(layout, layer["digest"]), rootfs)
                except (tarfile.TarError, OSError, EOFError) as exc:
                    raise ChannelRunError(f"channel image {ref}: layer {layer['digest']}: {exc}") from None
            for d in ("proc", "dev"):  # bwrap's mount points (the rootfs is bound read-only)
                _inside(rootfs, d, create_dir=True)
            shutil.rmtree(layout)
            (tmp / "config.json").write_text(json.dumps(config))
            if entry.exists():
                shutil.rmtree(entry)
            tmp.rename(entry)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # ---- run ------------------------------------------------------------------------------
    def run(self, rootfs: Path, config: dict[str, Any], opts: CustomOptions) -> bytes:
        argv = container_argv(config, opts.command, opts.args)
        if not argv:
            raise ChannelRunError(
                f"channel image {opts.image} has no entrypoint and options.command is empty"
            )
        workdir = config.get("WorkingDir") or "/"
        with self._lock:  # mount points are made in the shared cached rootfs
            _inside(rootfs, opts.mount_path, create_dir=True)
            _inside(rootfs, workdir, create_dir=True)
            if opts.network:
                resolv = _inside(rootfs, "/etc/resolv.conf")
                if not resolv.exists() and resolv.parent.is_dir():
                    resolv.touch()
        uid, gid = _user(rootfs, str(config.get("User") or ""), opts.image)
        env = dict(e.partition("=")[::2] for e in config.get("Env") or [])
        env.setdefault("PATH", DEFAULT_PATH)
        env.update(opts.env)
        run_dir = Path(tempfile.mkdtemp(prefix="channel-run-"))
        try:
            out_dir = run_dir / "mount"
            out_dir.mkdir(mode=0o777)
            os.chmod(out_dir, 0o777)  # the container's user (any uid) writes here, as on an emptyDir

            def sandbox(with_proc: bool) -> list[str]:
                return [
                    "prlimit",
                    f"--fsize={MAX_OUTPUT + 1}",
                    "--",
                    "bwrap",
                    "--unshare-all",
                    *(["--share-net"] if opts.network else []),
                    "--die-with-parent",
                    "--new-session",
                    "--cap-drop",
                    "ALL",
                    "--uid",
                    str(uid),
                    "--gid",
                    str(gid),
                    "--ro-bind",
                    str(rootfs),
                    "/",
                    *(["--proc", "/proc"] if with_proc else []),
                    "--dev",
                    "/dev",
                    "--bind",
                    str(out_dir),
                    opts.mount_path,
                    *(["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"] if opts.network else []),
                    "--chdir",
                    workdir,
                    "--clearenv",
                    *[a for k, v in env.items() for a in ("--setenv", k, v)],
                    "--",
                    *argv,
                ]

            code = self._wait(sandbox(self._proc), run_dir / "log", opts)
            if code != 0 and self._proc and "bwrap: Can't mount proc" in _tail(run_dir / "log"):
                # A new procfs needs a fully visible one in our mount namespace; container runtimes
                # mask parts of theirs (/proc/sys, /proc/kcore…). Binding ours instead would show
                # the operator's processes (their environ) to the image: run without /proc.
                log.warning(
                    "cannot mount /proc in the channel sandbox (masked here): channel images run without it"
                )
                self._proc = False
                code = self._wait(sandbox(False), run_dir / "log", opts)
            tail = _tail(run_dir / "log")
            if code in _XFSZ_EXITS:
                raise ChannelRunError(
                    f"channel image {opts.image} wrote more than {MAX_OUTPUT} bytes (output too big)"
                )
            if code != 0:
                if "bwrap: execvp" in tail or "bwrap: Can't chdir" in tail:
                    raise ChannelRunError(f"channel image {opts.image} is not runnable: {tail}")
                if tail.startswith("bwrap: "):  # bwrap itself failed before the image ran
                    raise ChannelRunError(
                        f"cannot start the sandbox for channel image {opts.image}: {tail} (bubblewrap "
                        "needs user namespaces: in a container, a seccomp profile that allows them; "
                        "docs/channels.md)"
                    )
                raise ChannelRunError(
                    f"channel image {opts.image} failed ({describe_exit(code)})"
                    + (f": {tail}" if tail else "")
                )
            return _read_output(out_dir, opts)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)


def _read_output(out_dir: Path, opts: CustomOptions) -> bytes:
    rel = opts.output_file[len(opts.mount_path) :]
    try:
        path = _inside(out_dir, rel)
    except ChannelRunError:
        path = None
    if path is None or path.is_symlink():  # read on the host: never follow the image's links
        raise ChannelRunError(
            f"{opts.output_file} of channel image {opts.image} is not a regular file (a symlink)"
        )
    if not path.exists():
        raise ChannelRunError(f"channel image {opts.image} wrote no {opts.output_file}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ChannelRunError(
            f"cannot read {opts.output_file} of channel image {opts.image}: {exc}"
        ) from None
    with os.fdopen(fd, "rb") as f:
        if not os.path.isfile(f"/proc/self/fd/{fd}"):
            raise ChannelRunError(f"{opts.output_file} of channel image {opts.image} is not a regular file")
        data = f.read(MAX_OUTPUT + 1)
    if len(data) > MAX_OUTPUT:
        raise ChannelRunError(
            f"channel image {opts.image}: {opts.output_file} is over {MAX_OUTPUT} bytes (output too big)"
        )
    return data


def _tail(log: Path, size: int = 1500) -> str:
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - size))
        return " | ".join(f.read().decode(errors="replace").strip().splitlines()[-8:])


def _user(rootfs: Path, user: str, image: str) -> tuple[int, int]:
    """The image config's ``User`` (``uid[:gid]`` or a name in the image's /etc/passwd); root when empty."""
    name, _, group = user.partition(":")
    if not name:
        return 0, 0
    if name.isdigit():
        uid, gid = int(name), int(group) if group.isdigit() else int(name)
        return uid, gid
    try:
        passwd = _inside(rootfs, "/etc/passwd").read_text(errors="replace")
    except (OSError, ChannelRunError):
        passwd = ""
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) > 3 and fields[0] == name:
            return int(fields[2]), int(group) if group.isdigit() else int(fields[3])
    raise ChannelRunError(f"channel image {image}: user {name!r} is not in its /etc/passwd")


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


# tarfile's extraction filters came with 3.11.4 (Debian 12's python3 is 3.11.2): our own checks
# below hold without them, the ``tar`` filter adds its own where it exists.
_FILTER: dict[str, Any] = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}


def _safe_name(name: str) -> bool:
    parts = name.lstrip("/").split("/")
    return ".." not in parts


def _extract_layer(blob: Path, rootfs: Path) -> None:
    """One layer, whiteouts applied (OCI image-spec layer.md). Every member stays inside `rootfs`
    (no ``..``, no hard link to a host file, never written through a symlink), setuid/setgid bits
    are dropped and device nodes skipped (nothing a channel needs)."""
    root = os.path.realpath(rootfs)
    with tarfile.open(blob, mode="r:*") as tf:
        for member in tf:
            name = member.name.lstrip("/").rstrip("/")
            if not name or name == ".":
                continue
            if not _safe_name(name) or (member.islnk() and not _safe_name(member.linkname)):
                raise OSError(f"{member.name} points outside the image")
            parent, _, base = name.rpartition("/")
            target_dir = os.path.realpath(os.path.join(root, parent))
            if target_dir != root and not target_dir.startswith(root + os.sep):
                raise OSError(f"{member.name} points outside the image")
            if base == ".wh..wh..opq":
                for child in Path(target_dir).iterdir() if os.path.isdir(target_dir) else []:
                    _remove(child)
                continue
            if base.startswith(".wh."):
                _remove(Path(target_dir) / base[4:])
                continue
            if member.isdev():
                continue
            if member.islnk():
                source = os.path.realpath(os.path.join(root, member.linkname.lstrip("/")))
                if not source.startswith(root + os.sep):
                    raise OSError(f"{member.name} links outside the image")
            existing = Path(root, name)
            if existing.is_symlink() or (existing.exists() and not (existing.is_dir() and member.isdir())):
                _remove(existing)  # a later layer replaces the path (never writes through a link)
            member.name = name
            member.mode &= ~0o6000
            tf.extract(member, root, numeric_owner=True, **_FILTER)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
