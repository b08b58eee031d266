"""The system agent against a small real aiohttp server speaking the operator's agent API (HTTPS)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from elemental_common.errors import Die
from elemental_operator.server import tls
from elemental_register.agent import plan as planlib
from elemental_register.agent.agent import Agent
from elemental_register.agent.client import OperatorClient
from elemental_register.agent.config import AgentConfig, Connection
from elemental_register.agent.k8s import KubeConnection
from elemental_register.installer import api, boot, oem, system

TOKEN = "agent-token"
REPO = Path(__file__).resolve().parent.parent


def make_tls(d: Path) -> tuple[str, Path, Path]:
    """A fresh CA (its PEM is what the agent trusts) and a localhost server certificate it signed."""
    ca_pem, ca_key = tls.make_ca("test-ca")
    cert, key = tls.make_server_cert(ca_pem, ca_key, ["localhost", "127.0.0.1"])
    (d / "tls.crt").write_bytes(cert + ca_pem)
    (d / "tls.key").write_bytes(key)
    return ca_pem.decode(), d / "tls.crt", d / "tls.key"


class FakeOperator:
    """Just the three agent endpoints, with the operator's contract."""

    def __init__(self) -> None:
        self.plan: str | None = None
        self.plan_type = ""
        self.max_failures = 0
        self.status: dict[str, Any] = {}
        self.posts: list[dict[str, Any]] = []
        self.progress: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        async def auth(req: web.Request) -> bool:
            return req.headers.get("Authorization") == f"Bearer {TOKEN}"

        async def get_plan(req: web.Request) -> web.Response:
            if not await auth(req):
                return web.json_response({"message": "no"}, status=401)
            if self.plan is None:
                return web.json_response({"message": "no plan yet"}, status=404)
            return web.json_response(
                {
                    "name": "m-1",
                    "namespace": "fleet-default",
                    "planType": self.plan_type,
                    "plan": self.plan,
                    "checksum": planlib.checksum(self.plan),
                    "maxFailures": self.max_failures,
                }
            )

        async def post_status(req: web.Request) -> web.Response:
            if not await auth(req):
                return web.json_response({"message": "no"}, status=401)
            body = await req.json()
            self.posts.append(body)
            self.status.update(body)
            return web.json_response({"status": "ok"})

        async def post_progress(req: web.Request) -> web.Response:
            self.progress.append(await req.json())
            return web.json_response({"status": "ok"})

        app = web.Application()
        app.router.add_get("/elemental/agent/v1/plan", get_plan)
        app.router.add_post("/elemental/agent/v1/plan/status", post_status)
        app.router.add_post("/elemental/agent/v1/progress", post_progress)
        return app


@pytest.fixture
def operator(tmp_path: Path) -> Iterator[tuple[FakeOperator, str, str]]:
    import ssl

    pem, crt, key = make_tls(tmp_path)
    fake = FakeOperator()
    loop = asyncio.new_event_loop()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    runner = web.AppRunner(fake.app())
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "localhost", 0, ssl_context=ctx)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    yield fake, f"https://localhost:{port}", pem
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


def install_agent(root: Path, url: str, pem: str) -> AgentConfig:
    config = {
        "elemental": {
            "registration": {"url": url + "/reg", "ca-cert": pem},
            "system-agent": {
                "url": url,
                "token": TOKEN,
                "secret-name": "m-1",
                "secret-namespace": "fleet-default",
            },
        }
    }
    api.install_unmanaged(config, root)
    cfgfile = root / "etc/rancher/elemental/agent/config.yaml"
    cfg = AgentConfig.load(cfgfile)
    # the files name absolute paths; re-root them for the test
    cfg.connection_info_file = root / str(cfg.connection_info_file).lstrip("/")
    cfg.work_directory = root / "var/lib/elemental/agent/work"
    cfg.applied_plan_directory = root / "var/lib/elemental/agent/applied"
    return cfg


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def make_agent(root: Path, url: str, pem: str, **kw: Any) -> tuple[Agent, Clock]:
    cfg = install_agent(root, url, pem)
    # The fake operator serves our original plan endpoint, which machines installed before the
    # switch to rancher-system-agent's connection file still use: give the agent that form.
    old_form = {"url": url, "token": TOKEN, "namespace": "fleet-default", "secretName": "m-1", "caCert": pem}
    cfg.connection_info_file.write_text(json.dumps(old_form))
    conn = Connection.load(cfg.connection_info_file)
    clock = Clock()
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/os-release").write_text("ID=debian\nIMAGE_VERSION=1.2.3\n")
    agent = Agent(cfg, OperatorClient(conn, strict=True), root=root, oem_dir=root / "oem", now=clock, **kw)
    return agent, clock


def plan_json(d: dict[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":")) + "\n"


def test_permission_check(tmp_path: Path) -> None:
    cfg = install_agent(tmp_path, "https://x", "")
    os.chmod(cfg.connection_info_file, 0o644)
    with pytest.raises(Die, match="group/other must have no access"):
        KubeConnection.load(cfg.connection_info_file)


def test_no_plan_reports_os_version(tmp_path: Path, operator: tuple[FakeOperator, str, str]) -> None:
    fake, url, pem = operator
    agent, _ = make_agent(tmp_path, url, pem, managed=False)
    assert agent.step() > 0
    assert fake.status["os-version"] == "1.2.3" and fake.status["applied-checksum"] == ""


def test_apply_once_then_skip_then_new_plan(tmp_path: Path, operator: tuple[FakeOperator, str, str]) -> None:
    fake, url, pem = operator
    agent, _ = make_agent(tmp_path, url, pem, managed=False)
    counter = tmp_path / "count"
    fake.plan = plan_json(
        {
            "files": [
                {"path": "/etc/motd", "content": base64.b64encode(b"hello\n").decode(), "permissions": "0644"}
            ],
            "instructions": [
                {
                    "name": "count",
                    "command": "/bin/sh",
                    "args": ["-c", f"echo x >> {counter}; echo ok"],
                    "saveOutput": True,
                }
            ],
        }
    )
    agent.step()
    cs = planlib.checksum(fake.plan)
    assert fake.status["applied-checksum"] == cs and fake.status["success-count"] == "1"
    assert planlib.unpack_output(fake.status["applied-output"]) == {"count": "ok\n"}
    assert (tmp_path / "etc/motd").read_text() == "hello\n"
    assert fake.status["last-apply-time"]
    agent.step()
    agent.step()
    assert counter.read_text() == "x\n"  # same checksum: skipped
    # a restarted agent remembers what it applied
    agent2, _ = make_agent(tmp_path, url, pem, managed=False)
    agent2.step()
    assert counter.read_text() == "x\n"
    fake.plan = plan_json(
        {"instructions": [{"name": "count", "command": "/bin/sh", "args": ["-c", f"echo y >> {counter}"]}]}
    )
    agent2.step()
    assert counter.read_text() == "x\ny\n" and fake.status["success-count"] == "2"
    assert len(list((tmp_path / "var/lib/elemental/agent/applied").glob("*.plan"))) == 2


def test_failed_plan_retries_after_cooldown_up_to_max(
    tmp_path: Path, operator: tuple[FakeOperator, str, str]
) -> None:
    fake, url, pem = operator
    agent, clock = make_agent(tmp_path, url, pem, managed=False)
    attempts = tmp_path / "attempts"
    fake.max_failures = 2
    fake.plan = plan_json(
        {
            "instructions": [
                {
                    "name": "flaky",
                    "command": "/bin/sh",
                    "args": [
                        "-c",
                        f'echo "$CATTLE_AGENT_ATTEMPT_NUMBER" >> {attempts}; echo nope >&2; exit 1',
                    ],
                }
            ]
        }
    )
    cs = planlib.checksum(fake.plan)
    agent.step()
    assert fake.status["failed-checksum"] == cs and fake.status["failure-count"] == "1"
    assert "nope" in planlib.unpack_output(fake.status["failed-output"])["error"]
    wait = agent.step()  # within the 30 s cooldown: not retried
    assert attempts.read_text() == "1\n" and 0 < wait <= 30
    clock.t += 31
    agent.step()
    assert attempts.read_text() == "1\n2\n" and fake.status["failure-count"] == "2"
    clock.t += 31
    agent.step()  # maxFailures reached
    assert attempts.read_text() == "1\n2\n"
    # fixing the plan (new checksum) applies it and clears the failure
    fake.plan = plan_json({"instructions": [{"name": "fixed", "command": "/bin/true"}]})
    agent.step()
    assert fake.status["applied-checksum"] == planlib.checksum(fake.plan)
    assert fake.status["failed-checksum"] == "" and fake.status["failure-count"] == "0"


def test_reset_plan_unmanaged_only_writes_marker(
    tmp_path: Path, operator: tuple[FakeOperator, str, str]
) -> None:
    fake, url, pem = operator
    agent, _ = make_agent(tmp_path, url, pem, managed=False)
    fake.plan_type = "reset"
    fake.plan = plan_json(
        {
            "files": [
                {
                    "path": "/var/lib/elemental/.unmanaged_reset",
                    "content": base64.b64encode(b"2026-01-01").decode(),
                    "permissions": "0600",
                }
            ],
            "instructions": [
                {"name": "reboot", "command": "/bin/sh", "args": ["-c", f"touch {tmp_path}/rebooted"]}
            ],
        }
    )
    agent.step()
    assert (tmp_path / "var/lib/elemental/.unmanaged_reset").read_text() == "2026-01-01"
    assert not (tmp_path / "rebooted").exists()
    assert fake.status["applied-checksum"] == planlib.checksum(fake.plan)


def test_reset_plan_managed_boots_recovery(
    tmp_path: Path, operator: tuple[FakeOperator, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Elemental's own reset plan (grub2-editenv) still boots recovery on our systemd-boot OS."""
    fake, url, pem = operator
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    for tool in ("bootctl", "shutdown"):
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        (bindir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    agent, _ = make_agent(tmp_path, url, pem, managed=True)
    fake.plan_type = "reset"
    fake.plan = plan_json(
        {
            "files": [
                {
                    "path": "/oem/reset-cloud-config.yaml",
                    "content": base64.b64encode(b"name: x\n").decode(),
                    "permissions": "0600",
                }
            ],
            "instructions": [
                {
                    "name": "configure next boot to recovery mode",
                    "command": "grub2-editenv",
                    "args": ["/oem/grubenv", "set", "next_entry=recovery"],
                },
                {"name": "schedule reboot", "command": "shutdown", "args": ["-r", "+1"]},
            ],
        }
    )
    agent.step()
    assert log.read_text() == "bootctl set-oneshot elemental-recovery.conf\nshutdown -r +1\n"
    assert (tmp_path / "oem/elemental/reset-requested").exists()
    assert (tmp_path / "oem/reset-cloud-config.yaml").exists()
    assert fake.status["applied-checksum"] == planlib.checksum(fake.plan)


def test_operator_reset_plan_agrees_with_the_os(
    tmp_path: Path, operator: tuple[FakeOperator, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Producer and consumer agree: the operator's reset plan for a managed OS starts a unit the
    OS image has (and enables), and says what our agent runs, so the agent runs it as written."""
    from elemental_operator.controllers.machineinventory import reset_plan

    fake, url, pem = operator
    inventory = {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineInventory",
        "metadata": {"name": "m1", "namespace": "fleet-default", "annotations": {}},
        "spec": {},
    }
    raw = reset_plan(inventory).decode()
    plan = planlib.parse(raw)
    [cc_file] = [f for f in plan["files"] if f["path"] == "/oem/reset-cloud-config.yaml"]
    cc = yaml.safe_load(base64.b64decode(cc_file["content"]))
    started = [
        cmd.split()[-1]
        for steps in cc["stages"].values()
        for step in steps
        for cmd in step.get("commands") or []
        if cmd.startswith("systemctl start ")
    ]
    assert started
    os_units = REPO / "overlays/os/usr/lib/systemd"
    presets = "".join(p.read_text() for p in (os_units / "system-preset").glob("*.preset"))
    for unit in started:
        unit = unit if "." in unit else f"{unit}.service"
        assert (os_units / "system" / unit).is_file(), f"the reset plan starts {unit}, which the OS lacks"
        assert f"enable {unit}\n" in presets

    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("bootctl", "shutdown"):
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        (bindir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    agent, _ = make_agent(tmp_path, url, pem, managed=True)
    assert agent._adapt(plan, "reset") == plan  # nothing to rewrite: the plan speaks systemd-boot
    fake.plan_type, fake.plan = "reset", raw
    agent.step()
    assert calls.read_text() == f"bootctl set-oneshot {boot.RECOVERY_ID}.conf\nshutdown -r +1\n"
    assert fake.status["applied-checksum"] == planlib.checksum(raw)


def test_plan_is_recorded_applied_before_its_reboot(
    tmp_path: Path, operator: tuple[FakeOperator, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut right after the reboot instruction must not make the machine run the plan again
    (measured: an upgrade then wrote the new OS into the fallback slot too). So by the time the
    reboot instruction runs, the state file on disk already says the plan is applied."""
    fake, url, pem = operator
    agent, _ = make_agent(tmp_path, url, pem, managed=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    seen = tmp_path / "state-at-reboot"
    exit_code = tmp_path / "shutdown-exit"
    exit_code.write_text("0")
    (bindir / "shutdown").write_text(
        f'#!/bin/sh\ncat {agent.state_path} > {seen} 2>/dev/null; exit "$(cat {exit_code})"\n'
    )
    (bindir / "shutdown").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    fake.plan_type = "upgrade"
    fake.plan = plan_json(
        {
            "instructions": [
                {"name": "os upgrade", "command": "/bin/true"},
                {"name": "schedule reboot", "command": "shutdown", "args": ["-r", "+1"]},
            ]
        }
    )
    cs = planlib.checksum(fake.plan)
    agent.step()
    assert json.loads(seen.read_text())["applied_checksum"] == cs
    assert fake.status["applied-checksum"] == cs
    # a reboot instruction that fails: the plan is not applied after all, and is retried
    exit_code.write_text("1")
    fake.plan = plan_json(
        {"instructions": [{"name": "schedule reboot", "command": "shutdown", "args": ["-r"]}]}
    )
    cs2 = planlib.checksum(fake.plan)
    agent.step()
    assert json.loads(seen.read_text())["applied_checksum"] == cs2  # recorded before it ran
    assert fake.status["applied-checksum"] == cs and fake.status["failed-checksum"] == cs2
    assert json.loads(agent.state_path.read_text())["applied_checksum"] == cs


def test_rolled_back_upgrade_is_reported_failed(
    tmp_path: Path, operator: tuple[FakeOperator, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url, pem = operator
    agent, _ = make_agent(tmp_path, url, pem, managed=True)
    marker = tmp_path / "upgraded"
    fake.plan_type = "upgrade"
    fake.plan = plan_json(
        {"instructions": [{"name": "os upgrade", "command": "/bin/sh", "args": ["-c", f"echo >> {marker}"]}]}
    )
    cs = planlib.checksum(fake.plan)
    monkeypatch.setattr(system, "booted_slot", lambda: "a")
    monkeypatch.setattr(system, "boot_id", lambda: "boot-1")
    agent.step()
    assert fake.status["applied-checksum"] == cs
    # what `elemental upgrade` records, then a reboot that came back on slot A
    oem.save_system_state(
        tmp_path / "oem",
        {
            "upgrade": {
                "target": "b",
                "from": "a",
                "version": "2.0",
                "source": "oci:x:2.0",
                "generation": 2,
                "time": 1,
                "boot_id": "boot-1",
            }
        },
    )
    agent.step()
    assert fake.status["applied-checksum"] == cs  # same boot: pending
    monkeypatch.setattr(system, "boot_id", lambda: "boot-2")
    agent.step()
    assert fake.status["failed-checksum"] == cs and fake.status["applied-checksum"] == ""
    assert "rolled back to slot A" in planlib.unpack_output(fake.status["failed-output"])["os upgrade"]
    agent.step()
    agent.step()
    assert marker.read_text() == "\n"  # the failed upgrade is not retried by itself


def test_wrong_ca_is_refused_in_strict_mode(tmp_path: Path, operator: tuple[FakeOperator, str, str]) -> None:
    _, url, _pem = operator
    other_pem, _, _ = make_tls(tmp_path)
    agent, _ = make_agent(tmp_path, url, other_pem, managed=False)
    assert agent.step() > 0  # logged, not raised
    assert agent.last_status == {}
