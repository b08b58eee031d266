"""elemental-toolkit's interface on our installer: its flags, ELEMENTAL_* variables and config file.

One table (SETTINGS) drives the parsing, the command line and the docs. Elemental's register
client runs `elemental install|reset` configured only by environment variables (pkg/elementalcli
in rancher/elemental-operator); the toolkit (rancher/elemental-toolkit cmd/, cmd/config) reads
them with viper: a flag that was given wins over the environment variable, which wins over the
config file (`<config-dir>/config.yaml` and `config.d/*.yaml`, the run settings at the top, the
command's under `install:`/`reset:`/`upgrade:`), which wins over the default. An empty variable
counts as unset (viper's default). Run settings are `ELEMENTAL_<KEY>`, a command's are
`ELEMENTAL_<CMD>_<KEY>`, with the toolkit's own names (constants.Get*KeyEnvMap).

Each setting maps onto our A/B layout, or is accepted and logged at info level when it has no
meaning here (snapshotter, GRUB, squashfs, cosign, ...), never an error.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from elemental_common.errors import die
from elemental_register.installer import yip

log = logging.getLogger("elemental.toolkit")

COMMANDS = ("install", "reset", "upgrade")
CONFIG_DIR = "/etc/elemental"  # the toolkit's constants.ConfigDir
# the toolkit's constants.GetCloudInitPaths(): always searched, before the configured ones
DEFAULT_CLOUD_INIT_PATHS = ("/system/oem", "/oem/", "/usr/local/cloud-config/")
TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool, which viper uses
FALSE = ("0", "f", "F", "FALSE", "false", "False")


@dataclass
class Plan:
    """What the settings ask of one command, in our terms."""

    cmd: str
    section: dict[str, Any] = field(default_factory=dict)  # our elemental.<cmd> keys
    cloud_init_paths: list[str] = field(default_factory=list)
    cloud_init: list[str] = field(default_factory=list)  # files laid into COS_OEM
    strict: bool = False
    values: dict[str, Any] = field(default_factory=dict)  # setting key -> value
    sources: dict[str, str] = field(default_factory=dict)  # setting key -> flag/env/config file
    notes: list[str] = field(default_factory=list)  # accepted, no effect here


Effect = Callable[[Plan, Any], None]


def to_section(key: str) -> Effect:
    def effect(plan: Plan, value: Any) -> None:
        plan.section[key] = value

    return effect


def no_effect(why: str) -> Effect:
    def effect(plan: Plan, value: Any) -> None:
        plan.notes.append(why)

    return effect


def only(allowed: str, why: str) -> Effect:
    """An enum of the toolkit with one value we support: that value is a no-op, others fail as
    the toolkit's own enum flag does."""

    def effect(plan: Plan, value: Any) -> None:
        if str(value) != allowed:
            die(f"{value!r} is not supported here: only {allowed!r}", why)
        plan.notes.append(why)

    return effect


def system_uri(uri: str) -> str:
    """The toolkit's image source syntax onto ours (source.parse): `docker:<ref>` and `oci:<ref>`
    name a registry image there; `oci:<dir>[:<tag>]` is an OCI layout here when the directory
    exists. `dir:` and bare references are the same in both; `file:` is refused by source.parse."""
    if uri.startswith("docker:") and not uri.startswith("docker://"):
        return "docker://" + uri[len("docker:") :]
    if uri.startswith("oci:") and not uri.startswith("oci://"):
        rest = uri[4:]
        path = rest.rpartition(":")[0] or rest
        return uri if Path(path).is_dir() or Path(rest).is_dir() else "docker://" + rest
    if uri.startswith("oci://"):
        return "docker://" + uri[len("oci://") :]
    return uri


def _system(plan: Plan, value: Any) -> None:
    key = "system" if plan.cmd == "upgrade" else "system-uri"
    if plan.cmd == "reset":
        plan.notes.append("reset restores slot A from COS_RECOVERY, not from another image")
        return
    plan.section[key] = system_uri(str(value))


def _recovery_system(plan: Plan, value: Any) -> None:
    plan.notes.append(
        "COS_RECOVERY always holds the system image (install) or is replaced with it (upgrade --recovery)"
    )


def _cloud_init(plan: Plan, value: Any) -> None:
    plan.cloud_init = list(value)


def _cloud_init_paths(plan: Plan, value: Any) -> None:
    plan.cloud_init_paths = list(value)


def _strict(plan: Plan, value: Any) -> None:
    plan.strict = bool(value)


def _docker_image(plan: Plan, value: Any) -> None:
    _system(plan, f"docker:{value}")


def _directory(plan: Plan, value: Any) -> None:
    _system(plan, f"dir:{value}")


@dataclass(frozen=True)
class Setting:
    """One toolkit setting: its viper key, the commands taking it, how it is spelled on the
    command line (flag), in the environment (env: the suffix after ELEMENTAL_[<CMD>_], None =
    no binding) and in the config file (run settings at the top, others under the command)."""

    key: str
    commands: tuple[str, ...]
    kind: str  # bool, str, int, list (comma-separated), map (k=v,...)
    effect: Effect
    here: str  # what it does here, for the docs
    env: str | None = None
    run: bool = False  # the toolkit's RunConfig/Config: ELEMENTAL_<ENV>, top of the config file
    flag: bool = True
    short: str | None = None
    env_commands: tuple[str, ...] | None = None  # when only some of the commands bind `env`

    def env_name(self, cmd: str) -> str | None:
        if self.env is None or cmd not in (self.env_commands or self.commands):
            return None
        return f"ELEMENTAL_{self.env}" if self.run else f"ELEMENTAL_{cmd.upper()}_{self.env}"

    @property
    def dest(self) -> str:
        return "tk_" + self.key.replace("-", "_").replace(".", "_")


ALL = COMMANDS
IR = ("install", "reset")
IU = ("install", "upgrade")
LOGGED_SNAP = "A/B slots on erofs, no snapshotter (loopdevice or btrfs) here"
LOGGED_GRUB = "systemd-boot, no GRUB: entry titles come from the image's os-release"

SETTINGS: tuple[Setting, ...] = (
    # run settings (the toolkit's RunConfig, GetRunKeyEnvMap)
    Setting("reboot", ALL, "bool", to_section("reboot"), "reboot when done", env="REBOOT", run=True),
    Setting("poweroff", ALL, "bool", to_section("poweroff"), "power off when done", env="POWEROFF", run=True),
    Setting(
        "cloud-init-paths", ALL, "list", _cloud_init_paths,
        "yip files or directories whose `before-<cmd>`, `after-<cmd>`, `post-<cmd>` stages run "
        "(after /system/oem, /oem/, /usr/local/cloud-config/)",
        env="CLOUD_INIT_PATHS", run=True,
    ),
    Setting("strict", ALL, "bool", _strict, "a failing hook fails the command", env="STRICT", run=True),
    Setting(
        "eject-cd", ("install",), "bool", no_effect("the seed medium is not ejected"),
        "accepted, logged: the seed is not ejected", env="EJECT_CD", run=True,
    ),
    Setting(
        "snapshotter.type", ("install",), "str", no_effect(LOGGED_SNAP),
        "accepted, logged: A/B slots, no snapshotter", env="SNAPSHOTTER_TYPE", run=True,
    ),
    Setting(
        "snapshotter.max-snaps", ("install",), "int", no_effect(LOGGED_SNAP),
        "accepted, logged: two slots", env="SNAPSHOTTER_MAX_SNAPS", run=True, flag=False,
    ),
    # install (InstallSpec, GetInstallKeyEnvMap); the target is also the positional DEVICE
    Setting(
        "target", ("install",), "str", to_section("device"), "`install.device`", env="TARGET", flag=False
    ),
    Setting(
        "system", ALL, "str", _system,
        "`install.system-uri` / the upgrade's image (`docker:` → `docker://`); reset: logged",
        env="SYSTEM",
    ),
    Setting(
        "recovery-system.uri", IU, "str", _recovery_system,
        "accepted, logged: recovery is the system image", env="RECOVERY_SYSTEM",
    ),
    Setting(
        "cloud-init", IR, "list", _cloud_init,
        "files copied into COS_OEM as `9<n>_custom.yaml`; a cloud-config one is applied at boot",
        env="CLOUD_INIT", short="-c",
    ),
    Setting("iso", ("install",), "str", to_section("iso"), "refused: the OS comes from the seed or --system",
            env="ISO", short="-i"),
    Setting(
        "firmware", ("install",), "str", only("efi", "EFI only, as the toolkit"), "`efi` only",
        env="FIRMWARE",
    ),
    Setting(
        "part-table", ("install",), "str", only("gpt", "GPT only, as the toolkit"), "`gpt` only",
        env="PART_TABLE",
    ),
    Setting(
        "no-format", ("install",), "bool", to_section("no-format"), "`install.no-format`", env="NO_FORMAT"
    ),
    Setting(
        "force", ("install",), "bool",
        no_effect("install always refuses a disk in use; force does not override it"),
        "accepted, logged: a disk in use is always refused",
    ),
    Setting(
        "disable-boot-entry", IR, "bool",
        no_effect("no EFI boot entry is ever written (EFI/BOOT/BOOTX64.EFI boots the disk)"),
        "accepted, logged: no NVRAM entry is written anyway", env="DISABLE_BOOT_ENTRY",
    ),
    Setting(
        "grub-entry-name", ALL, "str", no_effect(LOGGED_GRUB), "accepted, logged: systemd-boot",
        env="GRUB_ENTRY_NAME", flag=False, env_commands=IR,
    ),
    Setting(
        "snapshot-labels", ALL, "map", no_effect(LOGGED_SNAP), "accepted, logged: no snapshots",
        env="SNAPSHOT_LABELS",
    ),
    # reset (ResetSpec, GetResetKeyEnvMap)
    Setting(
        "reset-persistent", ("reset",), "bool", to_section("reset-persistent"),
        "`reset.reset-persistent`: reformat COS_PERSISTENT", env="PERSISTENT",
    ),
    Setting(
        "reset-oem", ("reset",), "bool", to_section("reset-oem"), "`reset.reset-oem`: reformat COS_OEM",
        env="OEM",
    ),
    # upgrade (UpgradeSpec, GetUpgradeKeyEnvMap)
    Setting("recovery", ("upgrade",), "bool", to_section("recovery"), "also replace COS_RECOVERY",
            env="RECOVERY"),
    Setting(
        "bootloader", ("upgrade",), "bool",
        no_effect("the upgrade writes the new slot's kernel, initrd and entry; systemd-boot stays"),
        "accepted, logged: entries are always written",
    ),
    # deprecated source flags, turned into `system`
    Setting("docker-image", ALL, "str", _docker_image, "deprecated: `--system docker:<image>`", short="-d"),
    Setting("directory", ALL, "str", _directory, "deprecated: `--system dir:<path>`"),
    # the toolkit's Config (top of the config file), flags only
    Setting("verify", ALL, "bool", no_effect("no mtree manifests; layers are checked by digest"),
            "accepted, logged: layer digests are always checked", run=True),
    Setting("tls-verify", ALL, "bool", no_effect("registry TLS is skopeo's or the system's policy"),
            "accepted, logged", run=True),
    Setting("cosign", ALL, "bool", no_effect("no cosign verification"), "accepted, logged", run=True),
    Setting("cosign-key", ALL, "str", no_effect("no cosign verification"), "accepted, logged", run=True),
    Setting("local", IU, "bool", no_effect("images come from the seed's layout or a registry"),
            "accepted, logged", run=True),
    Setting("squash-compression", IU, "list", no_effect("erofs slots: install.compression"),
            "accepted, logged: erofs, not squashfs", short="-x", run=True),
    Setting("squash-no-compression", IU, "bool", no_effect("erofs slots: install.compression"),
            "accepted, logged", run=True),
    Setting("platform", ("install",), "str", no_effect("the image's own platform is installed"),
            "accepted, logged", run=True),
    Setting("arch", ("install",), "str", no_effect("the image's own platform is installed"),
            "accepted, logged (deprecated there too)", run=True),
)

# root flags of the toolkit (no environment binding there either)
ROOT_FLAGS = {
    "debug": "debug logging (also `-d` before the command)",
    "config-dir": "the toolkit config directory (default /etc/elemental): config.yaml, config.d/*.yaml",
    "logfile": "accepted, logged: the log goes to stderr (the journal on the seed)",
    "quiet": "accepted, logged",
}


def for_command(cmd: str) -> list[Setting]:
    return [s for s in SETTINGS if cmd in s.commands]


def parse_bool(value: Any, what: str = "") -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip()
    if s in TRUE:
        return True
    if s in FALSE:
        return False
    die(f"{what}: {value!r} is not a boolean", "use true or false")


def convert(setting: Setting, value: Any, what: str) -> Any:
    """A value from a flag, the environment or the config file, as the toolkit decodes it
    (strings split on commas into lists, k=v pairs into maps)."""
    if setting.kind == "bool":
        return parse_bool(value, what)
    if setting.kind == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            die(f"{what}: {value!r} is not a number")
    if setting.kind == "list":
        items = value if isinstance(value, list) else [value]
        return [p.strip() for v in items for p in str(v).split(",") if p.strip()]
    if setting.kind == "map":
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        pairs = [p for p in str(value).split(",") if p]
        out = {}
        for p in pairs:
            k, sep, v = p.partition("=")
            if not sep:
                die(f"{what}: {p!r} is not key=value")
            out[k.strip()] = v.strip()
        return out
    return str(value)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def read_config_dir(config_dir: str | None) -> tuple[dict[str, Any], list[str]]:
    """The toolkit's config file: config.yaml, then config.d/*.yaml (walked in name order) merged
    over it; returns the merged mapping and the files read."""
    d = Path(config_dir or CONFIG_DIR)
    files = [d / "config.yaml"] if (d / "config.yaml").is_file() else []
    if (d / "config.d").is_dir():
        files += sorted(p for p in (d / "config.d").rglob("*.yaml") if p.is_file())
    data: dict[str, Any] = {}
    for f in files:
        try:
            doc = yaml.safe_load(f.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            die(f"cannot read the toolkit config {f}: {e}")
        if not isinstance(doc, dict):
            die(f"{f}: expected a YAML mapping")
        _merge(data, doc)
    return data, [str(f) for f in files]


def _lookup(data: dict[str, Any], key: str) -> Any:
    cur: Any = data
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def resolve(
    cmd: str,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_dir: str | None = None,
) -> Plan:
    """The settings of `cmd`: a given flag ({setting key: value}) wins over its environment
    variable, which wins over the config file; unset settings are absent from the plan."""
    plan = Plan(cmd)
    data, files = read_config_dir(config_dir)
    found = data.get(cmd)
    section: dict[str, Any] = found if isinstance(found, dict) else {}
    known = set()
    for s in for_command(cmd):
        env = s.env_name(cmd)
        if env:
            known.add(env)
        raw: Any = None
        if flags.get(s.key) is not None:
            raw, src = flags[s.key], f"--{s.key}"
        elif env and environ.get(env):  # viper: an empty variable is unset
            raw, src = environ[env], env
        else:
            val = _lookup(data if s.run else section, s.key)
            if val is not None:
                raw, src = val, f"{' '.join(files)}: {s.key if s.run else f'{cmd}.{s.key}'}"
        if raw is None:
            continue
        value = convert(s, raw, src)
        plan.values[s.key], plan.sources[s.key] = value, src
        before = len(plan.notes)
        s.effect(plan, value)
        for i in range(before, len(plan.notes)):
            plan.notes[i] = f"{src}={raw!r}: {plan.notes[i]}"
    if plan.section.get("reboot") and plan.section.get("poweroff"):
        die("'reboot' and 'poweroff' are mutually exclusive options", "set only one of them")
    prefix = f"ELEMENTAL_{cmd.upper()}_"
    for name, val in sorted(environ.items()):
        if name.startswith(prefix) and name not in known and val:
            plan.notes.append(f"{name}={val!r}: not a setting of the toolkit's {cmd}, ignored")
    return plan


def log_notes(plan: Plan) -> None:
    for key, src in plan.sources.items():
        log.debug("%s = %r (from %s)", key, plan.values[key], src)
    for note in plan.notes:
        log.info("%s", note)


# ----------------------------------------------------------------------------- command line


def _flag_names(s: Setting) -> list[str]:
    return [f"--{s.key}", *([s.short] if s.short else [])]


def add_flags(p: argparse.ArgumentParser, cmd: str) -> None:
    """The toolkit's flags of `cmd` (and its root flags, accepted after the command as cobra's
    persistent flags are); every default is None, so 'given' is 'not None'."""
    g = p.add_argument_group("elemental-toolkit flags (docs/installer.md, 'The toolkit's interface')")
    for s in for_command(cmd):
        if not s.flag:
            continue
        if s.kind == "bool":  # `--x` or `--x=false`, as pflag (see bool_flags_argv)
            g.add_argument(
                *_flag_names(s), dest=s.dest, nargs="?", const="true", default=None, metavar="BOOL",
                help=s.here,
            )
        elif s.kind in ("list", "map"):
            g.add_argument(
                *_flag_names(s), dest=s.dest, action="append", default=None, help=s.here,
                metavar="K=V,..." if s.kind == "map" else "A,B,...",
            )
        else:
            g.add_argument(*_flag_names(s), dest=s.dest, default=None, help=s.here, metavar="VALUE")
    for name, what in ROOT_FLAGS.items():
        kw: dict[str, Any] = {"nargs": "?", "const": "true"} if name in ("quiet", "debug") else {}
        g.add_argument(
            f"--{name}", dest=f"sub_{name.replace('-', '_')}", default=None, help=what, metavar="VALUE", **kw
        )


def bool_flags_argv(argv: list[str]) -> list[str]:
    """pflag's boolean flags take a value only as `--x=v`: `--reboot /dev/sda` is the flag and
    the device. argparse's optional value would swallow the device, so a bare boolean flag of
    the command (or --debug/--quiet) is spelled `--x=true` before parsing."""
    cmd = next((a for a in argv if a in COMMANDS), "")
    names = {f"--{s.key}" for s in for_command(cmd) if s.kind == "bool" and s.flag}
    names |= {"--debug", "--quiet"}
    return [f"{a}=true" if a in names else a for a in argv]


def flags_of(args: argparse.Namespace, cmd: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in for_command(cmd):
        val = getattr(args, s.dest, None)
        if val is not None:
            out[s.key] = ",".join(val) if s.kind in ("list", "map") else val
    return out


def root_option(args: argparse.Namespace, name: str) -> Any:
    """A root flag given before the command or after it (the latter wins, as in cobra)."""
    sub = getattr(args, f"sub_{name.replace('-', '_')}", None)
    return sub if sub is not None else getattr(args, name.replace("-", "_"), None)


# ------------------------------------------------------------------------------------ hooks

# The toolkit mounts the new disk's partitions under /run/elemental/ during install; Elemental's
# register client writes its OEM files through that mount (/oem during reset).
TOOLKIT_OEM_MOUNT = "/run/elemental/oem"
TOOLKIT_PERSISTENT_MOUNT = "/run/elemental/persistent"
TOOLKIT_MOUNTS = ("/run/elemental/efi", "/run/elemental/state", "/run/elemental/recovery")


def cloud_init_paths(plan: Plan, cmdline: str | None = None) -> list[str]:
    """Where the hooks' yip files are: the toolkit's defaults, then cloud-init-paths, then
    `elemental.setup=`/`cos.setup=` of the kernel command line (as its RunStage adds them)."""
    paths = [*DEFAULT_CLOUD_INIT_PATHS, *plan.cloud_init_paths]
    if cmdline is None:
        try:
            cmdline = Path("/proc/cmdline").read_text()
        except OSError:
            cmdline = ""
    for arg in cmdline.split():
        k, sep, v = arg.partition("=")
        if sep and k in ("elemental.setup", "cos.setup") and v:
            paths.append(v)
    return paths


def run_hook(plan: Plan, stage: str, target: yip.Target, paths: list[str]) -> yip.Report:
    """One of the toolkit's hooks: errors are logged, and fail the command only with strict."""
    log.info("running %s hook", stage)
    report = yip.run_stage(stage, paths, target)
    for line in report.done:
        log.info("%s: %s", stage, line)
    if report.errors:
        if plan.strict:
            die(f"{stage} hook failed: " + "; ".join(report.errors), "fix the yip file or drop --strict")
        log.warning("%s hook: errors ignored (no --strict): %s", stage, "; ".join(report.errors))
    return report


def skip_chroot_hook(stage: str, paths: list[str]) -> None:
    # the slots are read-only erofs images built before the disk is written: nothing can be
    # changed inside them afterwards, so a chroot hook has nowhere to run
    if yip.has_stage(stage, paths):
        log.warning("%s hook: not run, the system slots are read-only erofs images", stage)


def lay_cloud_init(plan: Plan, oem_files: Path) -> None:
    """`cloud-init` files go into COS_OEM as the toolkit names them (9<n>_custom.yaml)."""
    for i, src in enumerate(plan.cloud_init):
        if "://" in src:
            die(f"cloud-init {src}: only local files are supported here", "copy the file onto the seed")
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            die(f"cannot read cloud-init file {src}: {e}")
        dest = oem_files / f"9{i}_custom.yaml"
        dest.write_bytes(data)
        dest.chmod(0o600)


# ------------------------------------------------------------------------------------ docs


def table_markdown() -> str:
    """The table of docs/installer.md's section "The toolkit's interface" (a test keeps them equal)."""
    rows = [
        "| setting | flag | environment variable | commands | here |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        flag = ", ".join(f"`{f}`" for f in _flag_names(s)) if s.flag else "—"
        if s.key == "target":
            flag = "`DEVICE` (argument)"
        envs = sorted({e for c in s.commands if (e := s.env_name(c))})
        env = ", ".join(f"`{e}`" for e in envs) or "—"
        rows.append(f"| `{s.key}` | {flag} | {env} | {', '.join(s.commands)} | {s.here} |")
    for name, what in ROOT_FLAGS.items():
        rows.append(f"| `{name}` | `--{name}` | — | all | {what} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table_markdown(), end="")
