"""elemental-register client: authenticate, send hardware data, receive the config.

The message sequence is Elemental's (pkg/register/register.go):
dial with ``Authorization`` → [TPM challenge] → Ready → Version → [Update] → SMBIOS →
SystemDataV2 → Annotations → [Labels] → Get → Config.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from elemental_common import protocol as P
from elemental_common.errors import Die
from elemental_register import hardware
from elemental_register.config import RegistrationConfig, ca_cert_pem
from elemental_register.state import State

log = logging.getLogger(__name__)

try:
    from importlib.metadata import version as _pkg_version

    REG_VERSION = _pkg_version("elemental-py")
except Exception:  # running from a source tree without metadata
    REG_VERSION = "0.0.0-dev"


class RegistrationError(Die):
    """A failed registration: the user-facing `Die`, plus whether backing off may help
    (``retryable``) and the operator's HTTP status when it answered with one."""

    def __init__(
        self, message: str, retryable: bool = False, hint: str = "", status: int | None = None
    ) -> None:
        super().__init__(message, hint)
        self.retryable = retryable
        self.status = status


@dataclass
class HardwareSource:
    """Where the client gets machine data; tests inject recorded data."""

    smbios: Callable[[], dict[str, Any]] = hardware.read_smbios
    system_data: Callable[[], dict[str, Any]] = hardware.system_data_v2
    mac: Callable[[], str] = hardware.lowest_mac
    uuid: Callable[[], str] = hardware.system_uuid
    root: str = "/"


@dataclass
class Result:
    config: dict[str, Any]
    state: State
    tpm_hash: str = ""
    updated: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def resolve_emulated_seed(cfg: RegistrationConfig, state: State) -> int:
    """Elemental's GetTPMSeed: reuse the seed persisted in the state file, else cfg's fixed seed;
    -1 (and 0) get a random seed made here and persisted by the caller. Never derived from SMBIOS:
    the UUID is public (it is in the default name m-<UUID>), so a UUID seed let anyone who knew
    it register as that machine (issue 11)."""
    if state.emulated_tpm and state.emulated_tpm_seed:
        return state.emulated_tpm_seed
    if cfg.emulated_tpm_seed not in (-1, 0):
        return cfg.emulated_tpm_seed
    return secrets.randbits(63) or 1


@contextmanager
def _tpm_session(cfg: RegistrationConfig, seed: int | None) -> Iterator[Any]:
    from elemental_register.tpm import TPM, Swtpm, TPMError

    try:
        if seed is None:
            with TPM(cfg.tpm_tcti, ak_alg=cfg.tpm_ak_alg) as tpm:
                yield tpm
        else:
            with Swtpm() as sw, TPM(sw.tcti, emulated_seed=seed, ak_alg=cfg.tpm_ak_alg) as tpm:
                yield tpm
    except TPMError as exc:
        raise RegistrationError(f"TPM: {exc}") from None


def _ssl_context(cfg: RegistrationConfig) -> ssl.SSLContext:
    pem = ca_cert_pem(cfg.ca_cert)
    if not pem:
        log.warning("no registration CA certificate configured: using the system trust store only")
    return _cached_ssl_context(pem)


@functools.lru_cache(maxsize=8)
def _cached_ssl_context(pem: str) -> ssl.SSLContext:
    # Loading the system trust store costs ~50 ms; periodic and simulated registrations reuse it.
    ctx = ssl.create_default_context()  # system pool, as Go's SystemCertPool
    if pem:
        ctx.load_verify_locations(cadata=pem)
    return ctx


def ws_url(url: str) -> str:
    # Elemental replaces the first "http" with "ws" (https → wss).
    return url.replace("http", "ws", 1) if url.startswith("http") else url


@asynccontextmanager
async def _connect(cfg: RegistrationConfig, header: str) -> AsyncIterator[Any]:
    """websockets' asyncio client (present in Debian's 14.x and newer). Not the sync client:
    its reader thread can stall on TLS records already buffered in the SSL object."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

    url = ws_url(cfg.url)
    kwargs: dict[str, Any] = {
        "additional_headers": {"Authorization": header},
        "open_timeout": P.DEADLINE_SECONDS,
        "close_timeout": 2,
        "max_size": P.MAX_FRAME_SIZE,
        "compression": None,
        "user_agent_header": f"elemental-register/{REG_VERSION}",
    }
    if url.startswith("wss://"):
        kwargs["ssl"] = _ssl_context(cfg)
    try:
        conn = await connect(url, **kwargs)
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = (exc.response.body or b"").decode(errors="replace").strip()
        if status == 404:
            raise RegistrationError(
                f"registration URL unknown to the operator (404): {cfg.url} "
                "(wrong or deleted registration token)",
                status=status,
            ) from None
        if status in (401, 403):
            raise RegistrationError(
                f"operator refused authentication ({status}): {body or 'unauthorized'}", status=status
            ) from None
        raise RegistrationError(
            f"operator answered HTTP {status}: {body}", retryable=status >= 500, status=status
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise RegistrationError(
            f"TLS certificate of {cfg.url} is not trusted ({exc.verify_message}): "
            "check the registration CA certificate (ca-cert / --registration-ca-cert)"
        ) from None
    except ssl.SSLError as exc:
        raise RegistrationError(f"TLS handshake with {cfg.url} failed: {exc}", retryable=True) from None
    except InvalidURI as exc:
        raise RegistrationError(f"invalid registration URL {cfg.url!r}: {exc}") from None
    except (socket.gaierror, ConnectionError, TimeoutError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise RegistrationError(f"operator unreachable at {cfg.url}: {reason}", retryable=True) from None
    except InvalidHandshake as exc:
        raise RegistrationError(f"websocket handshake with {cfg.url} failed: {exc}", retryable=True) from None
    try:
        yield conn
    finally:
        await conn.close()


def register(
    cfg: RegistrationConfig,
    state: State,
    labels: dict[str, str] | None = None,
    *,
    source: HardwareSource | None = None,
) -> Result:
    """One registration attempt. Returns the received config and the state to persist."""
    from websockets.exceptions import ConnectionClosed

    cfg.validate()
    src = source or HardwareSource()
    labels = dict(labels or {})
    new_state = State(state.initial_registration, state.emulated_tpm, state.emulated_tpm_seed)
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    tpm_ctx: Any = None
    auth_name = cfg.auth
    if cfg.auth == "tpm":
        seed = None
        if cfg.emulate_tpm:
            seed = resolve_emulated_seed(cfg, state)
            new_state.emulated_tpm, new_state.emulated_tpm_seed = True, seed
            auth_name = "emulated-tpm"
            log.info("Starting TPM emulation (seed %d)", seed)
        tpm_ctx = _tpm_session(cfg, seed)
    with tpm_ctx if tpm_ctx is not None else _nullcontext() as tpm:
        tpm_hash = ""
        try:
            if tpm is not None:
                header = P.tpm_auth_header(tpm.attestation_data())
                tpm_hash = tpm.ek().tpm_hash
                log.info("Using TPMHash %s to dial %s", tpm_hash, ws_url(cfg.url))
            elif cfg.auth == "mac":
                header = P.plain_auth_header(src.mac())
            else:
                header = P.plain_auth_header(src.uuid())
        except LookupError as exc:
            raise RegistrationError(f"cannot build {cfg.auth} identity: {exc}") from None
        timings["auth-token"] = time.monotonic() - t0

        async def exchange() -> tuple[dict[str, Any], bool]:
            async with _connect(cfg, header) as conn:
                return await _session(conn, cfg, state, labels, src, tpm, auth_name, timings, t0)

        try:
            config, updated = asyncio.run(exchange())
        except P.RemoteError as exc:
            msg = str(exc)
            if msg == P.MSG_INVENTORY_NOT_FOUND:
                raise RegistrationError(
                    "operator: MachineInventory not found — this machine was deleted from the operator "
                    "and must be reprovisioned (reset or reinstall)"
                ) from None
            raise RegistrationError(f"operator error: {msg}") from None
        except P.ProtocolError as exc:
            raise RegistrationError(f"protocol error: {exc}", retryable=True) from None
        except TimeoutError:
            raise RegistrationError("registration timed out (10 s deadline)", retryable=True) from None
        except ConnectionClosed as exc:
            raise RegistrationError(f"connection closed by the operator: {exc}", retryable=True) from None
    if new_state.initial_registration is None:
        new_state.initial_registration = datetime.datetime.now(datetime.UTC)
    timings["total"] = time.monotonic() - t0
    return Result(config=config, state=new_state, tpm_hash=tpm_hash, updated=updated, timings=timings)


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield None


async def _session(
    conn: Any,
    cfg: RegistrationConfig,
    state: State,
    labels: dict[str, str],
    src: HardwareSource,
    tpm: Any,
    auth_name: str,
    timings: dict[str, float],
    t0: float,
) -> tuple[dict[str, Any], bool]:
    from elemental_register.tpm import TPMError

    ch = P.ClientChannel(conn)
    if tpm is not None:
        # The challenge and its answer are raw frames, without a type byte.
        raw = await ch.recv_raw()
        if raw[:1] == bytes([P.MsgType.ERROR]):
            raise P.RemoteError(P.decode_error(raw[1:]))
        credential, secret = P.decode_challenge(raw)
        try:
            answer = tpm.activate_credential(credential, secret)
        except TPMError as exc:
            raise RegistrationError(f"TPM: {exc}") from None
        await ch.send_raw(P.encode_challenge_response(answer))
    await ch.expect(P.MsgType.READY)
    timings["authenticated"] = time.monotonic() - t0
    log.info("%s authentication successful", "TPM" if tpm is not None else auth_name)

    version = await ch.negotiate()
    log.debug("negotiated protocol version %d", version)
    updated = False
    if state.updatable:
        await ch.write(P.MsgType.UPDATE)
        await ch.expect(P.MsgType.READY)
        log.info("re-registration: updating the existing inventory")
        updated = True

    if not cfg.no_smbios:
        try:
            smbios = src.smbios()
        except Exception as exc:  # no SMBIOS (some VMs, ARM boards): templates just won't resolve
            log.warning("no SMBIOS data (dmidecode failed: %s); sending an empty map", exc)
            smbios = {}
        await ch.send_json(P.MsgType.SMBIOS, smbios)
        if version >= P.MsgType.SYSTEM_DATA_V2:
            await ch.send_json(P.MsgType.SYSTEM_DATA_V2, src.system_data())
    if version >= P.MsgType.ANNOTATIONS:
        local_ip = ""
        try:
            local_ip = str(conn.local_address[0])
        except Exception:
            pass
        ann = hardware.client_annotations(
            reg_version=REG_VERSION,
            auth=auth_name,
            registration_ip=local_ip,
            no_toolkit=cfg.no_toolkit,
            root=src.root,
        )
        await ch.send_json(P.MsgType.ANNOTATIONS, ann)
    if labels:
        await ch.send_json(P.MsgType.LABELS, labels)

    await ch.write(P.MsgType.GET)
    payload = await ch.expect(P.MsgType.CONFIG)
    timings["config"] = time.monotonic() - t0
    return P.decode_config(payload), updated


def register_with_retries(
    cfg: RegistrationConfig,
    state: State,
    labels: dict[str, str] | None = None,
    *,
    attempts: int | None = 5,
    initial_delay: float = 2.0,
    max_delay: float = 60.0,
    source: HardwareSource | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Result:
    """Retry retryable failures with exponential backoff; ``attempts=None`` retries forever."""
    delay = initial_delay
    attempt = 0
    while True:
        attempt += 1
        try:
            return register(cfg, state, labels, source=source)
        except RegistrationError as exc:
            if not exc.retryable or (attempts is not None and attempt >= attempts):
                raise
            log.warning("registration attempt %d failed: %s; retrying in %.0f s", attempt, exc, delay)
        sleep(delay)
        delay = min(delay * 2, max_delay)
