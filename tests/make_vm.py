"""``make vm``: boot the seed ISO in QEMU + swtpm against the dev operator and watch one machine
register, install and turn Ready; later calls boot its installed disk (README, quick tour).

A developer's tool built on the test harness (``tests/vm.py``: OVMF vars, a swtpm per boot, the KVM
probe with TCG as the fallback), so it lives beside it and never in the product packages.

* The operator: the one answering on ``$ELEMENTAL_OPERATOR_LISTEN``'s port (default 8443) with the
  admin token of ``$ELEMENTAL_STATE``; if none answers, ``elemental-operator serve`` is started on that
  state and stopped again when this command ends.
* The seed: ``$OUT/seed.iso``, re-packed (``python -m iso.pack``, what ``make repack`` runs) when it
  does not embed the operator's default registration (``$ELEMENTAL_STATE/registration.yaml``).
* The machine: ``$ELEMENTAL_STATE/vms/<name>/`` keeps its disk, OVMF vars, TPM state, SMBIOS UUID and
  logs. A machine that has not finished its install boots the seed on an empty disk; an installed one
  boots its disk. ``--fresh`` starts the machine over (new disk, TPM, UUID: a new inventory).
* Output: the serial console (raw on a terminal, cleaned text in a pipe) and ``‣ [name]`` lines as
  the MachineInventory appears, its InstallProgress moves and it turns Ready.
* The end: without a terminal (CI, a pipe) the machine powers off once Ready and the command exits 0;
  on a terminal it keeps running (keys go to its console) until Ctrl-C. Ctrl-C stops QEMU, swtpm and
  an operator this command started (an operator that was already running is left alone); a machine
  running its installed OS gets an ACPI power-off first (Ctrl-C again: at once).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import termios
import time
import tty
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from children import die_with_parent
from vm import OVMF_CODE, QEMU, Machine, VMError, accel

from elemental_common import consts
from elemental_common.errors import Die, die, entry_point
from elemental_common.run import run, spawn

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "fleet-default"
SEED_MEMORY_MB = 3072  # the seed unpacks the OS image and builds its slot in RAM (tmpfs)
OS_MEMORY_MB = 2048
DISK_SIZE = "16G"  # qcow2, sparse; the default registration installs to /dev/vda (a virtio disk)
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
# Console lines (the seed's and the OS's services log to journal+console).
INSTALLED = re.compile(r"install progress: installed 100%")
# elemental-register.timer on the installed OS, 5 s after boot: the TPM authenticates again and
# the inventory is updated, so the OS on the disk reached the operator with the machine's TPM.
REREGISTERED = "re-registration: updating the existing inventory"
POLL_SECONDS = 2.0
POWEROFF_SECONDS = 90.0


# ------------------------------------------------------------------------------ output


# CSI (colours, cursor), OSC (titles), then the other escapes (ESC c, ESC ( B, ESC 7 …).
_ESCAPES = re.compile(rb"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-~])")
_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


def clean_console(data: bytes) -> bytes:
    """Console bytes for a pipe or a log: no terminal escapes, carriage returns or control bytes."""
    return _CONTROL.sub(b"", _ESCAPES.sub(b"", data))


class Output:
    """The terminal (or pipe): the console stream with our own lines put on lines of their own."""

    def __init__(self, name: str, stream: IO[bytes], *, raw: bool, console: bool) -> None:
        self.name, self.stream, self.raw, self.show_console = name, stream, raw, console
        self.at_line_start = True

    def console(self, data: bytes) -> None:
        if not self.show_console or not data:
            return
        data = data if self.raw else clean_console(data)
        if data:
            self.stream.write(data)
            self.stream.flush()
            self.at_line_start = data.endswith(b"\n")

    def note(self, message: str) -> None:
        prefix = b"" if self.at_line_start else (b"\r\n" if self.raw else b"\n")
        line = f"‣ [{self.name}] {message}"
        if self.raw:
            line = f"\x1b[1m{line}\x1b[0m"
        end = b"\r\n" if self.raw else b"\n"
        self.stream.write(prefix + line.encode() + end)
        self.stream.flush()
        self.at_line_start = True


# ------------------------------------------------------------------------------ machine state


@dataclass
class MachineState:
    """What a machine remembers between calls (``machine.json`` in its directory)."""

    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    installed: bool = False
    inventory: str = ""

    @classmethod
    def load(cls, path: Path) -> MachineState:
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(str(data["uuid"]), bool(data.get("installed")), str(data.get("inventory") or ""))
        except (ValueError, KeyError, TypeError):
            die(f"{path} is not a machine state file", "start the machine over: make vm FRESH=1")

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(path)

    @property
    def expected_inventory(self) -> str:
        # The default registration's machineName, m-${System Information/UUID}, lower-cased as the
        # operator sanitizes names.
        return f"m-{self.uuid}".lower()


def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


@dataclass
class Progress:
    """The inventory as last seen; ``update`` returns a line for each change worth showing."""

    seen: bool = False
    install: str = ""
    plan: str = ""
    ready: str = ""

    def update(self, inv: dict[str, Any] | None) -> list[str]:
        if inv is None:
            return []
        lines: list[str] = []
        meta = inv.get("metadata") or {}
        if not self.seen:
            self.seen = True
            labels = ", ".join(f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items()))
            lines.append(
                f"MachineInventory {meta.get('namespace')}/{meta.get('name')}"
                + (f" ({labels})" if labels else "")
            )
        install = _condition(inv, "InstallProgress").get("message") or ""
        if install and install != self.install:
            lines.append(f"InstallProgress: {install}")
        self.install = install or self.install
        plan = str(((inv.get("status") or {}).get("plan") or {}).get("state") or "")
        if plan and plan != self.plan:
            lines.append(f"plan: {plan}")
        self.plan = plan or self.plan
        ready = _condition(inv, "Ready")
        text = f"{ready.get('status', '')} {ready.get('reason', '')}".strip()
        if ready and text != self.ready:
            message = ready.get("message") or ""
            lines.append(
                f"Ready={text}" + (f": {message}" if message and ready.get("status") != "True" else "")
            )
        self.ready = text if ready else self.ready
        return lines

    @property
    def ready_and_applied(self) -> bool:
        return self.ready.startswith("True") and self.plan == "Applied"


def find_inventory(items: list[dict[str, Any]], state: MachineState) -> dict[str, Any] | None:
    """This machine's inventory: the name it had, the default registration's name for its UUID, or
    (a templated name that changed, a name conflict) the one labelled with its UUID."""
    names = {n for n in (state.inventory, state.expected_inventory) if n}
    for inv in items:
        meta = inv.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        if meta.get("name") in names:
            return inv
        if str((meta.get("labels") or {}).get("machineUUID", "")).lower() == state.uuid.lower():
            return inv
    return None


class ConsoleTail:
    """New bytes of the machine's serial log since the boot began, and the markers seen in them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self._window = ""
        self.installed = False
        self.reregistered = False

    def read(self) -> bytes:
        if not self.path.exists():
            return b""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read(1 << 20)
        self.offset += len(data)
        # The markers may be split between two reads: search the end of the last read too.
        text = self._window + data.decode(errors="replace")
        self.installed = self.installed or bool(INSTALLED.search(text))
        self.reregistered = self.reregistered or REREGISTERED in text
        self._window = text[-256:]
        return data


# ------------------------------------------------------------------------------ the operator


def listen_port(listen: str) -> int:
    """The port of ``--listen`` (``0.0.0.0:8443``, ``[::]:8443``, ``8443``)."""
    port = listen.rsplit(":", 1)[-1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        die(
            f"cannot tell the operator's port from listen address {listen!r}",
            "ELEMENTAL_OPERATOR_LISTEN=0.0.0.0:8443",
        )
    return int(port)


class DevOperator:
    """The dev operator on this host: found running, or started (and then stopped) by us."""

    def __init__(self, state: Path, port: int, log_path: Path) -> None:
        self.state, self.port, self.log_path = state, port, log_path
        self.url = f"https://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def answers(self) -> bool:
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.state / "ca.crt"))

    def start(self, timeout: float = 90) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n===== make vm: elemental-operator serve, {time.ctime()} =====\n".encode())
            log.flush()
            self.proc = spawn(
                [sys.executable, "-m", "elemental_operator.cli", "serve", "--state-dir", str(self.state)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={"PYTHONUNBUFFERED": "1"},
                # its own session: a Ctrl-C reaches us only, and we stop it in order; it dies with us
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                die(f"the operator exited ({self.proc.returncode}) at start", f"see {self.log_path}")
            if (self.state / "ca.crt").is_file() and (self.state / "admin-token").is_file():
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"{self.url}/healthz", timeout=5, context=self._ssl()):
                        return
            if time.monotonic() > deadline:
                die(
                    f"the operator did not answer on {self.url} within {timeout:.0f}s", f"see {self.log_path}"
                )
            time.sleep(0.3)

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            die(f"the operator exited ({self.proc.returncode})", f"see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def inventories(self) -> list[dict[str, Any]]:
        """MachineInventories of the default namespace through the admin API (the state's token)."""
        from elemental_operator.ctl.client import Client, CtlError

        token_file = self.state / "admin-token"
        if not token_file.is_file():
            die(
                f"an operator answers on port {self.port} but {token_file} does not exist",
                "set ELEMENTAL_STATE to that operator's state directory, or stop it",
            )
        client = Client(self.url, token_file.read_text().strip(), str(self.state / "ca.crt"), False)
        try:
            items: list[dict[str, Any]] = client.call("GET", f"/namespaces/{NAMESPACE}/machineinventories")[
                "items"
            ]
        except CtlError as exc:
            if exc.status in (401, 403):
                die(
                    f"the operator on port {self.port} refuses the admin token of {self.state}",
                    "set ELEMENTAL_STATE to that operator's state directory, or stop it",
                )
            raise
        return items


def wait_for_registration(state: Path, op: DevOperator, timeout: float = 60) -> Path:
    """The operator writes the default registration's file once that registration is Ready."""
    path = state / "registration.yaml"
    deadline = time.monotonic() + timeout
    while not path.is_file():
        op.alive()
        if time.monotonic() > deadline:
            die(
                f"the operator wrote no {path} within {timeout:.0f}s",
                "is the MachineRegistration fleet-default/default gone? (elementalctl get mr)",
            )
        time.sleep(0.5)
    return path


def embedded_registration(iso: Path, scratch: Path) -> bytes | None:
    """/registration.yaml of a seed ISO (None if the ISO or the file is missing)."""
    if not iso.is_file():
        return None
    with _scratch(scratch) as tmp:
        dest = tmp / "registration.yaml"
        run(
            ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/registration.yaml", str(dest)],
            check=False,
        )
        return dest.read_bytes() if dest.is_file() else None


@contextlib.contextmanager
def _scratch(parent: Path) -> Iterator[Path]:
    d = parent / f".make-vm-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def ensure_seed(out: Path, registration: Path, vms: Path, note: Any) -> Path:
    """$OUT/seed.iso with the operator's registration embedded (re-packed if not)."""
    iso = out / "seed.iso"
    with _locked(vms / ".seed.lock"):
        if embedded_registration(iso, vms) == registration.read_bytes():
            return iso
        note(f"packing {iso} with {registration} (make repack)")
        run(
            [sys.executable, "-m", "iso.pack", "--out", str(out), "--registration", str(registration)],
            cwd=REPO,
            stream=True,
            hint="see the lines above",
        )
    return iso


@contextlib.contextmanager
def _locked(path: Path, *, what: str = "") -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if what else 0))
        except BlockingIOError:
            die(f"{what} is already running", "another `make vm` uses it; pick another NAME=")
        yield


# ------------------------------------------------------------------------------ keyboard


class Keyboard:
    """On a terminal, keys go to the guest's console (cbreak mode: Ctrl-C still interrupts us)."""

    def __init__(self, enabled: bool) -> None:
        self.fd = sys.stdin.fileno() if enabled else -1
        self._saved: list[Any] | None = None

    def __enter__(self) -> Keyboard:
        if self.fd >= 0:
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def wait(self, seconds: float) -> bytes:
        """Wait up to `seconds` (the loop's tick); the keys typed meanwhile."""
        if self.fd < 0:
            time.sleep(seconds)
            return b""
        readable, _, _ = select.select([self.fd], [], [], seconds)
        return os.read(self.fd, 1024) if readable else b""


# ------------------------------------------------------------------------------ the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make vm", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="m1", help="the machine (its directory under $ELEMENTAL_STATE/vms/)")
    p.add_argument("--fresh", action="store_true", help="start the machine over (FRESH=1)")
    p.add_argument(
        "--stay",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the machine running once Ready, until Ctrl-C (default: on a terminal)",
    )
    p.add_argument("--console", action=argparse.BooleanOptionalAction, default=True, help="show the console")
    p.add_argument("--timeout", type=float, default=2400, help="seconds to reach Ready (TCG: ~6 min)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "out"))
    p.add_argument(
        "--state", type=Path, default=consts.state_dir(), help="the operator's state ($ELEMENTAL_STATE)"
    )
    return p.parse_args(argv)


def preflight(out: Path) -> None:
    missing = [t for t in (QEMU, "qemu-img", "swtpm", "xorriso") if shutil.which(t) is None]
    if missing or not OVMF_CODE.is_file():
        die(f"missing: {', '.join(missing) or OVMF_CODE}", "install the host packages: make setup")
    for f in (out / "seed.efi", out / "os" / "index.json"):
        if not f.is_file():
            die(f"{f} has not been built", "build the images first: make iso")


@dataclass
class Run:
    args: argparse.Namespace
    out: Output
    op: DevOperator
    state: MachineState
    dir: Path
    stay: bool
    keyboard: Keyboard
    machine: Machine | None = None
    tail: ConsoleTail | None = None
    started_operator: bool = False
    ready: bool = False
    booted_os: bool = False
    unreachable: bool = False

    def note(self, message: str) -> None:
        self.out.note(message)

    @property
    def state_file(self) -> Path:
        return self.dir / "machine.json"

    def boot(self, iso: Path | None) -> None:
        kind = accel()
        seed = iso is not None
        m = Machine(
            self.args.name,
            results_dir=self.dir.parent,
            memory_mb=SEED_MEMORY_MB if seed else OS_MEMORY_MB,
            extra_args=["-uuid", self.state.uuid, "-smbios", f"type=1,serial={self.args.name}"],
        )
        self.machine = m
        m.add_disk(size=DISK_SIZE)
        if iso is not None:
            m.add_cdrom(iso)
        self.tail = ConsoleTail(m.serial_log)
        m.boot()
        assert m.qemu is not None and m.swtpm is not None
        what = f"the seed {iso} on an empty disk" if seed else "its installed disk"
        self.note(f"booting {what} (QEMU pid {m.qemu.pid}, swtpm pid {m.swtpm.pid}, {kind.upper()})")
        if kind == "tcg":
            took = "a seed boot and install take 5-10 minutes" if seed else "the OS boots in 1-3 minutes"
            self.note(f"no working KVM here: TCG emulation, {took}")

    def watch(self) -> None:
        """Console and inventory until Ready (then on, with --stay, until the machine stops)."""
        m, tail = self.machine, self.tail
        assert m is not None and m.qemu is not None and tail is not None
        progress = Progress()
        deadline = time.monotonic() + self.args.timeout
        next_poll = 0.0
        while True:
            self.out.console(tail.read())
            if m.qemu.poll() is not None:
                self.out.console(tail.read())
                if self.ready:
                    self.note("the machine powered off")
                    return
                die(
                    f"QEMU exited ({m.qemu.returncode}) before the machine was Ready",
                    f"see {m.serial_log} and {m.dir / 'qemu.stderr'}",
                )
            m.poll_stall()
            self.op.alive()
            if tail.installed and not self.state.installed:
                self.state.installed = True
                self.state.save(self.state_file)
                self.note("installed: the next `make vm` boots this disk")
            if tail.reregistered and not self.booted_os:
                self.booted_os = True
                self.note("the installed OS re-registered with the machine's TPM")
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_SECONDS
                inv = self._poll_inventory()
                if inv is not None and inv["metadata"]["name"] != self.state.inventory:
                    self.state.inventory = inv["metadata"]["name"]
                    self.state.save(self.state_file)
                for line in progress.update(inv):
                    self.note(line)
                if not self.ready and self.state.installed and self.booted_os and progress.ready_and_applied:
                    self.ready = True
                    self.note(f"Ready: MachineInventory {NAMESPACE}/{self.state.inventory}, plan applied")
                    if not self.stay:
                        return
                    print_summary(self)
                    self.note("the machine keeps running (type into its console); Ctrl-C stops it")
            if not self.ready and now > deadline:
                die(
                    f"the machine was not Ready within {self.args.timeout:.0f}s",
                    f"see {m.serial_log} (console) and the operator's log",
                )
            keys = self.keyboard.wait(0.5)
            if keys:
                with contextlib.suppress(VMError, OSError):
                    m.send(keys.decode(errors="replace"))

    def _poll_inventory(self) -> dict[str, Any] | None:
        """This machine's inventory; an operator that does not answer for a while (restarted by its
        owner) is reported once and asked again, until the deadline."""
        from elemental_operator.ctl.client import CtlError

        try:
            items = self.op.inventories()
        except CtlError as exc:
            if exc.status is not None:
                raise
            if not self.unreachable:
                self.note(f"the operator does not answer ({exc.message}); asking again")
            self.unreachable = True
            return None
        if self.unreachable:
            self.note("the operator answers again")
        self.unreachable = False
        return find_inventory(items, self.state)

    def stop_machine(self) -> None:
        m = self.machine
        if m is None or m.qemu is None or m.qemu.poll() is not None:
            if m is not None:
                m.close()
            return
        try:
            # The installed OS gets an ACPI power-off (its file systems); a seed is stopped at once.
            if self.state.installed:
                self.note(f"powering off {self.args.name} (ACPI; Ctrl-C again to stop it at once)")
                try:
                    m.poweroff(timeout=POWEROFF_SECONDS)
                except VMError:
                    self.note(f"no power-off within {POWEROFF_SECONDS:.0f}s: stopping QEMU")
        except KeyboardInterrupt:
            self.note("stopping QEMU at once")
        finally:
            m.close()


def print_summary(r: Run) -> None:
    """Where the logs are, the dashboard, and what the next call does."""
    state, port = r.args.state, r.op.port
    ctl = ".venv/bin/elementalctl" + ("" if port == consts.DEFAULT_PORT else f" --server {r.op.url}")
    again = "boots the installed disk" if r.state.installed else "boots the seed again"
    lines = [
        f"logs:      {r.dir}/serial.log (console), qemu.stderr, swtpm.log"
        + (f"; operator: {r.op.log_path}" if r.started_operator else ""),
        f"dashboard: https://localhost:{port}/dashboard/ (CA {state}/ca.crt)",
        f"           admin token: {state}/admin-token",
        f"inventory: {ctl} get machineinventories -o wide",
        f"again:     make vm ({again}) · make vm FRESH=1 (starts over) · make vm NAME=m2 (another one)",
    ]
    if r.started_operator and not (r.stay and r.ready):
        lines.append("operator:  stopped with make vm; `.venv/bin/elemental-operator serve &` keeps one up")
    for line in lines:
        r.note(line)


def _terminate(signum: int, frame: object) -> None:
    # A CI timeout or `kill` sends SIGTERM: unwind as for Ctrl-C, so everything stops in order.
    raise KeyboardInterrupt(f"signal {signum}")


@entry_point("make vm")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not NAME_RE.fullmatch(args.name):
        die(f"machine name {args.name!r} is not valid", "lower-case letters, digits and '-', at most 31")
    args.out = args.out.resolve()
    args.state = args.state.resolve()
    preflight(args.out)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    stay = interactive if args.stay is None else args.stay
    out = Output(args.name, sys.stdout.buffer, raw=sys.stdout.isatty(), console=args.console)
    vms = args.state / "vms"
    m_dir = vms / args.name
    port = listen_port(os.environ.get("ELEMENTAL_OPERATOR_LISTEN") or consts.DEFAULT_LISTEN)
    op = DevOperator(args.state, port, vms / "operator.log")
    signal.signal(signal.SIGTERM, _terminate)
    # A non-interactive shell starts `cmd &` with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: Ctrl-C (or the test's SIGINT) would leave QEMU running.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with _locked(vms / f"{args.name}.lock", what=f"machine {args.name}"):
        if args.fresh and m_dir.exists():
            shutil.rmtree(m_dir)
            out.note(f"starting over: removed {m_dir}")
        m_dir.mkdir(parents=True, exist_ok=True)
        state = MachineState.load(m_dir / "machine.json")
        state.save(m_dir / "machine.json")
        r = Run(args, out, op, state, m_dir, stay, Keyboard(interactive))
        error: Die | None = None
        try:
            if op.answers():
                op.inventories()  # it is this state's operator: its admin token works
                out.note(f"operator: the one running at {op.url} (left running)")
            else:
                out.note(f"operator: starting elemental-operator serve on {args.state} (log {op.log_path})")
                r.started_operator = True
                op.start()
            iso: Path | None = None
            if not state.installed:
                registration = wait_for_registration(args.state, op)
                iso = ensure_seed(args.out, registration, vms, out.note)
                disk = m_dir / "disk0.qcow2"
                if disk.exists():
                    out.note("the last install did not finish: booting the seed on an empty disk again")
                    disk.unlink()
            r.boot(iso)
            with r.keyboard:
                r.watch()
        except KeyboardInterrupt:
            out.note("interrupted")
        except Die as exc:
            error = exc
        finally:
            try:
                r.stop_machine()
            finally:
                if r.started_operator:
                    out.note("stopping the operator this command started")
                    op.stop()
        print_summary(r)
        if error is not None:
            raise error
        return 0 if r.ready else 130


if __name__ == "__main__":
    sys.exit(main())
