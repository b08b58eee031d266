"""`elemental install|upgrade|reset|build-disk|setup|status|bless`: the installer's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from elemental_common.errors import die, entry_point
from elemental_common.log import setup_logging
from elemental_register.installer import bless, build_disk, disk, install, reset, system, upgrade


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
    ap.add_argument("-d", "--debug", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("install", help="install onto a disk (config: the registration Config YAML)")
    p.add_argument(
        "--config", help="YAML with elemental.install (and registration, system-agent, cloud-config)"
    )
    p.add_argument("--device", help="overrides install.device")
    p.add_argument(
        "--system", help="overrides install.system-uri (oci:<dir>:<tag>, docker://ref, dir:<path>)"
    )
    p.add_argument("--reboot", action="store_true")
    p.add_argument("--poweroff", action="store_true")

    p = sub.add_parser("upgrade", help="write a new OS into the inactive slot and boot it next")
    p.add_argument("--system", required=True)
    p.add_argument("--recovery", action="store_true", help="also replace the recovery image")
    p.add_argument("--reboot", action="store_true")

    p = sub.add_parser("reset", help="from recovery: wipe and restore slot A from recovery")
    p.add_argument("--config", help="YAML with elemental.reset (default: /oem/registration/config.yaml)")
    p.add_argument("--force", action="store_true", help="allow outside recovery (tests)")

    p = sub.add_parser("build-disk", help="make a bootable raw disk image of the installed layout")
    p.add_argument("--system", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--size", default="8G", help="disk size (e.g. 4G, 8Gi)")
    p.add_argument("--config", help="optional registration Config to embed in COS_OEM")

    sub.add_parser("setup", help="boot-time: copy OEM files into place, apply cloud-config")
    sub.add_parser("status", help="print slots and the last upgrade's outcome")
    sub.add_parser("bless", help="mark the booted counted entry good (when systemd-bless-boot is absent)")

    args = ap.parse_args(argv)
    setup_logging(args.debug)
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "install":
        cfg = _load_config(args.config)
        el = cfg.setdefault("elemental", {})
        inst = el.setdefault("install", {})
        for key, val in (("device", args.device), ("system-uri", args.system)):
            if val:
                inst[key] = val
        inst["reboot"] = inst.get("reboot") or args.reboot
        inst["poweroff"] = inst.get("poweroff") or args.poweroff
        dev = install.install(cfg, _progress)
        print(f"installed on {dev}")
    elif args.cmd == "upgrade":
        slot = upgrade.upgrade(args.system, _progress, recovery=args.recovery)
        print(f"slot {slot.upper()} boots next")
        if args.reboot:
            system.power({"reboot": True})
    elif args.cmd == "reset":
        cfg = _load_config(args.config or "/oem/registration/config.yaml")
        reset.reset(cfg, _progress, force=args.force)
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

        from elemental_register.installer import oem

        st = oem.load_system_state(Path("/oem"))
        out = upgrade.upgrade_outcome(st, system.booted_slot(), system.boot_id())
        print(
            json.dumps(
                {
                    "booted": system.booted_slot(),
                    "slots": st.get("slots"),
                    "upgrade": out and {"outcome": out[0], "message": out[1]},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
