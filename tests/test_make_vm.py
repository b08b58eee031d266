"""``make vm`` (tests/make_vm.py), the README's quick tour: its pieces as unit tests, and the whole
command run without a terminal, end to end, on one machine:

1. a fresh machine: no operator runs, so the command starts one on its state directory, packs the
   seed with the default registration, and the machine registers (TPM), installs to its virtio disk,
   reboots into the OS and turns Ready; the command powers it off, stops that operator, exits 0;
2. Ctrl-C (SIGINT) on a second machine's seed boot: QEMU, swtpm and the operator it started stop;
3. with an operator already running: the first machine boots its installed disk (no ISO), its OS
   re-registers with the same TPM (the same inventory) and is Ready again; the operator is left alone;
4. the same on a pseudo-terminal: once Ready the machine keeps running, a login typed on the terminal
   reaches its console, Ctrl-C powers it off (ACPI) and the command exits 0.

Under TCG 6-8 minutes (step 1 3.5-6, steps 3 and 4 about 1.5 each). Logs: ``results/test_make_vm/``
(``make-vm-<step>.log`` is the command's output; ``state/vms/<name>/`` the machines').
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import make_vm
import pytest
from waiting import wait_until

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
OUT = Path(os.environ.get("OUT") or REPO / "out").resolve()
RESULTS = (Path(os.environ.get("RESULTS") or REPO / "results") / "test_make_vm").resolve()
DRIVER = TESTS / "make_vm.py"


# ------------------------------------------------------------------------------ unit


def _inv(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "fleet-default", "labels": {"a": "b"}}, "status": status}


def test_progress_shows_each_change_once() -> None:
    p = make_vm.Progress()
    assert p.update(None) == []
    assert p.update(_inv("m-1")) == ["MachineInventory fleet-default/m-1 (a=b)"]
    installing = {"type": "InstallProgress", "status": "Unknown", "message": "unpacking: 40%"}
    assert p.update(_inv("m-1", conditions=[installing])) == ["InstallProgress: unpacking: 40%"]
    assert p.update(_inv("m-1", conditions=[installing])) == []
    not_ready = {"type": "Ready", "status": "False", "reason": "WaitingForPlan", "message": "no agent yet"}
    assert p.update(_inv("m-1", conditions=[installing, not_ready])) == [
        "Ready=False WaitingForPlan: no agent yet"
    ]
    assert not p.ready_and_applied
    ready = {"type": "Ready", "status": "True", "reason": "PlanApplied", "message": "ok"}
    lines = p.update(_inv("m-1", conditions=[ready], plan={"state": "Applied"}))
    assert lines == ["plan: Applied", "Ready=True PlanApplied"]
    assert p.ready_and_applied


def test_find_inventory_by_name_then_uuid_label() -> None:
    state = make_vm.MachineState(uuid="AB-12")
    other = _inv("m-other")
    by_name = _inv("m-ab-12")
    assert make_vm.find_inventory([other, by_name], state) is by_name
    relabelled = _inv("renamed")
    relabelled["metadata"]["labels"] = {"machineUUID": "ab-12"}
    assert make_vm.find_inventory([other, relabelled], state) is relabelled
    gone = _inv("m-ab-12")
    gone["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    assert make_vm.find_inventory([gone], state) is None


def test_console_tail_finds_markers_split_between_reads(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"an older boot: re-registration: updating the existing inventory\n")
    tail = make_vm.ConsoleTail(log)  # starts at the end: older boots do not count
    assert tail.read() == b""
    assert (tail.installed, tail.reregistered) == (False, False)
    with log.open("ab") as f:
        f.write(b"[  9.1] elemental-register[1]: install progress: instal")
    tail.read()
    assert (tail.installed, tail.reregistered) == (False, False)
    with log.open("ab") as f:
        f.write(b"led 100%\r\nre-registration: updating the ")
    tail.read()
    assert (tail.installed, tail.reregistered) == (True, False)
    with log.open("ab") as f:
        f.write(b"existing inventory\r\n")
    tail.read()
    assert (tail.installed, tail.reregistered) == (True, True)


def test_clean_console_drops_escapes_and_carriage_returns() -> None:
    raw = b"\x1b[0;32m  OK  \x1b[0m] Started x.\r\n\x1b]0;title\x07\x1bcdone\tend\x00\r\n"
    assert make_vm.clean_console(raw) == b"  OK  ] Started x.\ndone\tend\n"


def test_listen_port() -> None:
    assert make_vm.listen_port("0.0.0.0:8443") == 8443
    assert make_vm.listen_port("[::]:9443") == 9443
    with pytest.raises(make_vm.Die, match="cannot tell the operator's port"):
        make_vm.listen_port("localhost")


def test_bad_machine_name_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert make_vm.main(["--name", "../x"]) == 1
    err = capsys.readouterr().err
    assert "make vm: error: machine name '../x' is not valid" in err and "Traceback" not in err


def test_make_target_passes_name_and_fresh() -> None:
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", "vm", "NAME=m2", "FRESH=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tests/make_vm.py --name 'm2' --fresh" in out
    plain = subprocess.run(
        ["make", "-n", "--no-print-directory", "vm"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NAME": "from-the-environment", "FRESH": ""},
    ).stdout
    assert "tests/make_vm.py --name 'm1' " in plain  # NAME counts only on make's command line


# ------------------------------------------------------------------------------ VM


def _hardlink_images(dest: Path) -> None:
    """The built seed and OS under a test-owned $OUT: the command re-packs the seed ISO there, not
    in out/ (other tests boot out/seed.iso)."""
    dest.mkdir(parents=True)
    for name in ("seed.efi", "seed.vmlinuz", "seed.initrd"):
        os.link(OUT / name, dest / name)
    shutil.copytree(OUT / "os", dest / "os", copy_function=os.link)


def _tail(path: Path, lines: int = 80) -> str:
    text = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return f"--- {path} (last {lines} lines)\n" + "\n".join(text[-lines:])


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.vm
def test_make_vm_fresh_install_then_installed_disk() -> None:
    missing = [t for t in ("qemu-system-x86_64", "swtpm", "xorriso") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    for f in (OUT / "seed.efi", OUT / "os" / "index.json"):
        if not f.is_file():
            pytest.skip(f"{f} has not been built (make iso)")
    sys.path.insert(0, str(TESTS / "e2e"))
    from harness import Operator, condition

    shutil.rmtree(RESULTS, ignore_errors=True)
    RESULTS.mkdir(parents=True)
    out = RESULTS / "out"
    _hardlink_images(out)
    # Its operator: state, port and the URL the guests use; started by the command in steps 1-2,
    # by the test in step 3.
    op = Operator(RESULTS)
    env = {
        **os.environ,
        "ELEMENTAL_STATE": str(op.state),
        "OUT": str(out),
        "ELEMENTAL_OPERATOR_LISTEN": f"0.0.0.0:{op.port}",
        "ELEMENTAL_OPERATOR_PUBLIC_URL": op.public_url,
    }
    vms = op.state / "vms"
    timings: dict[str, float] = {}

    def make_vm_run(step: str, *args: str, timeout: float) -> str:
        log = RESULTS / f"make-vm-{step}.log"
        start = time.monotonic()
        with log.open("wb") as f:
            rc = subprocess.run(
                [sys.executable, str(DRIVER), *args],
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                timeout=timeout,
            ).returncode
        timings[step] = round(time.monotonic() - start, 1)
        text = log.read_text(errors="replace")
        assert rc == 0, (
            f"make vm {' '.join(args)} exited {rc}\n{_tail(log)}\n{_tail(vms / 'operator.log', 40)}"
        )
        return text

    try:
        # 1. fresh machine, no operator yet
        text = make_vm_run("1-fresh", "--name", "m1", timeout=2400)
        state = make_vm.MachineState.load(vms / "m1" / "machine.json")
        inventory = f"m-{state.uuid}"
        for line in (
            f"[m1] operator: starting elemental-operator serve on {op.state}",
            f"packing {out}/seed.iso with {op.state}/registration.yaml",
            "[m1] booting the seed",
            f"[m1] MachineInventory fleet-default/{inventory} (",
            "serialNumber=m1",
            "[m1] InstallProgress: ",
            "[m1] installed: the next `make vm` boots this disk",
            "[m1] the installed OS re-registered",
            f"[m1] Ready: MachineInventory fleet-default/{inventory}, plan applied",
            "[m1] powering off m1",
            "[m1] stopping the operator this command started",
            f"[m1] logs:      {vms}/m1/serial.log",
            f"[m1] dashboard: https://localhost:{op.port}/dashboard/",
        ):
            assert line in text, f"{line!r} not in the output\n{text[-4000:]}"
        assert state.installed and state.inventory == inventory
        assert "registration successful" in text  # the console is shown, cleaned
        assert "\x1b[" not in text
        wait_until(lambda: not _port_open(op.port), 30, what="the command's operator to stop")

        # 2. Ctrl-C while a second machine's seed boots
        log2 = RESULTS / "make-vm-2-interrupt.log"
        with log2.open("wb") as log2_file:
            proc = subprocess.Popen(
                [sys.executable, str(DRIVER), "--name", "m2"],
                stdin=subprocess.DEVNULL,
                stdout=log2_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        try:
            booted = wait_until(
                lambda: re.search(r"QEMU pid (\d+), swtpm pid (\d+)", log2.read_text(errors="replace")),
                300,
                interval=0.5,
                what="the second machine's QEMU",
            )
            assert booted is not None
            qemu_pid, swtpm_pid = int(booted.group(1)), int(booted.group(2))
            assert "packing" not in log2.read_text()  # the ISO already embeds this registration
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 130, _tail(log2)
        finally:
            if proc.poll() is None:
                proc.kill()
        text2 = log2.read_text(errors="replace")
        assert "[m2] interrupted" in text2 and "[m2] stopping the operator this command started" in text2
        assert not _pid_alive(qemu_pid) and not _pid_alive(swtpm_pid), text2
        assert not _port_open(op.port)

        # 3. the installed disk, with an operator already running
        op.start()
        text3 = make_vm_run("3-installed", "--name", "m1", timeout=1500)
        for line in (
            f"[m1] operator: the one running at https://127.0.0.1:{op.port} (left running)",
            "[m1] booting its installed disk",
            "[m1] the installed OS re-registered",
            f"[m1] Ready: MachineInventory fleet-default/{inventory}, plan applied",
        ):
            assert line in text3, f"{line!r} not in the output\n{text3[-4000:]}"
        assert "booting the seed" not in text3 and "stopping the operator" not in text3
        assert op.proc is not None and op.proc.poll() is None  # left alone
        mine = [
            inv
            for inv in op.inventories()
            if (inv["metadata"].get("labels") or {}).get("serialNumber") == "m1"
        ]
        assert [inv["metadata"]["name"] for inv in mine] == [inventory]  # the same TPM, the same one
        assert condition(mine[0], "Ready") == "True"

        # 4. on a terminal: the machine stays up once Ready, keys reach its console, Ctrl-C powers it off
        qemu_pid = _terminal_session(env, inventory, RESULTS / "make-vm-4-terminal.log", timings)
        assert not _pid_alive(qemu_pid)
        assert op.proc.poll() is None  # still left alone
    finally:
        op.stop()
        print(f"make vm timings (s): {timings}", flush=True)
        (RESULTS / "timings.json").write_text(f"{timings}\n")


def _terminal_session(env: dict[str, str], inventory: str, log: Path, timings: dict[str, float]) -> int:
    """`make vm` on a pseudo-terminal (pexpect) until Ready, a login typed into the console, then
    Ctrl-C; returns QEMU's pid."""
    import pexpect

    start = time.monotonic()
    with log.open("wb") as f:
        child = pexpect.spawn(
            sys.executable, [str(DRIVER), "--name", "m1"], env=env, cwd=str(REPO), timeout=900, logfile=f
        )
        try:
            child.expect(r"QEMU pid (\d+)")
            qemu_pid = int(child.match.group(1))
            child.expect(f"Ready: MachineInventory fleet-default/{inventory}")
            child.expect("the machine keeps running")
            timings["4-terminal-ready"] = round(time.monotonic() - start, 1)
            child.send("root\r")  # the installed OS's serial getty asks for the password next
            child.expect("[Pp]assword:", timeout=120)
            child.sendintr()  # Ctrl-C: the terminal sends SIGINT (cbreak mode keeps ISIG)
            child.expect("powering off m1", timeout=60)
            child.expect(pexpect.EOF, timeout=300)
        finally:
            child.close(force=True)
    timings["4-terminal"] = round(time.monotonic() - start, 1)
    assert child.exitstatus == 0, log.read_text(errors="replace")[-3000:]
    return qemu_pid


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
