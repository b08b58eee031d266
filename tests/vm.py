"""Reusable QEMU harness for VM tests: OVMF, a fresh swtpm per boot, disks, media, PXE, serial console.

Typical use::

    with Machine("seed", results_dir=tmp_path) as m:
        m.add_cdrom(Path("out/seed.iso"))
        m.boot()
        m.wait_for_shell(timeout=600)
        print(m.run("ls -l /dev/tpmrm0"))
        m.poweroff()

* Firmware: ``OVMF_CODE_4M.fd`` (read-only) plus a per-machine copy of ``OVMF_VARS_4M.fd``, so
  boot entries survive reboots of one machine and never leak between machines.
* TPM: one state directory per machine; every ``boot()`` starts a fresh ``swtpm socket`` on it
  (a socket-mode swtpm serves one QEMU connection and exits when QEMU goes away).
* Acceleration: ``accel()`` probes KVM once per process with a short real firmware boot and falls
  back to TCG (``-accel tcg -cpu max``); ``ELEMENTAL_VM_ACCEL=kvm|tcg`` skips the probe.
  Under TCG, kernel to /init takes ~40 s and a full boot 1-3 min: size timeouts for that.
* Console: the guest's ``ttyS0`` is a QEMU unix socket driven with pexpect: ``expect()``,
  ``run()`` (root shell), ``poweroff()``. Everything the guest prints goes to
  ``<results>/<name>/serial.log``; QEMU's stderr and swtpm's log go next to it.
* Cleanup: ``close()`` (also on ``with`` exit, on garbage collection and at interpreter exit) ends
  QEMU through QMP, then by signal, and stops swtpm; nothing survives a failing test. QEMU and
  swtpm run in their own session (a terminal's Ctrl-C reaches only pytest, which then stops them
  in order) and get SIGKILL from the kernel when the test process dies without cleaning up
  (``kill -9``, ``kill -- -<pgid>``): see tests/children.py. Boot machines from the main thread.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pexpect
import pexpect.fdpexpect
from children import die_with_parent

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Debian's Secure Boot build (SMM: the variable store is only writable from SMM, so a guest cannot
# switch Secure Boot off behind the firmware's back); no keys in its template vars.
OVMF_CODE_SECBOOT = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
# Owner GUID of our enrolled certificates (any fixed GUID; it names who added the entry).
SB_OWNER = "5ec0b007-e1e3-4e7a-8d5c-000000000014"
QEMU = "qemu-system-x86_64"
# The guest kernel's RCU stall report (see Machine._recover_stall).
RCU_STALL = re.compile(rb"rcu: INFO: rcu_\w+ detected stalls")
MAX_STALL_RESETS = 2

_ACCEL: str | None = None
# A console message (kernel printk or journald forwarding a service's output) on its own line.
_CONSOLE_LINE = re.compile(r"^\s*\[\s*\d+\.\d+\] ")
_LIVE: weakref.WeakSet[Machine] = weakref.WeakSet()


class VMError(Exception):
    """The guest did not do what was expected (the message names the log files to read)."""


def _probe_kvm(timeout: float = 25.0) -> bool:
    """Boot OVMF under KVM with no disks; True if the firmware gets as far as its boot manager."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or not OVMF_CODE.exists():
        return False
    with tempfile.TemporaryDirectory(prefix="elemental-kvm-probe-") as tmp:
        vars_copy = Path(tmp) / "vars.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        serial = Path(tmp) / "serial.log"
        cmd = [
            QEMU,
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-nographic",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            f"file:{serial}",
            "-drive",
            f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,file={vars_copy}",
        ]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent(),
        )
        ok = False
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                text = serial.read_text(errors="replace") if serial.exists() else ""
                # BdsDxe is OVMF's boot manager: the firmware ran through PEI/DXE under KVM.
                if "BdsDxe" in text or "Shell>" in text or "PXE" in text:
                    ok = True
                    break
                time.sleep(0.5)
        finally:
            proc.kill()
            _, err = proc.communicate()
        if b"KVM internal error" in err or b"emulation failure" in err:
            ok = False
        return ok


def accel() -> str:
    """``kvm`` if KVM really boots a guest here, else ``tcg``; probed once per process."""
    global _ACCEL
    if _ACCEL is None:
        forced = os.environ.get("ELEMENTAL_VM_ACCEL", "")
        if forced in ("kvm", "tcg"):
            _ACCEL = forced
        else:
            _ACCEL = "kvm" if _probe_kvm() else "tcg"
    return _ACCEL


def accel_args(kind: str) -> list[str]:
    return ["-accel", "kvm", "-cpu", "host"] if kind == "kvm" else ["-accel", "tcg", "-cpu", "max"]


def enroll_keys(cert: Path, dest: Path) -> None:
    """A variable store with `cert` as PK, KEK and db and Secure Boot switched on (user mode)."""
    from elemental_common.run import run

    run(
        [
            "virt-fw-vars",
            "--input",
            str(OVMF_VARS),
            "--output",
            str(dest),
            "--set-pk",
            SB_OWNER,
            str(cert),
            "--add-kek",
            SB_OWNER,
            str(cert),
            "--add-db",
            SB_OWNER,
            str(cert),
            "--sb",
        ],
        hint="virt-fw-vars comes with python3-virt-firmware",
    )


@dataclass
class _Drive:
    args: list[str]


@dataclass(eq=False)
class Machine:
    """One virtual machine: its firmware variables, TPM state and disks persist across boots."""

    name: str
    results_dir: Path = field(default_factory=lambda: Path("results"))
    memory_mb: int = 2048
    cpus: int = 2
    tpm: bool = True
    network: bool = True
    # Extra -netdev user options, e.g. "hostfwd=tcp::2222-:22".
    netdev_options: str = ""
    extra_args: Sequence[str] = ()
    # Secure Boot on, with this PEM certificate enrolled as PK, KEK and db (virt-fw-vars, into the
    # machine's own copy of the variable store); None: the plain firmware, no Secure Boot.
    secure_boot: Path | None = None

    def __post_init__(self) -> None:
        self.dir = (Path(self.results_dir) / self.name).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.vars = self.dir / "OVMF_VARS.fd"
        if not self.vars.exists():
            if self.secure_boot is not None:
                enroll_keys(self.secure_boot, self.vars)
            else:
                shutil.copyfile(OVMF_VARS, self.vars)
        # swtpm state and sockets get short absolute paths (unix sockets are limited to 108 bytes).
        self._rundir = Path(tempfile.mkdtemp(prefix=f"vm-{self.name[:20]}-"))
        self.tpm_state = self.dir / "tpm"
        self._drives: list[_Drive] = []
        self._nic_args: list[str] = []
        self._bootindex = 0
        self._pxe: tuple[Path, str] | None = None
        self.boots = 0
        self.stall_resets = 0
        self._last_stall_reset = -1e9
        self.qemu: subprocess.Popen[bytes] | None = None
        self.swtpm: subprocess.Popen[bytes] | None = None
        self.console: pexpect.fdpexpect.fdspawn | None = None
        self._sock: socket.socket | None = None
        self._serial_log: Any = None
        self._pump: _SerialPump | None = None
        self._console_fd = -1
        self._shell_ready = False
        self._finalizer = weakref.finalize(self, Machine._cleanup_paths, self._rundir)
        _LIVE.add(self)

    # ---------------------------------------------------------------- devices (before boot())

    def _next_bootindex(self) -> int:
        self._bootindex += 1
        return self._bootindex

    def add_disk(
        self,
        path: Path | None = None,
        *,
        size: str = "16G",
        backing: Path | None = None,
        fmt: str | None = None,
        interface: str = "virtio",
        serial: str | None = None,
    ) -> Path:
        """Attach a disk; boot order is the order devices are added.

        No path: a new qcow2 of ``size`` in the machine's directory (an overlay over ``backing`` if
        given, e.g. a copy-on-write view of out/os.raw). interface: virtio (vdX), nvme or sata (sdX).
        """
        n = len(self._drives)
        if path is None:
            path = self.dir / f"disk{n}.qcow2"
            if not path.exists():
                cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
                if backing is not None:
                    bfmt = "qcow2" if backing.suffix == ".qcow2" else "raw"
                    cmd += ["-b", str(backing.resolve()), "-F", bfmt]
                cmd += [str(path)]
                if backing is None:
                    cmd += [size]
                subprocess.run(cmd, check=True)
        path = path.resolve()
        fmt = fmt or ("qcow2" if path.suffix == ".qcow2" else "raw")
        drive_id = f"disk{n}"
        serial = serial or f"elemental-{drive_id}"
        args = ["-drive", f"file={path},format={fmt},if=none,id={drive_id},cache=unsafe,discard=unmap"]
        bootindex = self._next_bootindex()
        if interface == "virtio":
            args += ["-device", f"virtio-blk-pci,drive={drive_id},serial={serial},bootindex={bootindex}"]
        elif interface == "nvme":
            args += ["-device", f"nvme,drive={drive_id},serial={serial},bootindex={bootindex}"]
        elif interface == "sata":
            args += ["-device", f"ide-hd,drive={drive_id},serial={serial},bootindex={bootindex}"]
        else:
            raise ValueError(f"unknown disk interface {interface!r}")
        self._drives.append(_Drive(args))
        return path

    def add_cdrom(self, iso: Path) -> None:
        """Attach an ISO as a SATA DVD-ROM (OVMF boots its UEFI El Torito image)."""
        n = len(self._drives)
        self._drives.append(
            _Drive(
                [
                    "-drive",
                    f"file={iso.resolve()},format=raw,if=none,id=cd{n},media=cdrom,readonly=on",
                    "-device",
                    f"ide-cd,drive=cd{n},bootindex={self._next_bootindex()}",
                ]
            )
        )

    def add_usb_storage(self, image: Path, *, readonly: bool = True) -> None:
        """Attach an image (e.g. the hybrid ISO, as after ``dd`` to a stick) as a USB disk."""
        n = len(self._drives)
        ro = ",readonly=on" if readonly else ""
        self._drives.append(
            _Drive(
                [
                    "-drive",
                    f"file={image.resolve()},format=raw,if=none,id=usb{n}{ro}",
                    "-device",
                    f"usb-storage,bus=xhci.0,drive=usb{n},removable=on,bootindex={self._next_bootindex()}",
                ]
            )
        )

    def set_pxe(self, tftp_dir: Path, bootfile: str = "seed.efi") -> None:
        """Network boot from QEMU's built-in TFTP server (user networking) using OVMF's own PXE."""
        self._pxe = (tftp_dir.resolve(), bootfile)
        self._pxe_bootindex = self._next_bootindex()

    # ---------------------------------------------------------------- lifecycle

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    def _start_swtpm(self) -> list[str]:
        if not self.tpm:
            return []
        self.tpm_state.mkdir(exist_ok=True)
        sock = self._rundir / "swtpm.sock"
        sock.unlink(missing_ok=True)
        log = self.dir / "swtpm.log"
        flags = "not-need-init"
        if not (self.tpm_state / "tpm2-00.permall").exists() and shutil.which("swtpm_setup"):
            # Manufacture the TPM once per machine (EK, sha256 PCR bank); fall back to a blank one.
            subprocess.run(
                [
                    "swtpm_setup",
                    "--tpm2",
                    "--tpmstate",
                    str(self.tpm_state),
                    "--createek",
                    "--pcr-banks",
                    "sha256",
                    "--overwrite",
                    "--logfile",
                    str(log),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        self.swtpm = subprocess.Popen(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.tpm_state}",
                "--ctrl",
                f"type=unixio,path={sock}",
                "--flags",
                flags,
                "--log",
                f"file={log},level=1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        _wait_for(lambda: sock.exists(), 10, f"swtpm socket {sock} (see {log})")
        return [
            "-chardev",
            f"socket,id=chrtpm,path={sock}",
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            "-device",
            "tpm-tis,tpmdev=tpm0",
        ]

    def command_line(self, kind: str, serial_sock: Path, qmp_sock: Path, tpm_args: list[str]) -> list[str]:
        cmd = [
            QEMU,
            "-name",
            self.name,
            "-machine",
            "q35,smm=on" if self.secure_boot is not None else "q35,smm=off",
            *(["-global", "driver=cfi.pflash01,property=secure,value=on"] if self.secure_boot else []),
            *accel_args(kind),
            "-m",
            str(self.memory_mb),
            "-smp",
            str(self.cpus),
            "-nodefaults",
            "-nographic",
            "-display",
            "none",
            "-vga",
            "none",
            "-drive",
            f"if=pflash,format=raw,readonly=on,file={OVMF_CODE_SECBOOT if self.secure_boot else OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,file={self.vars}",
            "-chardev",
            f"socket,id=serial0,path={serial_sock},server=on,wait=on",
            "-serial",
            "chardev:serial0",
            "-qmp",
            f"unix:{qmp_sock},server=on,wait=off",
            "-device",
            "qemu-xhci,id=xhci",
            "-object",
            "rng-random,filename=/dev/urandom,id=rng0",
            "-device",
            "virtio-rng-pci,rng=rng0",
            *tpm_args,
        ]
        for d in self._drives:
            cmd += d.args
        if self.network:
            netdev = "user,id=net0"
            if self._pxe is not None:
                netdev += f",tftp={self._pxe[0]},bootfile={self._pxe[1]}"
            if self.netdev_options:
                netdev += "," + self.netdev_options
            nic = "virtio-net-pci,netdev=net0"
            if self._pxe is not None:
                # romfile= : OVMF's own virtio-net driver and PXE (verified to boot a UKI).
                nic += f",romfile=,bootindex={self._pxe_bootindex}"
            cmd += ["-netdev", netdev, "-device", nic]
        return cmd + list(self.extra_args)

    def boot(self) -> None:
        """Start QEMU (and a fresh swtpm); the console is ready for expect() on return."""
        if self.qemu is not None and self.qemu.poll() is None:
            raise VMError(f"{self.name} is already running")
        self._stop_processes()
        self.boots += 1
        self._shell_ready = False
        kind = accel()
        tpm_args = self._start_swtpm()
        serial_sock = self._rundir / "serial.sock"
        qmp_sock = self._rundir / "qmp.sock"
        for s in (serial_sock, qmp_sock):
            s.unlink(missing_ok=True)
        cmd = self.command_line(kind, serial_sock, qmp_sock, tpm_args)
        (self.dir / f"qemu-{self.boots}.cmdline").write_text(" ".join(cmd) + "\n")
        stderr = (self.dir / "qemu.stderr").open("ab")
        stderr.write(f"--- boot {self.boots} ({kind}) {time.ctime()}\n".encode())
        stderr.flush()
        self.qemu = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        stderr.close()
        _wait_for(
            lambda: serial_sock.exists() or self.qemu is None or self.qemu.poll() is not None,
            30,
            f"QEMU serial socket (see {self.dir / 'qemu.stderr'})",
        )
        if self.qemu.poll() is not None:
            raise VMError(
                f"QEMU exited at start (exit {self.qemu.returncode}); see {self.dir / 'qemu.stderr'}"
            )
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(serial_sock))
        self._serial_log = self.serial_log.open("ab")
        self._serial_log.write(f"\n===== boot {self.boots} ({kind}) {time.ctime()} =====\n".encode())
        # A thread drains the serial socket all the time (into the log and a pipe that pexpect
        # reads), so the guest never blocks on its console while the test is not expecting.
        rfd, wfd = os.pipe()
        self._pump = _SerialPump(self._sock, self._serial_log, wfd)
        self._pump.start()
        self.console = pexpect.fdpexpect.fdspawn(rfd, timeout=60, maxread=65536)
        self._console_fd = rfd
        self._qmp_path = qmp_sock

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- console

    def _con(self) -> pexpect.fdpexpect.fdspawn:
        if self.console is None:
            raise VMError(f"{self.name} is not running (call boot())")
        return self.console

    def expect(self, pattern: str | re.Pattern[str] | Sequence[str], timeout: float = 120) -> str:
        """Wait for a regex (or any of several) on the serial console; returns the matched text.

        A guest kernel that reports an RCU stall is reset (see `_recover_stall`) and the wait goes
        on. Raises VMError with the log path on timeout or when QEMU exits.
        """
        con = self._con()
        patterns: list[Any] = list(pattern) if isinstance(pattern, list | tuple) else [pattern]
        compiled = [_bytes_pattern(p) for p in patterns]
        deadline = time.monotonic() + timeout
        try:
            while True:
                index = con.expect([*compiled, RCU_STALL], timeout=max(0.0, deadline - time.monotonic()))
                if index < len(compiled):
                    break
                self._recover_stall()
        except pexpect.TIMEOUT as exc:
            raise VMError(
                f"{self.name}: timed out after {timeout}s waiting for {pattern!r}; see {self.serial_log}"
            ) from exc
        except pexpect.EOF as exc:
            raise VMError(
                f"{self.name}: console closed (QEMU exited) while waiting for {pattern!r}; "
                f"see {self.serial_log} and {self.dir / 'qemu.stderr'}"
            ) from exc
        match = con.match
        assert match is not None and not isinstance(match, type)
        return bytes(match.group(0)).decode(errors="replace")

    def poll_stall(self) -> None:
        """For waits that watch something else (the operator): reset a guest whose kernel reported
        an RCU stall since the last look at the console."""
        if self.console is None:
            return
        try:
            self.console.expect([RCU_STALL], timeout=0)
        except (pexpect.TIMEOUT, pexpect.EOF):
            return
        self._recover_stall()

    def _recover_stall(self) -> None:
        """The guest kernel reported an RCU stall. Under TCG with 2 vCPUs we have seen a guest hang
        for good this way in early boot (a vCPU's timer interrupt never arrives; the kernel repeats
        the report every minute), once in about 50 boots. Press the reset button, as a hardware
        watchdog would: the firmware boots the machine again from the same disks. The reports
        that follow within a minute belong to the same stall; more than MAX_STALL_RESETS is an
        error."""
        now = time.monotonic()
        if now - self._last_stall_reset < 90:
            return
        if self.stall_resets >= MAX_STALL_RESETS:
            raise VMError(f"{self.name}: guest kernel stalled again after {self.stall_resets} resets")
        self.stall_resets += 1
        self._last_stall_reset = now
        note = f"\n===== RCU stall: system_reset {self.stall_resets} of at most {MAX_STALL_RESETS} =====\n"
        print(f"{self.name}: {note.strip()} ({self.serial_log})", flush=True)
        if self._serial_log is not None:
            self._serial_log.write(note.encode())
        self.qmp("system_reset")

    def send(self, text: str) -> None:
        self._con()
        assert self._sock is not None
        self._sock.sendall(text.encode())

    def sendline(self, text: str = "") -> None:
        self.send(text + "\r")

    def wait_for_shell(self, timeout: float = 600, login: tuple[str, str] | None = None) -> None:
        """Wait until a shell answers on the console (autologin, or log in with (user, password)).

        Quiets kernel messages on the console and disables line wrapping artefacts.
        """
        deadline = time.monotonic() + timeout
        if login is not None:
            self.expect(r"login: ", timeout=timeout)
            self.sendline(login[0])
            self.expect(r"[Pp]assword: ", timeout=60)
            self.sendline(login[1])
        n = 0
        while True:
            n += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VMError(f"{self.name}: no shell on the console after {timeout}s; see {self.serial_log}")
            # The split marker only matches the command's output, never its echo.
            self.sendline(f"echo SHELL''READY{n}")
            try:
                self.expect(f"SHELLREADY{n}", timeout=min(10, remaining))
                break
            except VMError:
                if self.qemu is not None and self.qemu.poll() is not None:
                    raise
        self.sendline(
            "stty -echo cols 1000 2>/dev/null; dmesg -n 1 2>/dev/null; export PAGER=cat SYSTEMD_PAGER=cat "
            "SYSTEMD_COLORS=0 TERM=dumb; echo SHELL''SETUP"
        )
        self.expect("SHELLSETUP", timeout=30)
        self._shell_ready = True

    def run(self, command: str, timeout: float = 120, check: bool = True, raw: bool = False) -> str:
        """Run a command in the root shell on the console; return its output (stdout+stderr).

        Whole lines that look like console messages (``[   12.345678] unit[pid]: ...``, from kernel
        printk or services logging to journal+console) are dropped unless raw=True; a message can
        still land inside a line, so match what you look for loosely. check=True raises VMError on a
        non-zero exit status.
        """
        if not self._shell_ready:
            self.wait_for_shell()
        con = self._con()
        tag = os.urandom(4).hex()
        begin, end = f"BEGIN{tag}", f"END{tag}"
        self.sendline(f"echo {begin[:5]}''{begin[5:]}; {command} 2>&1; echo {end[:3]}''{end[3:]} $?")
        self.expect(begin + r"\r?\n", timeout=timeout)
        self.expect(end + r" (\d+)", timeout=timeout)
        before = con.before
        output = bytes(before if isinstance(before, bytes) else b"").decode(errors="replace")
        match = con.match
        assert match is not None and not isinstance(match, type)
        rc = int(match.group(1))
        output = output.replace("\r\n", "\n").replace("\r", "")
        if not raw:
            output = "".join(
                line for line in output.splitlines(keepends=True) if not _CONSOLE_LINE.match(line)
            )
        if check and rc != 0:
            raise VMError(f"{self.name}: `{command}` exited {rc}:\n{output}")
        return output

    # ---------------------------------------------------------------- shutdown

    def qmp(self, command: str, **arguments: Any) -> Any:
        """One QMP command; returns its "return" value."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self._qmp_path))
            f = s.makefile("rwb")
            json.loads(f.readline())  # greeting
            for cmd in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments}):
                f.write(json.dumps(cmd).encode() + b"\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "event" not in reply:
                        break
                if "error" in reply:
                    raise VMError(f"QMP {cmd['execute']}: {reply['error']}")
            return reply.get("return")

    def wait_exit(self, timeout: float = 300) -> int:
        """Wait for QEMU to exit (guest powered off); returns its exit status."""
        if self.qemu is None:
            return 0
        try:
            rc = self.qemu.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise VMError(
                f"{self.name}: still running {timeout}s after poweroff; see {self.serial_log}"
            ) from exc
        self._stop_processes()
        return rc

    def poweroff(self, timeout: float = 300) -> None:
        """Power off from the guest shell (ACPI via QMP if there is none) and wait for QEMU to exit."""
        if self.qemu is None or self.qemu.poll() is not None:
            self._stop_processes()
            return
        if self._shell_ready:
            self.sendline("systemctl poweroff")
        else:
            with contextlib.suppress(Exception):
                self.qmp("system_powerdown")
        self.wait_exit(timeout)

    def reboot(self) -> None:
        """Reboot from the guest shell; QEMU keeps running (same swtpm connection)."""
        self._shell_ready = False
        self.sendline("systemctl reboot")

    def _stop_processes(self) -> None:
        if self.qemu is not None and self.qemu.poll() is None:
            with contextlib.suppress(Exception):
                self.qmp("quit")
            try:
                self.qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.qemu.pid, signal.SIGKILL)
                self.qemu.wait(timeout=10)
        if self.swtpm is not None and self.swtpm.poll() is None:
            self.swtpm.terminate()
            try:
                self.swtpm.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.swtpm.kill()
                self.swtpm.wait(timeout=5)
        if self._pump is not None:
            self._pump.stop()
            self._pump = None
        if self.console is not None:
            with contextlib.suppress(OSError):
                os.close(self._console_fd)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        if self._serial_log is not None:
            self._serial_log.close()
        self.console, self._sock, self._serial_log = None, None, None
        self._shell_ready = False

    def close(self) -> None:
        """Stop QEMU and swtpm (idempotent); logs and disks stay in the results directory."""
        self._stop_processes()
        self._finalizer()

    @staticmethod
    def _cleanup_paths(rundir: Path) -> None:
        shutil.rmtree(rundir, ignore_errors=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._stop_processes()


class _SerialPump(threading.Thread):
    """Copies the guest's serial output to the log file and to a pipe, buffering without limit."""

    def __init__(self, sock: socket.socket, log: Any, wfd: int) -> None:
        super().__init__(daemon=True, name="serial-pump")
        self.sock, self.log, self.wfd = sock, log, wfd
        self._stop_event = threading.Event()
        os.set_blocking(wfd, False)

    def run(self) -> None:
        pending = b""
        eof = False
        try:
            while not self._stop_event.is_set() and not (eof and not pending):
                rlist = [] if eof else [self.sock]
                wlist = [self.wfd] if pending else []
                readable, writable, _ = select.select(rlist, wlist, [], 0.2)
                if readable:
                    data = self.sock.recv(65536)
                    if not data:
                        eof = True
                    else:
                        self.log.write(data)
                        self.log.flush()
                        pending += data
                if writable and pending:
                    with contextlib.suppress(BlockingIOError):
                        pending = pending[os.write(self.wfd, pending[:65536]) :]
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(self.wfd)  # pexpect sees EOF

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _bytes_pattern(p: str | re.Pattern[str]) -> re.Pattern[bytes]:
    if isinstance(p, re.Pattern):
        return re.compile(p.pattern.encode(), p.flags & ~re.UNICODE)
    return re.compile(p.encode())


def _wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise VMError(f"timed out waiting for {what}")
        time.sleep(0.1)


@atexit.register
def _close_all() -> None:
    for m in list(_LIVE):
        with contextlib.suppress(Exception):
            m.close()


@contextlib.contextmanager
def machine(name: str, results_dir: Path, **kwargs: Any) -> Iterator[Machine]:
    """``with machine(...) as m:`` — a Machine that is always closed."""
    m = Machine(name, results_dir=results_dir, **kwargs)
    try:
        yield m
    finally:
        m.close()
