"""Plan application as rancher-system-agent does it: files, instructions, periodic, probes."""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from elemental_register.agent import plan as planlib


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_checksum_is_sha256_of_raw_plan() -> None:
    import hashlib

    raw = '{"files":[]}\n'
    assert planlib.checksum(raw) == hashlib.sha256(raw.encode()).hexdigest()


def test_files_modes_directories_delete(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/old").write_text("x")
    old_umask = os.umask(0o077)
    try:
        done = planlib.apply_files(
            [
                {
                    "path": "/etc/rancher/k3s/config.yaml.d/99-name.yaml",
                    "content": b64("node-name: m1\n"),
                    "permissions": "0644",
                },
                {
                    "path": "/var/lib/rancher/bootstrap.sh",
                    "content": b64("#!/bin/sh\n"),
                    "permissions": "0700",
                    "uid": os.getuid(),
                    "gid": os.getgid(),
                },
                {"path": "/opt/data", "directory": True, "permissions": "0750"},
                {"path": "/etc/default-mode", "content": b64("d")},
                {"path": "/etc/old", "action": "delete"},
            ],
            tmp_path,
        )
    finally:
        os.umask(old_umask)
    assert len(done) == 5
    f = tmp_path / "etc/rancher/k3s/config.yaml.d/99-name.yaml"
    assert f.read_text() == "node-name: m1\n" and f.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "var/lib/rancher/bootstrap.sh").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "opt/data").is_dir() and (tmp_path / "opt/data").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "etc/default-mode").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "etc/old").exists()


def test_relative_path_is_refused(tmp_path: Path) -> None:
    res = planlib.apply({"files": [{"path": "etc/x", "content": ""}]}, tmp_path / "work", root=tmp_path)
    assert not res.ok and "not absolute" in res.error


def test_instructions_env_args_output(tmp_path: Path) -> None:
    plan = {
        "instructions": [
            {
                "name": "hello",
                "command": "/bin/sh",
                "args": [
                    "-c",
                    'echo "$GREETING $CATTLE_AGENT_ATTEMPT_NUMBER"; '
                    'test "$PWD" = "$CATTLE_AGENT_EXECUTION_PWD"',
                ],
                "env": ["GREETING=hi"],
                "saveOutput": True,
            },
            {"name": "quiet", "command": "/bin/true"},
        ]
    }
    res = planlib.apply(plan, tmp_path / "work", attempt=2)
    assert res.ok, res.error
    assert res.outputs == {"hello": "hi 2\n"}
    assert list((tmp_path / "work").iterdir()) == []  # execution dirs are removed


def test_failing_instruction_stops_the_plan(tmp_path: Path) -> None:
    marker = tmp_path / "second-ran"
    plan = {
        "instructions": [
            {"name": "boom", "command": "/bin/sh", "args": ["-c", "echo out; echo bad >&2; exit 3"]},
            {"name": "after", "command": "/bin/touch", "args": [str(marker)]},
        ]
    }
    res = planlib.apply(plan, tmp_path / "work")
    assert not res.ok and "boom: exit 3: bad" in res.error
    assert res.outputs["boom"] == "out\nbad\n"
    assert not marker.exists()
    res = planlib.apply({"instructions": [{"name": "x", "command": "/does/not/exist"}]}, tmp_path / "w")
    assert not res.ok and "exit 127" in res.error


def test_instruction_output_is_logged_while_it_runs(tmp_path: Path) -> None:
    """An upgrade's progress lines reach the agent's log (journal, console) as they are printed,
    before the instruction ends: the e2e power cuts find the slot write by them."""
    import logging

    seen = threading.Event()
    lines: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            if "[ 40%] writing" in record.getMessage():
                seen.set()

    go = tmp_path / "go"
    script = f'echo "[ 40%] writing system slot B"; while [ ! -e {go} ]; do sleep 0.05; done; echo done >&2'
    plan = {"instructions": [{"name": "os upgrade", "command": "/bin/sh", "args": ["-c", script]}]}
    handler = Catch(logging.INFO)
    logger = logging.getLogger("elemental.agent")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        result: list[planlib.Result] = []
        runner = threading.Thread(target=lambda: result.append(planlib.apply(plan, tmp_path / "work")))
        runner.start()
        assert seen.wait(30), lines  # logged while the instruction still waits for `go`
        assert runner.is_alive()
        go.touch()
        runner.join(30)
        assert result and result[0].ok, result
        assert "instruction os upgrade: done" in lines
        # periodic instructions are not streamed (they would repeat in the log every period)
        lines.clear()
        planlib.run_periodic(
            {"periodicInstructions": [{"name": "tick", "command": "/bin/echo", "args": ["tick"]}]},
            {},
            tmp_path,
            now=1,
        )
        assert not [m for m in lines if m.endswith(": tick")], lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_periodic_instructions(tmp_path: Path) -> None:
    plan = {
        "periodicInstructions": [
            {"name": "date", "command": "/bin/echo", "args": ["tick"], "periodSeconds": 60},
            {"name": "fail", "command": "/bin/false", "saveStderrOutput": True},
        ]
    }
    states: dict[str, planlib.PeriodicState] = {}
    assert planlib.run_periodic(plan, states, tmp_path, now=1000)
    out = planlib.unpack_output(planlib.periodic_output(states))
    assert base64.b64decode(out["date"]["stdout"]) == b"tick\n" and out["date"]["exitCode"] == 0
    assert out["fail"]["failures"] == 1 and "lastFailedRunTime" in out["fail"]
    assert not planlib.run_periodic(plan, states, tmp_path, now=1030)  # not due yet
    planlib.run_periodic(plan, states, tmp_path, now=1061)
    assert states["date"].next_run == 1121


class _Handler(BaseHTTPRequestHandler):
    healthy = True

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200 if _Handler.healthy else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_url() -> object:
    srv = HTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/healthz"
    srv.shutdown()


def test_probes_thresholds(http_url: str) -> None:
    plan = {"probes": {"api": {"httpGet": {"url": http_url}, "failureThreshold": 2, "successThreshold": 1}}}
    states: dict[str, planlib.ProbeState] = {}
    assert planlib.run_probes(plan, states, now=0)
    assert planlib.probe_statuses(states)["api"] == {"healthy": True, "successCount": 1, "failureCount": 0}
    _Handler.healthy = False
    try:
        assert not planlib.run_probes(plan, states, now=1)  # one failure < threshold
        assert planlib.run_probes(plan, states, now=2)
        assert planlib.probe_statuses(states)["api"]["healthy"] is False
    finally:
        _Handler.healthy = True


def test_output_packing_roundtrip() -> None:
    data = {"a": "x" * 1000}
    assert planlib.unpack_output(planlib.pack_output(data)) == data
    assert json.loads(json.dumps(planlib.pack_output(data)))
