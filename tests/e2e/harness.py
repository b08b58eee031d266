"""End-to-end harness: a real ``elemental-operator serve`` process on the host, its admin API, seed
ISOs packed around one MachineRegistration's file, and helpers to watch inventories.

The guests reach the operator at 10.0.2.2 (QEMU user networking); the host talks to it on
127.0.0.1 with the operator's own CA (the server certificate covers both).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from children import die_with_parent
from installer_fixtures import blob_path

REPO = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("OUT") or REPO / "out").resolve()
RESULTS = Path(os.environ.get("RESULTS") or REPO / "results").resolve()
NAMESPACE = "fleet-default"
GUEST_HOST = "10.0.2.2"


class E2EError(Exception):
    """The system did not reach the expected state in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 60) -> str:
    if not path.is_file():
        return f"(no {path})"
    text = path.read_text(errors="replace").splitlines()
    return f"--- {path} (last {min(lines, len(text))} of {len(text)} lines)\n" + "\n".join(text[-lines:])


class Operator:
    """``elemental-operator serve`` in its own process, SQLite in a fresh state directory."""

    def __init__(self, workdir: Path, *, extra_args: tuple[str, ...] = ()) -> None:
        self.dir = workdir
        self.state = workdir / "operator-state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "operator.log"
        self.public_url = f"https://{GUEST_HOST}:{self.port}"
        self.local_url = f"https://127.0.0.1:{self.port}"
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self._ssl: ssl.SSLContext | None = None
        self.token = ""
        self.registry_host = ""  # set by tests that serve OS images (Registry.host)

    def start(self, timeout: float = 60) -> Operator:
        log = self.log_path.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", OUT=str(OUT))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "elemental_operator.cli",
                "serve",
                "--state-dir",
                str(self.state),
                "--listen",
                f"0.0.0.0:{self.port}",
                "--public-url",
                self.public_url,
                "--san",
                "127.0.0.1",
                "--access-log",
                "--lease-ttl",
                "5",
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            # own session: a Ctrl-C reaches pytest only, which stops us in order; killed with it
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise E2EError(f"operator exited {self.proc.returncode}\n{tail(self.log_path)}")
            if (self.state / "ca.crt").is_file() and (self.state / "admin-token").is_file():
                try:
                    self._ssl = ssl.create_default_context(cafile=str(self.state / "ca.crt"))
                    self.token = (self.state / "admin-token").read_text().strip()
                    self.request("GET", "/healthz", admin=False)
                    return self
                except (OSError, E2EError):
                    pass
            if time.monotonic() > deadline:
                raise E2EError(f"operator not up after {timeout}s\n{tail(self.log_path)}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    # ------------------------------------------------------------------ HTTP

    def request(self, method: str, path: str, body: Any = None, *, admin: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.local_url + path, data=data, method=method)
        if admin:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._ssl) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise E2EError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None
        ctype = resp.headers.get("Content-Type", "")
        if "json" in ctype:
            return json.loads(raw or b"null")
        return raw.decode()

    def _path(self, plural: str, name: str = "", namespace: str = NAMESPACE) -> str:
        p = f"/elemental/admin/v1/namespaces/{namespace}/{plural}"
        return p + (f"/{name}" if name else "")

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        from elemental_operator.api import resolve_kind

        info = resolve_kind(obj["kind"])
        ns = obj.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
        result: dict[str, Any] = self.request("POST", self._path(info.plural, namespace=ns), obj)
        return result

    def get(self, plural: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", self._path(plural, name, namespace))
        return result

    def try_get(self, plural: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        try:
            return self.get(plural, name, namespace)
        except E2EError as exc:
            if ": 404 " in str(exc):
                return None
            raise

    def list_all(self, plural: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.request("GET", self._path(plural, namespace=namespace))["items"]
        return items

    def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        from elemental_operator.api import resolve_kind

        info = resolve_kind(obj["kind"])
        meta = obj["metadata"]
        result: dict[str, Any] = self.request(
            "PUT", self._path(info.plural, meta["name"], meta["namespace"]), obj
        )
        return result

    def delete(self, plural: str, name: str, namespace: str = NAMESPACE) -> None:
        self.request("DELETE", self._path(plural, name, namespace))

    def wait(
        self,
        what: str,
        fn: Callable[[], Any],
        timeout: float,
        interval: float = 2.0,
        alive: Callable[[], None] | None = None,
    ) -> Any:
        """Poll fn() until it returns something truthy; alive() may raise (e.g. the VM died)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = fn()
            except E2EError as exc:
                last = exc
            else:
                if last:
                    return last
            if self.proc is not None and self.proc.poll() is not None:
                raise E2EError(f"operator exited {self.proc.returncode} while waiting for {what}")
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                raise E2EError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
            time.sleep(interval)

    # ------------------------------------------------------------------ registrations

    def registration(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Create a MachineRegistration and wait until it is Ready (it has a URL then)."""
        self.create(
            {
                "apiVersion": "elemental.cattle.io/v1beta1",
                "kind": "MachineRegistration",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": spec,
            }
        )

        def ready() -> dict[str, Any] | None:
            reg = self.get("machineregistrations", name)
            return reg if condition(reg, "Ready") == "True" and reg["status"].get("registrationURL") else None

        result: dict[str, Any] = self.wait(f"MachineRegistration {name} Ready", ready, 60, 0.5)
        return result

    def registration_file(self, reg: dict[str, Any]) -> bytes:
        """GET the registration URL (as a user would, to put it in a seed image)."""
        url: str = reg["status"]["registrationURL"]
        path = "/" + url.split("://", 1)[1].split("/", 1)[1]
        text = self.request("GET", path, admin=False)
        return text.encode() if isinstance(text, str) else yaml.safe_dump(text).encode()

    def inventories(self) -> list[dict[str, Any]]:
        return self.list_all("machineinventories")


def condition(obj: dict[str, Any] | None, ctype: str, field_: str = "status") -> str:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return str(c.get(field_, ""))
    return ""


def pack_seed(registration: bytes, dest: Path, *, work: Path | None = None) -> Path:
    """A seed ISO embedding `registration` (iso.pack's make_iso on the built seed + OS)."""
    from elemental_common.pe import Uki
    from iso import pack

    uki = OUT / "seed.efi"
    for f in (uki, OUT / "os" / "index.json"):
        if not f.is_file():
            raise E2EError(f"{f} has not been built (make iso)")
    inputs = pack.Inputs(
        out=dest.parent,
        uki=uki,
        vmlinuz=OUT / "seed.vmlinuz",
        initrd=OUT / "seed.initrd",
        os_layout=OUT / "os",
        registration=registration,
        registration_source="e2e",
        seed_cmdline=Uki(uki).cmdline,
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    if work is None:
        # The ESP image (the 120 MB UKI on FAT) is shared between runs; the rest of the work
        # directory (registration.yaml) is per ISO, so concurrent packs do not mix files.
        shared = RESULTS / "e2e-work" / "iso"
        shared.mkdir(parents=True, exist_ok=True)
        pack.make_esp(uki, shared / "esp.img")
        work = dest.with_name(dest.name + ".work")
        fresh_dir(work)
        for name in ("esp.img", "esp.stamp"):
            os.link(shared / name, work / name)
    pack.make_iso(inputs, work, dest)
    return dest


def os_tags(layout: Path = OUT / "os") -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    return [
        t
        for m in index.get("manifests", [])
        if (t := (m.get("annotations") or {}).get("org.opencontainers.image.ref.name"))
    ]


@dataclass
class InventoryRecorder:
    """Polls the inventories in a thread and records every distinct InstallProgress message and
    plan state seen (progress moves faster than a test's own polling between console waits)."""

    op: Operator
    interval: float = 1.0
    progress: list[str] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="inventory-recorder")

    def __enter__(self) -> InventoryRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        seen: set[str] = set()
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                for inv in self.op.inventories():
                    name = inv["metadata"]["name"]
                    msg = condition(inv, "InstallProgress", "message")
                    if msg and f"{name}:{msg}" not in seen:
                        seen.add(f"{name}:{msg}")
                        self.progress.append(msg)
                        self.events.append((time.monotonic(), f"{name} InstallProgress {msg}"))
                    state = ((inv.get("status") or {}).get("plan") or {}).get("state", "")
                    key = f"{name}:plan:{state}:{condition(inv, 'Ready')}"
                    if key not in seen:
                        seen.add(key)
                        self.events.append(
                            (time.monotonic(), f"{name} plan={state} Ready={condition(inv, 'Ready')}")
                        )
            self._stop.wait(self.interval)


@dataclass
class Timings:
    """Named wall-clock phases of one scenario, printed at the end and kept in results/."""

    path: Path
    marks: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def mark(self, name: str) -> float:
        now = time.monotonic()
        since = now - (self._last or self.start)
        self.marks[name] = round(since, 1)
        self._last = now
        self.path.write_text(json.dumps({**self.marks, "total": round(now - self.start, 1)}, indent=1))
        print(f"[e2e] {name}: {since:.1f}s (total {now - self.start:.1f}s)", flush=True)
        return since


@contextlib.contextmanager
def diagnostics(results: Path, extra: Callable[[], str] | None = None) -> Iterator[None]:
    """On failure print the tails of every log under results/ (serial, operator, swtpm, qemu)."""
    try:
        yield
    except BaseException:
        parts = []
        for pattern in ("operator.log", "*/serial.log", "*/swtpm.log", "*/qemu.stderr"):
            for p in sorted(results.glob(pattern)):
                parts.append(tail(p, 80 if p.name == "serial.log" else 40))
        if extra is not None:
            with contextlib.suppress(Exception):
                parts.append(extra())
        print("\n\n".join(parts), file=sys.stderr)
        raise


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------------- OS versions and a registry


class Registry:
    """A read-only OCI distribution endpoint over plain HTTP serving OCI layouts as repositories
    (``/v2/<repo>/manifests/<tag|digest>``, ``/v2/<repo>/blobs/<digest>``), for the guests at
    10.0.2.2:<port>; requests are logged to ``log``."""

    def __init__(self, repos: dict[str, Path], log: Path) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.repos = repos
        self.port = free_port()
        self.log = log
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                with registry.log.open("a") as f:
                    f.write(f"{time.strftime('%H:%M:%S')} {self.address_string()} {fmt % args}\n")

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/v2", "/v2/"):
                    return self._send(200, b"{}", "application/json", body)
                if not path.startswith("/v2/"):
                    return self._send(404, b"", "text/plain", body)
                rest = path[4:]
                for kind in ("/manifests/", "/blobs/"):
                    repo, sep, ref = rest.rpartition(kind)
                    if sep and repo in registry.repos:
                        return self._object(registry.repos[repo], kind, ref, body)
                self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}', "application/json", body)

            def _object(self, layout: Path, kind: str, ref: str, body: bool) -> None:
                media = "application/octet-stream"
                if kind == "/manifests/":
                    index = json.loads((layout / "index.json").read_text())
                    for m in index["manifests"]:
                        tag = (m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
                        if ref in (tag, m["digest"]):
                            ref, media = m["digest"], m["mediaType"]
                            break
                    else:
                        return self._send(
                            404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', "application/json", body
                        )
                blob = blob_path(layout, ref)
                if not blob.is_file():
                    return self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', "application/json", body)
                self.send_response(200)
                self.send_header("Content-Type", media)
                self.send_header("Content-Length", str(blob.stat().st_size))
                self.send_header("Docker-Content-Digest", ref)
                self.end_headers()
                if body:
                    with blob.open("rb") as f:
                        shutil.copyfileobj(f, self.wfile, 1 << 20)

            def _send(self, code: int, data: bytes, ctype: str, body: bool) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("0.0.0.0", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="registry")

    @property
    def host(self) -> str:
        return f"{GUEST_HOST}:{self.port}"

    def __enter__(self) -> Registry:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
