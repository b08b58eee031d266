"""The agent loop: poll the plan, apply it when its checksum is new, report status.

Differences from rancher-system-agent, on purpose:
* the applied checksum is kept on disk (/var/lib/elemental/agent/state.json), so a restart does
  not re-apply the last plan (an upgrade plan would otherwise upgrade again at every boot);
* reset plans boot recovery with systemd-boot (`bootctl set-oneshot` of the recovery entry, as
  our operator's plan says); Elemental's grub2-editenv form is still understood and turned into
  that; on an unmanaged OS only the plan's files are written;
* after an upgrade the agent compares the booted slot with the one the upgrade targeted and
  reports a rollback as a failure of the upgrade plan (failed-checksum + failed-output).
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from elemental_common.consts import UNMANAGED_RESET_MARKER
from elemental_common.pe import parse_os_release
from elemental_register.agent import plan as planlib
from elemental_register.agent.client import OperatorClient, OperatorError
from elemental_register.agent.config import AgentConfig, Connection
from elemental_register.agent.k8s import KubeConnection, SecretClient, is_kube_connection
from elemental_register.installer import boot, durable, oem, system, upgrade

log = logging.getLogger("elemental.agent")


@dataclass
class LocalState:
    applied_checksum: str = ""
    applied_output: str = ""
    failed_checksum: str = ""
    failed_output: str = ""
    failure_count: int = 0
    success_count: int = 0
    last_apply_time: str = ""
    last_failure: float = 0.0
    terminal_failure: str = ""  # checksum never to retry (a rolled-back upgrade)
    reported_rollback: str = ""


def unix_date(t: float) -> str:
    return time.strftime("%a %b %e %H:%M:%S UTC %Y", time.gmtime(t))


def sd_notify(msg: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(msg.encode(), addr)


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        client: OperatorClient | SecretClient,
        *,
        root: Path = Path("/"),
        oem_dir: Path = Path("/oem"),
        managed: bool | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.root = root
        self.oem_dir = oem_dir
        self.now = now
        self.state_path = cfg.work_directory.parent / "state.json"
        self.state = self._load()
        self.managed = managed if managed is not None else bool(oem.load_system_state(oem_dir))
        self.plan: dict[str, Any] = {}
        self.periodic: dict[str, planlib.PeriodicState] = {}
        self.probes: dict[str, planlib.ProbeState] = {}
        self.last_status: dict[str, Any] = {}

    # ------------------------------------------------------------------ state
    def _load(self) -> LocalState:
        try:
            d = json.loads(self.state_path.read_text())
            return LocalState(**{k: v for k, v in d.items() if k in LocalState.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return LocalState()

    def _save(self) -> None:
        """Durably (fsync of the file and its directory): a reboot may follow at once."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        durable.write_atomic(self.state_path, json.dumps(asdict(self.state), indent=2).encode(), 0o600)

    def os_version(self) -> str:
        for p in (self.root / "etc/os-release", self.root / "usr/lib/os-release"):
            try:
                rel = parse_os_release(p.read_text())
                return rel.get("IMAGE_VERSION") or rel.get("VERSION_ID", "")
            except OSError:
                continue
        return ""

    def status(self) -> dict[str, Any]:
        s = self.state
        out: dict[str, Any] = {
            "applied-checksum": s.applied_checksum,
            "applied-output": s.applied_output,
            "failed-checksum": s.failed_checksum,
            "failed-output": s.failed_output,
            "failure-count": str(s.failure_count),
            "success-count": str(s.success_count),
            "last-apply-time": s.last_apply_time,
            "os-version": self.os_version(),
            # which slot this boot runs (a, b or recovery: the entry's elemental.slot=), for the
            # operator's views; empty outside the installed OS
            "os-slot": system.booted_slot() or "",
        }
        if self.periodic:
            out["applied-periodic-output"] = planlib.periodic_output(self.periodic)
        if self.probes:
            out["probe-statuses"] = planlib.probe_statuses(self.probes)
        return out

    def report(self, force: bool = False) -> None:
        st = self.status()
        if st == self.last_status and not force:
            return
        try:
            self.client.post_status(st)
            self.last_status = st
        except OperatorError as e:
            log.warning("cannot report plan status: %s", e)

    # --------------------------------------------------------------- rollback
    def check_upgrade(self) -> None:
        if not self.managed:
            return
        st = oem.load_system_state(self.oem_dir)
        outcome = upgrade.upgrade_outcome(st, system.booted_slot(), system.boot_id())
        if not outcome:
            return
        kind, msg = outcome
        up = st.get("upgrade") or {}
        key = f"{up.get('generation')}:{up.get('time')}"
        if kind == "failed" and self.state.reported_rollback != key:
            log.error("%s", msg)
            cs = self.state.applied_checksum
            self.state.failed_checksum = cs
            self.state.failed_output = planlib.pack_output({"os upgrade": msg})
            self.state.failure_count += 1
            self.state.terminal_failure = cs
            self.state.applied_checksum = ""
            self.state.reported_rollback = key
            self._save()
        elif kind == "succeeded":
            log.info("%s", msg)

    # ------------------------------------------------------------------ apply
    def _adapt(self, plan: dict[str, Any], plan_type: str) -> dict[str, Any]:
        if plan_type != "reset":
            return plan
        if not self.managed:
            # unmanaged: the marker file is all a reset means (brief §3.5)
            files = list(plan.get("files") or [])
            if not any(f.get("path") == UNMANAGED_RESET_MARKER for f in files):
                import base64

                files.append(
                    {
                        "path": UNMANAGED_RESET_MARKER,
                        "permissions": "0600",
                        "content": base64.b64encode(unix_date(self.now()).encode()).decode(),
                    }
                )
            return {"files": files}
        # Our operator's plan already says `bootctl set-oneshot <recovery entry>` and passes
        # unchanged. Elemental's own operator says `grub2-editenv /oem/grubenv set
        # next_entry=recovery`, which on a systemd-boot OS would fail (no grub2-editenv) or do
        # nothing: an OS of ours managed by Elemental's operator must still reach recovery.
        out = []
        for ins in plan.get("instructions") or []:
            if ins.get("command") == "grub2-editenv" or "next_entry=recovery" in (ins.get("args") or []):
                out.append(
                    {
                        "name": ins.get("name", "boot recovery next"),
                        "command": "bootctl",
                        "args": ["set-oneshot", f"{boot.RECOVERY_ID}.conf"],
                    }
                )
            else:
                out.append(ins)
        return {**plan, "instructions": out}

    def _record_applied(self, cs: str, result: planlib.Result) -> None:
        """Record plan `cs` as applied, durably."""
        s = self.state
        s.last_apply_time = unix_date(self.now())
        s.applied_checksum, s.applied_output = cs, planlib.pack_output(result.outputs)
        s.success_count += 1
        s.failed_checksum, s.failed_output, s.failure_count = "", "", 0
        log.info("plan %s applied", cs[:12])
        self._save()

    def apply(self, raw: str, cs: str, plan_type: str, max_failures: int) -> None:
        attempt = self.state.failure_count + 1 if self.state.failed_checksum == cs else 1
        snapshot = replace(self.state)
        recorded = False

        def before_reboot(so_far: planlib.Result) -> None:
            # The plan's work is done and a reboot comes next: record it as applied now, or a
            # power cut before the end of this method makes the machine run the plan again.
            nonlocal recorded
            self._record_applied(cs, so_far)
            recorded = True

        try:
            plan = self._adapt(planlib.parse(raw), plan_type)
            if plan_type == "reset" and self.managed:
                oem.write_file(
                    self.oem_dir / oem.OEM_RESET_MARK, f"{unix_date(self.now())}\n".encode(), 0o600
                )
            result = planlib.apply(plan, self.cfg.work_directory, attempt, self.root, before_reboot)
        except (planlib.PlanError, OSError) as e:
            result = planlib.Result(False, error=str(e))
        if result.ok:
            if not recorded:
                self._record_applied(cs, result)
        else:
            if recorded:  # the reboot instruction itself failed: the plan is not applied after all
                self.state = snapshot
            t = self.now()
            s = self.state
            s.last_apply_time = unix_date(t)
            if s.failed_checksum != cs:
                s.failure_count = 0
            s.failed_checksum = cs
            s.failed_output = planlib.pack_output({**result.outputs, "error": result.error})
            s.failure_count += 1
            s.last_failure = t
            log.error(
                "plan %s failed (%d/%s): %s", cs[:12], s.failure_count, max_failures or "∞", result.error
            )
            self._save()
        self._archive(raw, cs)

    def _archive(self, raw: str, cs: str) -> None:
        d = self.cfg.applied_plan_directory
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            (d / f"{int(self.now())}-{cs[:16]}.plan").write_text(raw)
            old = sorted(d.glob("*.plan"))
            for p in old[:-64]:  # rancher-system-agent keeps 64
                p.unlink()
        except OSError as e:
            log.warning("cannot archive plan: %s", e)

    # ------------------------------------------------------------------- loop
    def step(self) -> float:
        """One poll; returns how long to wait before the next one."""
        interval = self.cfg.poll_interval * (1 + random.uniform(-self.cfg.jitter, self.cfg.jitter))
        self.check_upgrade()
        try:
            doc = self.client.get_plan()
        except OperatorError as e:
            log.warning("cannot fetch the plan: %s", e)
            return interval
        if doc is not None:
            raw = str(doc.get("plan") or "")
            cs = planlib.checksum(raw)
            if doc.get("checksum") and doc["checksum"] != cs:
                log.warning("operator checksum %s differs from the plan's %s", doc["checksum"], cs)
            try:
                self.plan = planlib.parse(raw)
            except planlib.PlanError:
                self.plan = {}
            max_failures = int(doc.get("maxFailures") or 0)
            wait = self._due(cs, max_failures)
            if wait == 0:
                self.apply(raw, cs, str(doc.get("planType") or ""), max_failures)
                self.report(force=True)
            elif wait > 0:
                interval = min(interval, wait)
        changed = planlib.run_periodic(self.plan, self.periodic, self.cfg.work_directory)
        changed |= planlib.run_probes(self.plan, self.probes)
        self.report(force=changed)
        if self.plan.get("probes"):
            interval = min(interval, 5.0)  # rancher-system-agent requeues after 5 s for probes
        return interval

    def _due(self, cs: str, max_failures: int) -> float:
        """0: apply now; >0: seconds until a retry; <0: nothing to do."""
        s = self.state
        if not cs or cs == s.applied_checksum or cs == s.terminal_failure:
            return -1
        if cs == s.failed_checksum:
            if max_failures and s.failure_count >= max_failures:
                return -1
            left = self.cfg.retry_cooldown - (self.now() - s.last_failure)
            return left if left > 0 else 0
        return 0

    def run_forever(self) -> None:
        sd_notify("READY=1")
        while True:
            delay = self.step()
            self.wait(max(delay, 1.0))

    def wait(self, delay: float) -> None:
        """Until the next poll; through the Secret API, until the plan Secret changes (a watch,
        as rancher-system-agent), at most ``delay`` seconds."""
        if not isinstance(self.client, SecretClient):
            time.sleep(delay)
            return
        started = self.now()
        try:
            if self.client.wait_for_change(delay):
                return
        except OperatorError as e:
            log.warning("cannot watch the plan secret: %s", e)
        # a watch refused, broken or ended early by the server must not become a busy loop
        time.sleep(max(delay - (self.now() - started), 0))


def wait_for_connection(cfg: AgentConfig) -> Connection | KubeConnection:
    """The connection file may arrive later (unmanaged hosts register after boot). Ours has a
    url; rancher-system-agent's ``{kubeConfig, namespace, secretName}`` is read as that."""
    notified = False
    while True:
        if cfg.connection_info_file.exists():
            if is_kube_connection(cfg.connection_info_file):
                return KubeConnection.load(cfg.connection_info_file)
            return Connection.load(cfg.connection_info_file)
        if not notified:
            sd_notify("READY=1\nSTATUS=waiting for " + str(cfg.connection_info_file))
            notified = True
        time.sleep(10)


def wait_for_config(path: Path | None) -> None:
    """An OS installed without registration (build-disk) has no agent config: report ready (the
    boot is fine) and wait, rather than fail and make the boot check reboot the machine."""
    from elemental_register.agent.config import DEFAULT_CONFIG

    p = path or Path(os.environ.get("CATTLE_AGENT_CONFIG", DEFAULT_CONFIG))
    if p.exists():
        return
    sd_notify(f"READY=1\nSTATUS=waiting for {p}")
    while not p.exists():
        time.sleep(10)
