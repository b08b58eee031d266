"""Children of the test process (QEMU, swtpm, the e2e operator) die with it, however it ends.

The harness starts them in their own session (``start_new_session=True``) so that a Ctrl-C on the
terminal reaches only pytest, which then stops them in order (QMP quit, then swtpm). That also
hides them from ``kill -- -<pgid>`` and from a SIGKILL of pytest, which run no cleanup: they
would keep running (and holding CPU, disks and TPM state) with nobody to stop them. The kernel's
parent-death signal closes that hole: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the child, between
fork and exec, so the child is killed the moment its parent goes away.

The signal follows the *thread* that forked the child: start these processes from a thread that
lives as long as they should (the tests' main thread).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Resolved here, in the parent: the child between fork and exec should do as little as possible.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess.Popen: the child gets `sig` when this process dies."""
    parent = os.getpid()

    def preexec() -> None:
        if _prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            os._exit(127)
        # The parent may have died between fork and prctl: then nobody would send the signal.
        if os.getppid() != parent:
            os._exit(1)

    return preexec
