"""The toolkit's interface (toolkit.py) and the yip runner (yip.py): precedence of flags, ELEMENTAL_*
variables and the config file, names as elemental-toolkit spells them, the hooks' directives, and
Elemental's OEM files mapped onto ours."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from elemental_common.errors import Die
from elemental_register.installer import oem, toolkit, yip
from elemental_register.installer.cli import _plan

DATA = Path(__file__).parent / "data" / "toolkit"
DOCS = Path(__file__).parent.parent / "docs" / "installer.md"


def resolve(cmd: str, flags: dict[str, object] | None = None, env: dict[str, str] | None = None,
            config_dir: Path | None = None) -> toolkit.Plan:
    return toolkit.resolve(cmd, flags or {}, env or {}, str(config_dir) if config_dir else "/nonexistent")


def write_config(d: Path, main: dict[str, object], extra: dict[str, object] | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(main))
    if extra is not None:
        (d / "config.d").mkdir()
        (d / "config.d" / "10_extra.yaml").write_text(yaml.safe_dump(extra))
    return d


# ------------------------------------------------------------------------------ precedence


def test_flag_beats_env_beats_config_file(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "etc",
        {"reboot": False, "install": {"target": "/dev/from-file", "system": "dir:/file", "no-format": True}},
    )
    plan = resolve("install", {}, {}, cfg)
    assert plan.section == {
        "reboot": False, "device": "/dev/from-file", "system-uri": "dir:/file", "no-format": True
    }
    assert plan.sources["target"].endswith("config.yaml: install.target")
    env = {"ELEMENTAL_INSTALL_TARGET": "/dev/from-env", "ELEMENTAL_REBOOT": "true"}
    plan = resolve("install", {}, env, cfg)
    assert plan.section["device"] == "/dev/from-env" and plan.section["reboot"] is True
    assert plan.section["system-uri"] == "dir:/file"  # not in the environment: the file's
    plan = resolve("install", {"target": "/dev/from-flag", "reboot": "false"}, env, cfg)
    assert plan.section["device"] == "/dev/from-flag" and plan.section["reboot"] is False
    assert plan.sources["reboot"] == "--reboot"


def test_unset_settings_are_absent_and_empty_variables_unset(tmp_path: Path) -> None:
    # the Go client sets every variable, most of them empty (ELEMENTAL_INSTALL_ISO=)
    plan = resolve("install", {}, {"ELEMENTAL_INSTALL_ISO": "", "ELEMENTAL_INSTALL_SYSTEM": ""})
    assert plan.section == {} and plan.values == {}
    cfg = write_config(tmp_path / "etc", {"install": {"system": "dir:/file"}})
    assert resolve("install", {}, {"ELEMENTAL_INSTALL_SYSTEM": ""}, cfg).section["system-uri"] == "dir:/file"


def test_config_file_places_as_the_toolkit(tmp_path: Path) -> None:
    """Run settings and the toolkit's Config fields at the top, a command's under its name."""
    cfg = write_config(tmp_path / "etc", {"target": "/dev/top", "cosign": True, "poweroff": True,
                                          "install": {"reboot": True}})
    plan = resolve("install", config_dir=cfg)
    assert plan.section == {"poweroff": True} and plan.values == {"poweroff": True, "cosign": True}


def test_config_d_overrides_config_yaml(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "etc",
        {"reset": {"reset-oem": True, "reset-persistent": True}},
        {"reset": {"reset-oem": False}},
    )
    assert resolve("reset", config_dir=cfg).section == {"reset-oem": False, "reset-persistent": True}


def test_reset_variables_have_the_toolkits_names() -> None:
    env = {"ELEMENTAL_RESET_OEM": "false", "ELEMENTAL_RESET_PERSISTENT": "1", "ELEMENTAL_POWEROFF": "True"}
    plan = resolve("reset", env=env)
    assert plan.section == {"reset-oem": False, "reset-persistent": True, "poweroff": True}


def test_every_variable_of_the_go_client_is_known() -> None:
    """What pkg/elementalcli sets is a setting here (or, for ELEMENTAL_INSTALL_TTY, which the
    toolkit itself does not read, said to be ignored), never an error."""
    for name, cmd in (("go-install.env", "install"), ("go-reset.env", "reset")):
        names = [line.split("=", 1)[0] for line in (DATA / name).read_text().splitlines()]
        known = {s.env_name(cmd) for s in toolkit.for_command(cmd)}
        assert set(names) - known <= {"ELEMENTAL_INSTALL_TTY"}, name
    plan = resolve("install", env={"ELEMENTAL_INSTALL_TTY": "ttyS0"})
    assert any("ELEMENTAL_INSTALL_TTY" in n and "ignored" in n for n in plan.notes)


def test_meaningless_settings_are_logged_not_errors(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "ELEMENTAL_SNAPSHOTTER_TYPE": "btrfs",
        "ELEMENTAL_SNAPSHOTTER_MAX_SNAPS": "4",
        "ELEMENTAL_EJECT_CD": "true",
        "ELEMENTAL_INSTALL_DISABLE_BOOT_ENTRY": "true",
        "ELEMENTAL_INSTALL_GRUB_ENTRY_NAME": "x",
        "ELEMENTAL_INSTALL_SNAPSHOT_LABELS": "a=b,c=d",
        "ELEMENTAL_INSTALL_FIRMWARE": "efi",
    }
    plan = resolve("install", env=env)
    assert plan.section == {}
    assert plan.values["snapshot-labels"] == {"a": "b", "c": "d"}
    with caplog.at_level(logging.INFO, logger="elemental.toolkit"):
        toolkit.log_notes(plan)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    for name in env:
        assert name in logged


def test_bad_values_are_errors() -> None:
    with pytest.raises(Die, match="mutually exclusive"):
        resolve("install", env={"ELEMENTAL_REBOOT": "true", "ELEMENTAL_POWEROFF": "true"})
    with pytest.raises(Die, match="not a boolean"):
        resolve("reset", env={"ELEMENTAL_RESET_OEM": "yes please"})
    with pytest.raises(Die, match="only 'efi'"):
        resolve("install", env={"ELEMENTAL_INSTALL_FIRMWARE": "bios"})


def test_system_uris() -> None:
    assert toolkit.system_uri("docker:registry.example/os:1") == "docker://registry.example/os:1"
    assert toolkit.system_uri("oci:registry.example/os:1") == "docker://registry.example/os:1"
    assert toolkit.system_uri("dir:/srv/os") == "dir:/srv/os"
    assert toolkit.system_uri("registry.example/os:1") == "registry.example/os:1"
    assert resolve("upgrade", env={"ELEMENTAL_UPGRADE_SYSTEM": "docker:r/os:2"}).section == {
        "system": "docker://r/os:2"
    }


def test_oci_layout_stays_ours(tmp_path: Path) -> None:
    assert toolkit.system_uri(f"oci:{tmp_path}:1.0") == f"oci:{tmp_path}:1.0"


def test_cloud_init_paths_lists_and_cmdline(tmp_path: Path) -> None:
    plan = resolve("install", env={"ELEMENTAL_CLOUD_INIT_PATHS": "/a,/b"})
    assert plan.cloud_init_paths == ["/a", "/b"]
    paths = toolkit.cloud_init_paths(plan, cmdline="quiet elemental.setup=/c cos.setup=/d x=y")
    assert paths == ["/system/oem", "/oem/", "/usr/local/cloud-config/", "/a", "/b", "/c", "/d"]


def parse(argv: list[str]) -> argparse.Namespace:
    """The CLI's parser up to its plan (the same code path as `elemental ...`)."""
    from elemental_register.installer import cli

    captured: dict[str, argparse.Namespace] = {}

    def grab(args: argparse.Namespace) -> int:
        captured["args"] = args
        return 0

    orig = cli._dispatch
    cli._dispatch = grab  # type: ignore[assignment]
    try:
        cli.main(argv)
    finally:
        cli._dispatch = orig  # type: ignore[assignment]
    return captured["args"]


def test_cli_flags_as_pflag(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("ELEMENTAL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ELEMENTAL_REBOOT", "true")
    monkeypatch.setenv("ELEMENTAL_INSTALL_TARGET", "/dev/vdb")
    args = parse(["--config-dir", "/nonexistent", "install", "--poweroff", "/dev/sda", "--reboot=false",
                  "--snapshotter.type", "btrfs", "--cloud-init-paths", "/a", "--cloud-init-paths", "/b,/c"])
    plan = _plan(args)
    # `--poweroff /dev/sda`: the flag and the device; --reboot=false beats ELEMENTAL_REBOOT
    assert plan.section == {"device": "/dev/sda", "poweroff": True, "reboot": False}
    assert plan.cloud_init_paths == ["/a", "/b", "/c"]
    args = parse(["upgrade", "--system", "docker:r/os:2", "--recovery"])
    assert _plan(args).section == {"system": "docker://r/os:2", "recovery": True, "reboot": True}
    args = parse(["reset", "--reset-oem", "--reset-persistent=false", "--force"])
    assert args.force is True
    assert _plan(args).section == {"reset-oem": True, "reset-persistent": False, "reboot": True}


# ------------------------------------------------------------------------------------ docs


def test_docs_list_every_setting() -> None:
    assert toolkit.table_markdown() in DOCS.read_text(), (
        "docs/installer.md's table differs from toolkit.SETTINGS: "
        "python -m elemental_register.installer.toolkit prints it"
    )


# --------------------------------------------------------------------------------- yip runner


def write_yip(d: Path, name: str, doc: dict[str, object]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return d


def test_yip_directives_in_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    d = write_yip(tmp_path / "ci", "10_a.yaml", {"stages": {
        "before-install": [{
            "name": "all of it",
            "commands": [f"cat {out}/d/f > {out}/d/copy"],  # files before commands, as yip
            "files": [{"path": f"{out}/d/f", "content": "aGk=", "encoding": "b64", "permissions": 0o640}],
            "directories": [{"path": f"{out}/d", "permissions": "0700"}],
            "environment": {"FOO": "bar"},
            "environment_file": f"{out}/env",
            "hostname": "nope",
        }],
        "before-install.after": [{"commands": [f"echo after >> {out}/order"]}],
        "before-install.before": [{"commands": [f"mkdir -p {out}; echo before >> {out}/order"]}],
        "after-install": [{"commands": [f"echo wrong >> {out}/order"]}],
    }})
    write_yip(d, "20_b.yaml", {"stages": {"before-install": [
        {"if": "false", "files": [{"path": f"{out}/never", "content": "x"}]},
        {"if": "true", "commands": [f"echo second >> {out}/order"]},
    ]}})
    with caplog.at_level(logging.WARNING, logger="elemental.yip"):
        report = yip.run_stage("before-install", [str(d), str(tmp_path / "missing")])
    assert report.errors == []
    assert (out / "order").read_text() == "before\nsecond\nafter\n"
    assert (out / "d/copy").read_text() == "hi"
    assert (out / "d/f").stat().st_mode & 0o777 == 0o640 and (out / "d").stat().st_mode & 0o777 == 0o700
    assert (out / "env").read_text() == 'FOO="bar"\n'
    assert not (out / "never").exists()
    assert "'hostname' is not supported" in caplog.text  # skipped, and said so


def test_yip_errors_are_collected_and_strict_fails(tmp_path: Path) -> None:
    d = write_yip(tmp_path / "ci", "a.yaml", {"stages": {"before-reset": [
        {"commands": ["exit 3", f"touch {tmp_path}/still"]},
    ]}})
    (d / "b.yaml").write_text("- not a mapping\n")
    report = yip.run_stage("before-reset", [str(d)])
    assert len(report.errors) == 2 and (tmp_path / "still").exists()
    plan = toolkit.Plan("reset", strict=True)
    with pytest.raises(Die, match="before-reset hook failed"):
        toolkit.run_hook(plan, "before-reset", yip.Target(), [str(d)])
    toolkit.run_hook(toolkit.Plan("reset"), "before-reset", yip.Target(), [str(d)])  # not strict: logged


def test_yip_remap_and_confinement(tmp_path: Path) -> None:
    t = yip.Target(remap={"/run/elemental/oem": tmp_path / "oem", "/oem": tmp_path / "o2"},
                   blocked=("/run/elemental/efi",))
    assert t.path("/run/elemental/oem/x.yaml") == tmp_path / "oem/x.yaml"
    assert t.path("/run/elemental/oem") == tmp_path / "oem"
    assert t.path("/oemx/y") == Path("/oemx/y")  # a prefix is a path component
    assert t.path("/run/elemental/efi/EFI/x") is None
    assert yip.Target(remap={"/oem": tmp_path}, confined=True).path("/etc/x") is None


# ----------------------------------------------------------------------------- OEM mapping


def test_go_hook_files_map_onto_our_oem(tmp_path: Path) -> None:
    """The Go client's before-install hook, run into a staging dir and mapped: every file lands
    where our installed OS reads it, nothing is written outside COS_OEM."""
    hooks = tmp_path / "ci"
    hooks.mkdir()
    (hooks / "elemental-before-hook.yaml").write_text((DATA / "elemental-before-hook.yaml").read_text())
    files = tmp_path / "files"
    files.mkdir()
    report = yip.run_stage(
        "before-install", [str(hooks)], yip.Target(remap={"/run/elemental/oem": files})
    )
    assert report.errors == [] and sorted(p.name for p in files.iterdir()) == [
        "elemental-cloud-init.yaml", "elemental-network.yaml", "elemental-registration.yaml",
        "elemental-state.yaml", "elemental-system-agent.yaml",
    ]
    o = tmp_path / "oem"
    o.mkdir()
    live = [oem.CONNECTION, oem.AGENT_CONFIG, oem.AGENT_ENVS, "/oem/registration/config.yaml"]
    existed = [Path(p).exists() for p in live]
    oem.oem_tree(o, {"elemental": {oem.OEM_FILES_KEY: str(files)}}, {})
    reg = yaml.safe_load((o / oem.OEM_REG_CONFIG).read_text())
    assert reg["elemental"]["registration"]["emulated-tpm-seed"] == 9
    assert yaml.safe_load((o / oem.OEM_REG_STATE).read_text())["emulatedTPMSeed"] == 9
    conn = json.loads((o / oem.OEM_AGENT / "elemental_connection.json").read_text())
    assert conn["secretName"] == "m-golden"
    assert (o / oem.OEM_AGENT / "envs").read_text() == 'CATTLE_AGENT_STRICT_VERIFY="true"'
    assert yaml.safe_load((o / oem.OEM_CLOUD_CONFIG).read_text()) == {
        "hostname": "edge-go", "runcmd": ["echo one"]
    }
    assert [Path(p).exists() for p in live] == existed  # nothing written to this host


def test_cloud_config_files_join_ours(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "90_custom.yaml").write_text("#cloud-config\nruncmd:\n- echo two\nhostname: h2\n")
    o = tmp_path / "oem"
    o.mkdir(mode=0o755)
    cfg = {
        "elemental": {oem.OEM_FILES_KEY: str(files)},
        "cloud-config": {"runcmd": ["echo one"], "hostname": "h1"},
    }
    oem.oem_tree(o, cfg, {})
    assert yaml.safe_load((o / oem.OEM_CLOUD_CONFIG).read_text()) == {
        "runcmd": ["echo one", "echo two"], "hostname": "h2"
    }
    assert o.stat().st_mode & 0o777 == 0o755  # COS_OEM's root is not the staging dir's mode
    assert (o / "90_custom.yaml").is_file()
