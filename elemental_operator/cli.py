"""``elemental-operator``: serve (HTTPS + controllers), gen-crds, gen-chart.

Every ``serve`` flag also reads ``ELEMENTAL_OPERATOR_<FLAG>`` (e.g. ELEMENTAL_OPERATOR_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import logging
import os
import secrets
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import yaml

from elemental_common import consts
from elemental_common.errors import die, entry_point
from elemental_operator.context import OperatorContext
from elemental_operator.server import guard, logfilter, tls
from elemental_operator.store.base import AlreadyExists, Conflict, NotFound, StorageFull, Store
from elemental_operator.store.sql import lease_identity

log = logging.getLogger("elemental_operator")

KEYS_NAMESPACE = "cattle-elemental-system"
KEYS_SECRET = "elemental-operator-keys"
DEFAULT_NAMESPACE = "fleet-default"


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("ELEMENTAL_OPERATOR_" + flag.upper().replace("-", "_"), default)


def default_registration() -> dict[str, Any]:
    return {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineRegistration",
        "metadata": {"name": "default", "namespace": DEFAULT_NAMESPACE},
        "spec": {
            "machineName": "m-${System Information/UUID}",
            "machineInventoryLabels": {
                "manufacturer": "${System Information/Manufacturer}",
                "productName": "${System Information/Product Name}",
                "serialNumber": "${System Information/Serial Number}",
                "machineUUID": "${System Information/UUID}",
            },
            "config": {
                "elemental": {
                    "install": {"device": "/dev/vda", "reboot": True},
                    "reset": {"enabled": True, "reset-persistent": True, "reset-oem": True, "reboot": True},
                    "registration": {"auth": "tpm"},
                }
            },
        },
    }


def load_keys(store: Store) -> dict[str, str]:
    """Shared secrets live in the database so every replica agrees: CA, agent HMAC key, admin token."""
    try:
        secret = store.get("Secret", KEYS_NAMESPACE, KEYS_SECRET)
    except NotFound:
        ca_cert, ca_key = tls.make_ca()
        values = {
            "ca.crt": ca_cert.decode(),
            "ca.key": ca_key.decode(),
            "agent-key": secrets.token_hex(32),
            "admin-token": secrets.token_urlsafe(32),
        }
        try:
            store.create(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "Opaque",
                    "metadata": {"name": KEYS_SECRET, "namespace": KEYS_NAMESPACE},
                    "stringData": values,
                }
            )
        except AlreadyExists:
            pass  # another replica won the race; use its keys
        secret = store.get("Secret", KEYS_NAMESPACE, KEYS_SECRET)
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def ensure_default_registration(store: Store) -> None:
    """Created once (remembered in the keys Secret), so deleting it later is respected."""
    secret = store.get("Secret", KEYS_NAMESPACE, KEYS_SECRET)
    if (secret.get("data") or {}).get("default-registration"):
        return
    try:
        store.create(default_registration())
    except AlreadyExists:
        pass
    secret.setdefault("data", {})["default-registration"] = base64.b64encode(b"created").decode()
    try:
        store.update(secret)
    except Conflict:
        pass


def _storage_hint(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full: free space (df -h) and start again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the state directory must be writable by the operator (--state-dir)"
    return ""


def _tls_context(args: argparse.Namespace, state: Path, keys: dict[str, str]) -> tuple[ssl.SSLContext, str]:
    if args.tls_cert and args.tls_key:
        ca_pem = Path(args.ca_cert).read_text() if args.ca_cert else Path(args.tls_cert).read_text()
        cert, key = Path(args.tls_cert), Path(args.tls_key)
    else:
        ca_pem = keys["ca.crt"]
        cert, key = state / "tls" / "server.crt", state / "tls" / "server.key"
        sans = tls.default_sans() + [s for s in (args.san or []) if s]
        host = args.public_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        if host and host not in sans:
            sans.append(host)
        if not (cert.exists() and key.exists() and tls.cert_covers(cert.read_bytes(), ca_pem.encode(), sans)):
            crt_pem, key_pem = tls.make_server_cert(ca_pem.encode(), keys["ca.key"].encode(), sans)
            tls.write_private(key, key_pem)
            tls.write_private(cert, crt_pem + ca_pem.encode())
    (state / "ca.crt").write_text(ca_pem)
    sslctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sslctx.load_cert_chain(cert, key)
    return sslctx, ca_pem


async def _write_registration_file(ctx: OperatorContext, path: Path, stop: asyncio.Event) -> None:
    """Keep <state>/registration.yaml equal to the default registration's file once it is Ready."""
    from elemental_operator.controllers.base import condition_true
    from elemental_operator.controllers.seedimage import client_registration_file

    while not stop.is_set():
        try:
            reg = await asyncio.to_thread(ctx.store.get, "MachineRegistration", DEFAULT_NAMESPACE, "default")
            if condition_true(reg, "Ready"):
                data = yaml.safe_dump(
                    await asyncio.to_thread(client_registration_file, reg, ctx), sort_keys=False
                )
                if not path.exists() or path.read_text() != data:
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(data)
                    tmp.replace(path)
                    log.info("wrote %s", path)
        except NotFound:
            pass
        except Exception:
            log.exception("writing %s", path)
        try:
            await asyncio.wait_for(stop.wait(), 2.0)
        except TimeoutError:
            pass


async def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from elemental_operator.controllers import Manager, all_controllers
    from elemental_operator.server.app import make_app
    from elemental_operator.store.sql import open_store

    fd_limit = guard.raise_fd_limit()
    guard.shrink_tls_buffers()
    # The state dir holds the database (admin token, CA key) and TLS keys: owner only, whatever
    # the caller's umask, and existing files from older versions are tightened too.
    os.umask(0o077)
    state = Path(args.state_dir)
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        state.chmod(0o700)
        for name in ("operator.db", "operator.db-wal", "operator.db-shm", "admin-token"):
            if (state / name).exists():
                (state / name).chmod(0o600)
    except OSError as exc:
        die(f"cannot prepare the state directory {state}: {exc.strerror}", _storage_hint(exc))
    db_url = args.database_url or f"sqlite:///{state / 'operator.db'}"
    try:
        store = await asyncio.to_thread(open_store, db_url)
        keys = await asyncio.to_thread(load_keys, store)
        await asyncio.to_thread(ensure_default_registration, store)
    except StorageFull as exc:
        die(f"cannot start: {exc}", f"free space on the disk holding {state} (df -h {state})")
    except OSError as exc:
        die(f"cannot start: {exc}", _storage_hint(exc))
    admin_token = args.admin_token or keys["admin-token"]
    tls.write_private(state / "admin-token", admin_token.encode())
    sslctx: ssl.SSLContext | None = None
    ca_pem = ""
    if not args.insecure_http:
        sslctx, ca_pem = _tls_context(args, state, keys)
    ctx = OperatorContext(
        store=store,
        public_url=args.public_url.rstrip("/"),
        ca_cert_pem=ca_pem,
        secret_key=keys["agent-key"].encode(),
    )
    if args.tpm_ca:
        ctx.tpm_ca_pem = Path(args.tpm_ca).read_text()

    manager = None
    if not args.no_controllers:
        ctrls = all_controllers(ctx, state, args.seedimage_command, args.seedimage_base or None)
        # An identity that lets a restart on the same host prove the old holder dead (SQLite).
        manager = Manager(ctx, ctrls, identity=lease_identity(), lease_ttl=args.lease_ttl)
        manager.start(leader_election=True)

    limits = guard.fit_to_fd_limit(
        guard.Limits(
            max_connections=args.max_connections,
            max_per_address=args.max_connections_per_address,
            header_timeout=args.header_timeout,
            handshake_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
        ),
        fd_limit,
    )
    conn_guard = guard.Guard(limits, tls=sslctx is not None)
    app = make_app(ctx, admin_token, state, conn_guard)
    runner = web.AppRunner(
        app,
        access_log=None if not args.access_log else logging.getLogger("aiohttp.access"),
        keepalive_timeout=limits.idle_timeout,
    )
    await runner.setup()
    host, _, port = args.listen.rpartition(":")
    sock = guard.listen(host.strip("[]") or "0.0.0.0", int(port), conn_guard)
    site = guard.GuardedSite(runner, sock, ssl_context=sslctx)
    await site.start()
    log.info(
        "serving %s on %s (public URL %s, database %s)",
        "HTTPS" if sslctx else "HTTP",
        args.listen,
        ctx.public_url,
        db_url.split("@")[-1],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    writer = asyncio.create_task(_write_registration_file(ctx, state / "registration.yaml", stop))
    await stop.wait()
    log.info("shutting down")
    await writer
    await runner.cleanup()
    if manager:
        await asyncio.to_thread(manager.stop)
    store.close()
    return 0


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the HTTPS server and (unless --no-controllers) the controllers")
    state_default = str(consts.state_dir())
    p.add_argument("--state-dir", default=_env("state-dir", state_default))
    p.add_argument(
        "--database-url", default=_env("database-url"), help="sqlite:///… (default) or postgresql://…"
    )
    p.add_argument("--listen", default=_env("listen", consts.DEFAULT_LISTEN))
    p.add_argument(
        "--public-url",
        default=_env("public-url", consts.DEFAULT_PUBLIC_URL),
        help="base URL machines use to reach this server",
    )
    p.add_argument("--tls-cert", default=_env("tls-cert"))
    p.add_argument("--tls-key", default=_env("tls-key"))
    p.add_argument("--ca-cert", default=_env("ca-cert"), help="CA PEM sent to clients with --tls-cert")
    p.add_argument(
        "--san",
        action="append",
        default=[s for s in (_env("san") or "").split(",") if s],
        help="extra subject alternative name for the generated server certificate",
    )
    p.add_argument("--admin-token", default=_env("admin-token"))
    p.add_argument("--tpm-ca", default=_env("tpm-ca"), help="PEM bundle of TPM manufacturer CAs")
    p.add_argument(
        "--no-controllers",
        action="store_true",
        default=(_env("no-controllers") or "") not in ("", "0", "false"),
    )
    p.add_argument(
        "--insecure-http",
        action="store_true",
        default=(_env("insecure-http") or "") not in ("", "0", "false"),
        help="plain HTTP (tests only)",
    )
    p.add_argument("--seedimage-command", default=_env("seedimage-command"))
    p.add_argument(
        "--seedimage-base",
        default=_env("seedimage-base"),
        help="base image of SeedImages without spec.baseImage: an image reference, an OCI layout, or a "
        "directory holding seed-image/ (default $OUT or ./out: what make iso publishes)",
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=float(_env("lease-ttl", "15") or 15),
        help="seconds a replica keeps the controller lease without renewing it",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=int(_env("max-connections", "1024") or 1024),
        help="open connections served at once (more get 503; capped by the open-file limit)",
    )
    p.add_argument(
        "--max-connections-per-address",
        type=int,
        default=int(_env("max-connections-per-address", "64") or 64),
        help="open connections from one source address",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=float(_env("header-timeout", "10") or 10),
        help="seconds from accept to a complete TLS handshake and first request header",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=float(_env("idle-timeout", "15") or 15),
        help="seconds an idle keep-alive connection stays open",
    )
    p.add_argument("--access-log", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", default=bool(_env("verbose")))


@entry_point("elemental-operator")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="elemental-operator")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_serve(sub)
    g = sub.add_parser("gen-crds", help="write the CustomResourceDefinitions as one YAML stream")
    g.add_argument("-o", "--output", default="-")
    h = sub.add_parser("gen-chart", help="write a Helm chart (CRDs + operator deployment) into a directory")
    h.add_argument("directory")
    h.add_argument("--image", default="elemental-operator:latest")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.cmd == "serve":
        logfilter.install()
        return asyncio.run(_serve(args))
    from elemental_operator.api import crds

    if args.cmd == "gen-crds":
        text = crds.crds_yaml()
        if args.output == "-":
            sys.stdout.write(text)
        else:
            Path(args.output).write_text(text)
        return 0
    crds.write_chart(Path(args.directory), image=args.image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
