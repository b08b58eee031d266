"""Applying a rancher-system-agent plan: files, one-time and periodic instructions, probes.

Semantics follow rancher-system-agent's applyinator (brief §6.1): files first (base64 content,
octal permissions, uid/gid, directories, `action: delete`), then one-time instructions in order,
each in a fresh execution directory with CATTLE_AGENT_EXECUTION_PWD/ATTEMPT_NUMBER set; the first
failing instruction fails the plan. Outputs are reported as gzip+base64 JSON maps.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elemental_common.errors import Die
from elemental_common.run import spawn

log = logging.getLogger("elemental.agent")

# Instructions that name a container image run it as the execution directory in
# rancher-system-agent; we have no container runtime in the OS, so they must give a command.
_MAX_OUTPUT = 1 << 20
_MAX_LOG_LINE = 500


def checksum(plan: str | bytes) -> str:
    return hashlib.sha256(plan.encode() if isinstance(plan, str) else plan).hexdigest()


def pack_output(outputs: dict[str, Any]) -> str:
    return base64.b64encode(gzip.compress(json.dumps(outputs, sort_keys=True).encode())).decode()


def unpack_output(data: str) -> dict[str, Any]:
    out = json.loads(gzip.decompress(base64.b64decode(data)))
    return out if isinstance(out, dict) else {}


class PlanError(Exception):
    pass


@dataclass
class Result:
    ok: bool
    outputs: dict[str, str] = field(default_factory=dict)
    error: str = ""


def parse(plan: str) -> dict[str, Any]:
    try:
        data = json.loads(plan) if plan.strip() else {}
    except ValueError as e:
        raise PlanError(f"plan is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise PlanError("plan is not a JSON object")
    return data


def _path(root: Path, path: str) -> Path:
    if not path.startswith("/"):
        raise PlanError(f"plan file path {path!r} is not absolute")
    return root / path.lstrip("/")


def apply_files(files: list[dict[str, Any]], root: Path = Path("/")) -> list[str]:
    done = []
    for f in files or []:
        p = _path(root, str(f.get("path", "")))
        if f.get("action") == "delete":
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            done.append(f"deleted {f['path']}")
            continue
        perms = f.get("permissions")
        if f.get("directory"):
            mode = int(str(perms), 8) if perms else 0o755
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, mode)
        else:
            mode = int(str(perms), 8) if perms else 0o600
            content = base64.b64decode(f.get("content") or "")
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.elemental-tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                os.write(fd, content)
                os.fchmod(fd, mode)  # umask must not narrow the plan's permissions
            finally:
                os.close(fd)
            os.replace(tmp, p)
        uid, gid = f.get("uid"), f.get("gid")
        if uid not in (None, -1) or gid not in (None, -1):
            os.chown(p, int(uid) if uid not in (None, -1) else -1, int(gid) if gid not in (None, -1) else -1)
        done.append(f"wrote {f['path']}")
    return done


def _drain(pipe: Any, sink: bytearray, prefix: str | None) -> None:
    """Read an instruction's pipe to the end, keeping its last _MAX_OUTPUT bytes; with a prefix,
    each line also goes to the log as it comes (rancher-system-agent's applyinator streams an
    instruction's output into its log the same way): an upgrade's progress is then visible in
    the journal and on the console while it runs, not only in the plan output afterwards."""
    for line in iter(pipe.readline, b""):
        sink += line
        if len(sink) > 2 * _MAX_OUTPUT:
            del sink[:-_MAX_OUTPUT]
        if prefix is not None:
            log.info("%s: %s", prefix, line[:_MAX_LOG_LINE].decode(errors="replace").rstrip())
    pipe.close()


def run_instruction(
    ins: dict[str, Any], work: Path, attempt: int, timeout: float | None = None, stream: bool = False
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one instruction, run in a fresh execution directory;
    stream: log its output lines as they come (one-time instructions; not periodic ones)."""
    if ins.get("image") and not ins.get("command"):
        return 127, "", f"instruction {ins.get('name')!r}: images are not supported, give a command"
    work.mkdir(parents=True, exist_ok=True)
    exec_dir = Path(tempfile.mkdtemp(prefix="exec-", dir=work))
    env = dict(os.environ)
    for kv in ins.get("env") or []:
        k, _, v = str(kv).partition("=")
        env[k] = v
    env["CATTLE_AGENT_EXECUTION_PWD"] = str(exec_dir)
    env["CATTLE_AGENT_ATTEMPT_NUMBER"] = str(attempt)
    env["PATH"] = env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") + f":{exec_dir}"
    argv = [str(ins["command"]), *[str(a) for a in ins.get("args") or []]]
    log.info("instruction %s: %s", ins.get("name", "?"), " ".join(argv))
    # An instruction's failure is the plan's result (exit code and output reported to the
    # operator, as rancher-system-agent does), not an error of the agent: nothing here raises.
    try:
        proc = spawn(
            argv,
            cwd=exec_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        prefix = f"instruction {ins.get('name', '?')}" if stream else None
        out_buf, err_buf = bytearray(), bytearray()
        readers = [
            threading.Thread(target=_drain, args=(pipe, buf, prefix), daemon=True)
            for pipe, buf in ((proc.stdout, out_buf), (proc.stderr, err_buf))
        ]
        for r in readers:
            r.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            err_buf += b"\ntimed out"
            code = 124
        for r in readers:
            r.join()
        out, err = bytes(out_buf), bytes(err_buf)
    except Die as e:  # spawn's missing-command failure: the shell's exit code for it
        code, out, err = 127, b"", e.message.encode()
    finally:
        shutil.rmtree(exec_dir, ignore_errors=True)
    return code, out[-_MAX_OUTPUT:].decode(errors="replace"), err[-_MAX_OUTPUT:].decode(errors="replace")


def is_reboot(ins: dict[str, Any]) -> bool:
    """Whether an instruction reboots the machine (`shutdown -r`, `reboot`, `systemctl reboot`)."""
    cmd = os.path.basename(str(ins.get("command") or ""))
    args = [str(a) for a in ins.get("args") or []]
    return (
        cmd == "reboot" or (cmd == "shutdown" and "-r" in args) or (cmd == "systemctl" and "reboot" in args)
    )


def apply(
    plan: dict[str, Any],
    work: Path,
    attempt: int = 1,
    root: Path = Path("/"),
    before_reboot: Callable[[Result], None] | None = None,
) -> Result:
    """Files, then one-time instructions; stops at the first failure.

    `before_reboot` is called with the result so far right before an instruction that reboots:
    what the plan did must be recorded durably by then, or the machine comes back and runs the
    plan again (an upgrade would write the new OS into the fallback slot too)."""
    res = Result(ok=True)
    try:
        apply_files(plan.get("files") or [], root)
    except (OSError, ValueError, PlanError) as e:
        return Result(ok=False, error=f"files: {e}")
    for i, ins in enumerate(plan.get("instructions") or []):
        name = str(ins.get("name") or f"instruction-{i}")
        if not ins.get("command") and not ins.get("image"):
            return Result(False, res.outputs, f"{name}: no command")
        if before_reboot is not None and is_reboot(ins):
            before_reboot(Result(True, dict(res.outputs)))
        code, out, err = run_instruction(ins, work, attempt, stream=True)
        if ins.get("saveOutput") or code != 0:
            res.outputs[name] = out + err
        if code != 0:
            res.ok = False
            res.error = f"{name}: exit {code}: {err.strip()[-2000:]}"
            return res
    return res


@dataclass
class PeriodicState:
    next_run: float = 0.0
    record: dict[str, Any] = field(default_factory=dict)


def run_periodic(
    plan: dict[str, Any], states: dict[str, PeriodicState], work: Path, now: float | None = None
) -> bool:
    """Run the periodic instructions that are due; True when their output changed."""
    now = time.time() if now is None else now
    changed = False
    for i, ins in enumerate(plan.get("periodicInstructions") or []):
        name = str(ins.get("name") or f"periodic-{i}")
        st = states.setdefault(name, PeriodicState())
        if now < st.next_run:
            continue
        st.next_run = now + float(ins.get("periodSeconds") or 600)
        code, out, err = run_instruction(ins, work, 1)
        rec = dict(st.record) or {"name": name, "failures": 0}
        rec.update(name=name, stdout=base64.b64encode(out.encode()).decode(), exitCode=code)
        if ins.get("saveStderrOutput"):
            rec["stderr"] = base64.b64encode(err.encode()).decode()
        stamp = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(now))
        if code == 0:
            rec["lastSuccessfulRunTime"] = stamp
        else:
            rec["failures"] = int(rec.get("failures", 0)) + 1
            rec["lastFailedRunTime"] = stamp
        if rec != st.record:
            changed = True
        st.record = rec
    return changed


def periodic_output(states: dict[str, PeriodicState]) -> str:
    return pack_output({n: s.record for n, s in states.items() if s.record})


@dataclass
class ProbeState:
    healthy: bool = False
    success_count: int = 0
    failure_count: int = 0
    started: float = 0.0


def probe_once(probe: dict[str, Any]) -> bool:
    http = probe.get("httpGet") or {}
    url = http.get("url")
    if not url:
        return False
    ctx: ssl.SSLContext | None = None
    if url.startswith("https:"):
        if http.get("insecure"):
            ctx = ssl._create_unverified_context()  # the plan asked for it explicitly
        elif http.get("caCert"):
            ctx = ssl.create_default_context(cafile=http["caCert"])
        else:
            ctx = ssl.create_default_context()
        if http.get("clientCert") and http.get("clientKey"):
            ctx.load_cert_chain(http["clientCert"], http["clientKey"])
    try:
        with urllib.request.urlopen(url, timeout=float(probe.get("timeoutSeconds") or 1), context=ctx) as r:
            return bool(200 <= r.status < 400)
    except Exception:  # any failure is a failed probe
        return False


def run_probes(plan: dict[str, Any], states: dict[str, ProbeState], now: float | None = None) -> bool:
    """One round of probes (kubelet-style thresholds); True when a health state changed."""
    now = time.time() if now is None else now
    changed = False
    for name, probe in (plan.get("probes") or {}).items():
        st = states.setdefault(name, ProbeState(started=now))
        if now - st.started < float(probe.get("initialDelaySeconds") or 0):
            continue
        before = (st.healthy, st.success_count, st.failure_count)
        if probe_once(probe):
            st.success_count += 1
            st.failure_count = 0
            if st.success_count >= int(probe.get("successThreshold") or 1):
                st.healthy = True
        else:
            st.failure_count += 1
            st.success_count = 0
            if st.failure_count >= int(probe.get("failureThreshold") or 3):
                st.healthy = False
        changed |= before[0] != st.healthy
    return changed


def probe_statuses(states: dict[str, ProbeState]) -> dict[str, Any]:
    return {
        n: {"healthy": s.healthy, "successCount": s.success_count, "failureCount": s.failure_count}
        for n, s in states.items()
    }
