"""`elemental install|upgrade|reset|build-disk|setup|status|bless`: the installer's command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from elemental_common.errors import die, entry_point
from elemental_common.log import setup_logging
from elemental_common.run import run
from elemental_register.installer import (
    bless,
    build_disk,
    disk,
    install,
    oem,
    reset,
    system,
    toolkit,
    upgrade,
    yip,
)

log = logging.getLogger("elemental")


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        die(f"cannot read config {path}: {e}")
    if not isinstance(data, dict):
        die(f"{path}: expected a YAML mapping")
    return data


def _progress(stage: str, percent: int) -> None:
    print(f"[{percent:3d}%] {stage}", flush=True)


@entry_point("elemental")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="elemental", description="Install, upgrade and reset the Elemental OS")
    ap.add_argument("-d", dest="debug_short", action="store_true", help="debug logging")
    ap.add_argument("--debug", nargs="?", const="true", default=None, metavar="BOOL", help="debug logging")
    ap.add_argument("--config-dir", help=toolkit.ROOT_FLAGS["config-dir"])
    ap.add_argument("--logfile", help=toolkit.ROOT_FLAGS["logfile"])
    ap.add_argument("--quiet", nargs="?", const="true", help=toolkit.ROOT_FLAGS["quiet"], metavar="BOOL")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("install", help="install onto a disk (config: the registration Config YAML)")
    p.add_argument("target_arg", nargs="?", metavar="DEVICE", help="the disk (the toolkit's target)")
    p.add_argument(
        "--config", help="YAML with elemental.install (and registration, system-agent, cloud-config)"
    )
    p.add_argument("--device", help="overrides install.device (same as DEVICE)")
    toolkit.add_flags(p, "install")

    p = sub.add_parser("upgrade", help="write a new OS into the inactive slot and boot it next")
    toolkit.add_flags(p, "upgrade")

    p = sub.add_parser("reset", help="from recovery: wipe and restore slot A from recovery")
    p.add_argument("--config", help="YAML with elemental.reset (default: /oem/registration/config.yaml)")
    p.add_argument("--force", action="store_true", help="allow outside recovery (tests)")
    p.add_argument("--oem-dir", default="/oem", help="where COS_OEM is mounted (offline resets, tests)")
    p.add_argument("--esp", help="the ESP's files as a directory (default: the mounted ESP)")
    toolkit.add_flags(p, "reset")

    p = sub.add_parser("build-disk", help="make a bootable raw disk image of the installed layout")
    p.add_argument("--system", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--size", default="8G", help="disk size (e.g. 4G, 8Gi)")
    p.add_argument("--config", help="optional registration Config to embed in COS_OEM")

    sub.add_parser("setup", help="boot-time: copy OEM files into place, apply cloud-config")
    p = sub.add_parser("status", help="print slots and the last upgrade's outcome")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also check every verity slot against its root hash, as dm-verity would (reads them)",
    )
    sub.add_parser("bless", help="mark the booted counted entry good (when systemd-bless-boot is absent)")

    args = ap.parse_args(toolkit.bool_flags_argv(sys.argv[1:] if argv is None else argv))
    debug = args.debug_short or toolkit.parse_bool(toolkit.root_option(args, "debug") or False, "--debug")
    setup_logging(debug)
    return _dispatch(args)


def _plan(args: argparse.Namespace) -> toolkit.Plan:
    flags = toolkit.flags_of(args, args.cmd)
    if args.cmd == "install" and (getattr(args, "target_arg", None) or getattr(args, "device", None)):
        flags["target"] = args.target_arg or args.device  # the toolkit: the argument wins
    for name in ("logfile", "quiet"):
        if toolkit.root_option(args, name):
            log.info("--%s: %s", name, toolkit.ROOT_FLAGS[name])
    plan = toolkit.resolve(args.cmd, flags, os.environ, toolkit.root_option(args, "config-dir"))
    toolkit.log_notes(plan)
    return plan


def _power_later(section: dict[str, Any], default_reboot: bool = False) -> dict[str, Any]:
    """Take the power action out of `section`: the toolkit powers off after its after-hooks."""
    power = {
        "reboot": bool(section.get("reboot", default_reboot)),
        "poweroff": bool(section.get("poweroff")),
    }
    section["reboot"], section["poweroff"] = False, False
    return power


@contextlib.contextmanager
def _mounted_partitions(device: str) -> Iterator[dict[str, Path]]:
    """COS_OEM and COS_PERSISTENT of a freshly installed disk, where the toolkit mounts them for
    its after-install hooks; the others (ESP, slots) are not mounted (see TOOLKIT_MOUNTS)."""
    nodes = {p.get("name"): p["node"] for p in disk.read_table(device)}
    with tempfile.TemporaryDirectory(prefix="elemental-hook-") as tmp, contextlib.ExitStack() as stack:
        remap: dict[str, Path] = {}
        for label, where in (
            (disk.LABEL_OEM, toolkit.TOOLKIT_OEM_MOUNT),
            (disk.LABEL_PERSISTENT, toolkit.TOOLKIT_PERSISTENT_MOUNT),
        ):
            if label not in nodes:
                continue
            mnt = Path(tmp) / label
            mnt.mkdir()
            run(["mount", nodes[label], str(mnt)])
            stack.callback(run, ["umount", str(mnt)], check=False)
            remap[where] = mnt
        yield remap


def _install(args: argparse.Namespace) -> None:
    cfg = _load_config(args.config)
    plan = _plan(args)
    el = cfg.setdefault("elemental", {})
    inst = el.setdefault("install", {})
    inst.update(plan.section)
    power = _power_later(inst)
    paths = toolkit.cloud_init_paths(plan)
    with tempfile.TemporaryDirectory(prefix="elemental-oem-files-") as files:
        # before-install: the toolkit has partitioned and mounted COS_OEM at /run/elemental/oem;
        # ours formats COS_OEM from a staging tree, so what goes there is collected first
        toolkit.run_hook(
            plan, "before-install", yip.Target(remap={toolkit.TOOLKIT_OEM_MOUNT: Path(files)}), paths
        )
        toolkit.lay_cloud_init(plan, Path(files))
        el[oem.OEM_FILES_KEY] = files
        dev = install.install(cfg, _progress)
    toolkit.skip_chroot_hook("after-install-chroot", paths)
    if yip.has_stage("after-install", paths) or yip.has_stage("post-install", paths):
        with _mounted_partitions(dev) as remap:
            target = yip.Target(remap=remap, blocked=toolkit.TOOLKIT_MOUNTS)
            toolkit.run_hook(plan, "after-install", target, paths)
            toolkit.run_hook(plan, "post-install", target, paths)
    print(f"installed on {dev}")
    system.power(power)


def _reset(args: argparse.Namespace) -> None:
    oem_dir = Path(args.oem_dir)
    cfg = _load_config(args.config or str(oem_dir / oem.OEM_REG_CONFIG))
    plan = _plan(args)
    el = cfg.setdefault("elemental", {})
    rs = el.setdefault("reset", {})
    rs.update(plan.section)
    power = _power_later(rs, default_reboot=True)  # ours reboots after a reset unless told not to
    paths = toolkit.cloud_init_paths(plan)
    with tempfile.TemporaryDirectory(prefix="elemental-oem-files-") as files:
        # before-reset: the toolkit runs it once COS_OEM is reformatted (reset-oem) and mounted
        # at /oem; ours reformats inside reset(), so the hook's /oem files are collected first
        toolkit.run_hook(plan, "before-reset", yip.Target(remap={"/oem": Path(files)}), paths)
        toolkit.lay_cloud_init(plan, Path(files))
        el[oem.OEM_FILES_KEY] = files
        reset.reset(
            cfg, _progress, force=args.force, oem_dir=oem_dir, esp=Path(args.esp) if args.esp else None
        )
    toolkit.skip_chroot_hook("after-reset-chroot", paths)
    target = yip.Target(remap={"/oem": oem_dir}, blocked=toolkit.TOOLKIT_MOUNTS)
    toolkit.run_hook(plan, "after-reset", target, paths)
    toolkit.run_hook(plan, "post-reset", target, paths)
    system.power(power)


def _upgrade(args: argparse.Namespace) -> None:
    plan = _plan(args)
    image = plan.section.get("system")
    if not image:
        die("no system image to upgrade to", "give --system <uri> or ELEMENTAL_UPGRADE_SYSTEM")
    paths = toolkit.cloud_init_paths(plan)
    target = yip.Target(blocked=toolkit.TOOLKIT_MOUNTS)
    toolkit.run_hook(plan, "before-upgrade", target, paths)
    slot = upgrade.upgrade(str(image), _progress, recovery=bool(plan.section.get("recovery")))
    toolkit.skip_chroot_hook("after-upgrade-chroot", paths)
    toolkit.run_hook(plan, "after-upgrade", target, paths)
    toolkit.run_hook(plan, "post-upgrade", target, paths)
    print(f"slot {slot.upper()} boots next")
    system.power(_power_later(plan.section))


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "install":
        _install(args)
    elif args.cmd == "upgrade":
        _upgrade(args)
    elif args.cmd == "reset":
        _reset(args)
    elif args.cmd == "build-disk":
        size = disk.parse_quantity(args.size if args.size[-1:] in "0123456789i" else args.size + "i")
        build_disk.build_disk(args.system, Path(args.output), size, _load_config(args.config), _progress)
        print(f"wrote {args.output}")
    elif args.cmd == "setup":
        from elemental_register.installer import setup

        setup.main()
    elif args.cmd == "bless":
        name = bless.bless()
        if name:
            print(f"blessed {name}")
    elif args.cmd == "status":
        import json

        from elemental_register.installer import oem, slot

        st = oem.load_system_state(Path("/oem"))
        out = upgrade.upgrade_outcome(st, system.booted_slot(), system.boot_id())
        report: dict[str, object] = {
            "booted": system.booted_slot(),
            "slots": st.get("slots"),
            "upgrade": out and {"outcome": out[0], "message": out[1]},
        }
        if args.verify:
            report["verity"] = slot.verify_slots(st)
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
