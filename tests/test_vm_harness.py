"""The VM harness leaves nothing behind: QEMU and swtpm die with a test process that is killed
without cleaning up (``kill -- -<pgid>``, as a CI timeout or an impatient user does).

QEMU starts paused (``-S``) with no disks: no guest runs, the test takes seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from waiting import wait_until

pytestmark = pytest.mark.vm

TESTS = Path(__file__).resolve().parent

# The "test process": boots a machine, reports the pids, then waits to be killed.
CHILD = textwrap.dedent(
    """
    import sys, threading
    sys.path.insert(0, sys.argv[1])
    from vm import Machine
    m = Machine("orphan", results_dir=sys.argv[2], network=False, extra_args=["-S"])
    m.boot()
    print(m.qemu.pid, m.swtpm.pid, flush=True)
    threading.Event().wait()
    """
)


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_qemu_and_swtpm_die_with_a_killed_test_process(tmp_path: Path) -> None:
    missing = [t for t in ("qemu-system-x86_64", "swtpm") if shutil.which(t) is None]
    if missing or not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
        pytest.skip(f"needs QEMU, swtpm and OVMF (missing: {missing or 'OVMF'})")
    env = dict(os.environ, ELEMENTAL_VM_ACCEL="tcg")  # no KVM probe: the machine never runs
    test_process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(TESTS), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, to kill it the way `kill -- -<pgid>` does
    )
    pids: list[int] = []
    try:
        assert test_process.stdout is not None
        line = test_process.stdout.readline()  # bounded: the harness times out its own waits
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, f"no pids from the test process: {line!r} (exit {test_process.poll()})"
        assert all(_alive(p) for p in pids)
        os.killpg(test_process.pid, signal.SIGKILL)
        test_process.wait(timeout=10)
        wait_until(
            lambda: not any(_alive(p) for p in pids), 10, what=f"QEMU and swtpm ({pids}) to die"
        )
    finally:
        for pid in pids:  # a failing run must not leak them either
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(test_process.pid, signal.SIGKILL)
        test_process.wait(timeout=10)
