"""elemental-register command line against the in-process operator."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers_registration import InProcessOperator, operator, swtpm, swtpm_factory  # noqa: F401

from elemental_register import cli, client
from elemental_register.tpm import Swtpm

# ruff: noqa: F811


@pytest.fixture(autouse=True)
def fake_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    src = client.HardwareSource(
        smbios=lambda: {
            "System Information": {"Serial Number": "CLI1", "UUID": "11111111-2222-3333-4444-555555555555"}
        },
        system_data=lambda: {"Runtime": {"Hostname": "cli-host"}},
        mac=lambda: "52:54:00:aa:bb:cc",
        uuid=lambda: "11111111-2222-3333-4444-555555555555",
    )
    monkeypatch.setattr(client, "HardwareSource", lambda: src)


def _files(op: InProcessOperator, tmp_path: Path, reg: dict[str, Any], **extra: Any) -> tuple[Path, Path]:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(op.ca_pem)
    conf = tmp_path / "config.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "elemental": {
                    "registration": {"url": reg["status"]["registrationURL"], "ca-cert": str(ca), **extra}
                }
            }
        )
    )
    return conf, tmp_path / "state" / "state.yaml"


def test_plain_run_and_reregistration(
    operator: InProcessOperator, swtpm: Swtpm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = operator.add_registration(machineName="${System Information/Serial Number}")
    conf, state = _files(operator, tmp_path, reg, **{"tpm-tcti": swtpm.tcti})
    labels = tmp_path / "labels.yaml"
    labels.write_text("zone: a\nrack: r1\n")
    caplog.set_level(logging.INFO)
    argv = [
        "--config-path",
        str(conf),
        "--state-path",
        str(state),
        "--local-labels-file",
        str(labels),
        "--label",
        "zone=b",
    ]
    assert cli.main(argv) == 0
    assert f"using registration file {conf}" in caplog.text
    assert state.exists() and (state.parent.stat().st_mode & 0o777) == 0o700
    saved = yaml.safe_load(state.read_text())
    assert saved["initialRegistration"] != "0001-01-01T00:00:00Z" and saved["emulatedTPM"] is False
    [inv] = operator.store.list("MachineInventory")
    assert inv["metadata"]["name"] == "cli1"
    assert inv["metadata"]["labels"] == {"elemental.cattle.io/zone": "b", "elemental.cattle.io/rack": "r1"}
    caplog.clear()
    assert cli.main(argv) == 0
    assert "registration successful (updated)" in caplog.text


def test_one_line_errors(
    operator: InProcessOperator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sleeps: list[float] = []
    real = client.register_with_retries
    monkeypatch.setattr(cli, "register_with_retries", lambda *a, **k: real(*a, **k, sleep=sleeps.append))
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "elemental: {registration: {url: 'https://127.0.0.1:1/elemental/registration/x', auth: mac}}\n"
    )
    capsys.readouterr()
    rc = cli.main(["--config-path", str(conf), "--state-path", str(tmp_path / "s.yaml")])
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert rc == 1 and sleeps == [2.0, 4.0, 8.0, 16.0]  # 5 attempts, exponential backoff
    assert errors == [errors[0]] and errors[0].startswith(
        "elemental-register: error: operator unreachable at https://127.0.0.1:1/"
    )
    # Unknown token: not retried.
    sleeps.clear()
    reg = operator.add_registration()
    conf.write_text(
        yaml.safe_dump(
            {
                "elemental": {
                    "registration": {
                        "url": reg["status"]["registrationURL"] + "x",
                        "ca-cert": operator.ca_pem.decode(),
                        "auth": "mac",
                    }
                }
            }
        )
    )
    assert cli.main(["--config-path", str(conf), "--state-path", str(tmp_path / "s.yaml")]) == 1
    assert sleeps == [] and "(404)" in capsys.readouterr().err


def test_failed_install_is_one_error_line(
    operator: InProcessOperator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`elemental-register --install` with an install that fails (the device does not exist):
    the real installer's `Die` ends as one error line and exit 1, never a Python traceback."""
    reg = operator.add_registration(
        config={
            "elemental": {
                "registration": {"auth": "mac"},
                "install": {"device": str(tmp_path / "no-such-disk")},
            }
        }
    )
    conf, state = _files(operator, tmp_path, reg, auth="mac")
    capsys.readouterr()
    rc = cli.main(["--install", "--config-path", str(conf), "--state-path", str(state)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert rc == 1
    assert len(errors) == 1 and errors[0].startswith("elemental-register: error: ")
    assert "no-such-disk" in errors[0]
    assert "Traceback" not in err


def test_install_hands_config_to_installer(
    operator: InProcessOperator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from elemental_register.installer import api as installer_api

    reg = operator.add_registration(config={"elemental": {"install": {"device": "/dev/vda"}}})
    conf, _ = _files(operator, tmp_path, reg, **{"emulate-tpm": True, "emulated-tpm-seed": -1})
    missing = tmp_path / "nothing.yaml"
    monkeypatch.setattr(cli, "INSTALL_CONFIG_PATHS", (str(missing), str(conf)))
    monkeypatch.setattr(cli, "INSTALL_STATE_PATH", str(tmp_path / "live-state.yaml"))
    seen: dict[str, Any] = {}

    def fake_install(config: dict[str, Any], progress: Any, *, state: Any = None) -> None:
        seen["config"], seen["state"] = config, state
        progress("partitioning", 10)
        progress("done", 100)

    monkeypatch.setattr(installer_api, "install", fake_install)
    caplog.set_level(logging.INFO)
    assert cli.main(["--install", "--disable-boot-entry"]) == 0
    assert f"using registration file {conf}" in caplog.text
    config = seen["config"]
    assert (
        config["elemental"]["install"]
        == {
            "device": "/dev/vda",
            "disable-boot-entry": True,
            "snapshotter": {"maxSnaps": 2, "type": "loopdevice"},
        }
        or config["elemental"]["install"]["device"] == "/dev/vda"
    )
    assert config["elemental"]["install"]["disable-boot-entry"] is True
    assert seen["state"]["emulatedTPM"] is True and seen["state"]["emulatedTPMSeed"] != -1
    # Progress reached the operator through the per-machine agent credential.
    [inv] = operator.store.list("MachineInventory")
    conds = {c["type"]: c for c in inv.get("status", {}).get("conditions", [])}
    assert conds["InstallProgress"]["status"] == "True"


def test_no_toolkit_install(
    operator: InProcessOperator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from elemental_register.installer import api as installer_api

    reg = operator.add_registration(config={"elemental": {"registration": {"auth": "mac"}}})
    conf, state = _files(operator, tmp_path, reg, auth="mac")
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(installer_api, "install_unmanaged", lambda config: seen.append(config))
    assert (
        cli.main(["--install", "--no-toolkit", "--config-path", str(conf), "--state-path", str(state)]) == 0
    )
    assert seen and seen[0]["elemental"]["system-agent"]["secret-name"]
    [inv] = operator.store.list("MachineInventory")
    assert inv["metadata"]["annotations"]["elemental.cattle.io/os.unmanaged"] == "true"


def test_dumpdata_formats(capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("labels", "yaml", "json", "json-compact"):
        assert cli.main(["dumpdata", "-f", fmt]) == 0
        out = capsys.readouterr().out
        assert "Runtime" in out
    assert cli.main(["version"]) == 0 and capsys.readouterr().out.startswith("elemental-register ")


def test_no_import_fallbacks_for_our_own_modules() -> None:
    """`try: import <our module> except ImportError` hid a broken installer behind "not available
    in this build" (exit 1, nothing else): our own modules are always in the wheel, so an
    ImportError of one is a bug that must surface, not a mode."""
    import ast

    root = Path(cli.__file__).resolve().parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Try):
                continue
            catches = {
                n.id
                for h in node.handlers
                for n in ast.walk(h.type or ast.Name(""))
                if isinstance(n, ast.Name)
            }
            imported = [
                i.module or "" for i in ast.walk(ast.Module(node.body, [])) if isinstance(i, ast.ImportFrom)
            ] + [
                a.name
                for i in ast.walk(ast.Module(node.body, []))
                if isinstance(i, ast.Import)
                for a in i.names
            ]
            if catches & {"ImportError", "ModuleNotFoundError"} and any(
                m.startswith("elemental_") for m in imported
            ):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found == []
