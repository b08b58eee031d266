"""Registration end to end: the real operator app + SQLite store in process, the register
client, and one real swtpm per simulated machine."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from helpers_registration import InProcessOperator, operator, swtpm, swtpm_factory  # noqa: F401
from websockets.exceptions import ConnectionClosed, InvalidStatus

from elemental_common import protocol as P
from elemental_register import hardware
from elemental_register.client import HardwareSource, RegistrationError, register, ws_url
from elemental_register.config import RegistrationConfig
from elemental_register.state import State
from elemental_register.tpm import TPM, Swtpm

# ruff: noqa: F811  (pytest fixtures imported from helpers_registration)

SMBIOS = {
    "System Information": {
        "Manufacturer": "QEMU",
        "Serial Number": "SN_0042",
        "UUID": "8a4d1c4e-0000-4d2b-9c1e-1234",
    },
    "Processor Information": {"Family": "Other"},
}


def source(
    serial: str = "SN_0042",
    uuid: str = "8a4d1c4e-1b2c-4d2b-9c1e-123456789abc",
    mac: str = "52:54:00:12:34:56",
    hostname: str = "edge-1",
) -> HardwareSource:
    smbios = {
        **SMBIOS,
        "System Information": {**SMBIOS["System Information"], "Serial Number": serial, "UUID": uuid},
    }
    return HardwareSource(
        smbios=lambda: smbios,
        system_data=lambda: {"Runtime": {"Hostname": hostname}, "CPU": {"TotalCores": "4"}},
        mac=lambda: mac,
        uuid=lambda: uuid,
    )


def cfg_for(op: InProcessOperator, reg: dict[str, Any], **kw: Any) -> RegistrationConfig:
    return RegistrationConfig(url=reg["status"]["registrationURL"], ca_cert=op.ca_pem.decode(), **kw)


def inventories(op: InProcessOperator) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = op.store.list("MachineInventory")
    return found


def test_first_and_re_registration(operator: InProcessOperator, swtpm: Swtpm) -> None:
    reg = operator.add_registration(
        machineName="node-${System Information/Serial Number}",
        machineInventoryLabels={
            "serial": "${System Information/Serial Number}",
            "rnd": "${Random/Hex/8}",
            "missing": "${Nope/Nothing}",
        },
        machineInventoryAnnotations={"cores": "${CPU/TotalCores}"},
        config={
            "elemental": {"install": {"device": "/dev/vda"}, "reset": {"enabled": True}},
            "cloud-config": {"users": [{"name": "root", "passwd": "x"}]},
        },
    )
    cfg = cfg_for(operator, reg, tpm_tcti=swtpm.tcti)
    first = register(cfg, State(), {"site": "${Runtime/Hostname}"}, source=source())
    assert not first.updated and first.state.initial_registration is not None
    assert first.config is not None
    [inv] = inventories(operator)
    meta = inv["metadata"]
    assert meta["name"] == "node-sn-0042"  # sanitised and lower-cased, '_' → '-'
    assert inv["spec"]["tpmHash"] == first.tpm_hash
    labels, ann = meta["labels"], meta["annotations"]
    assert labels["serial"] == "SN_0042" and labels["elemental.cattle.io/site"] == "edge-1"
    assert "missing" not in labels and len(labels["rnd"]) == 8
    assert ann["cores"] == "4" and ann["elemental.cattle.io/resettable"] == "true"
    assert (
        ann["elemental.cattle.io/auth"] == "tpm" and ann["elemental.cattle.io/registration-ip"] == "127.0.0.1"
    )

    config = first.config["elemental"]
    assert config["install"]["device"] == "/dev/vda" and config["reset"]["enabled"] is True
    assert (
        config["registration"]["url"] == cfg.url
        and config["registration"]["ca-cert"] == operator.ca_pem.decode()
    )
    agent = config["system-agent"]
    assert agent["secret-name"] == "node-sn-0042" and agent["secret-namespace"] == "fleet"
    assert agent["url"] == operator.ctx.public_url + "/k8s/clusters/local" and agent["strictTLSMode"] is True
    owner = operator.ctx.verify_agent_token(agent["token"])
    assert owner is not None and owner["metadata"]["uid"] == meta["uid"]
    assert first.config["cloud-config"] == {"users": [{"name": "root", "passwd": "x"}]}

    # Re-registration: Update, same inventory, name kept, random label sticky, labels refreshed.
    second = register(cfg, first.state, {"site": "moved"}, source=source(serial="OTHER"))
    assert second.updated and second.tpm_hash == first.tpm_hash
    [inv2] = inventories(operator)
    assert inv2["metadata"]["uid"] == meta["uid"] and inv2["metadata"]["name"] == "node-sn-0042"
    assert inv2["metadata"]["labels"]["rnd"] == labels["rnd"]
    assert inv2["metadata"]["labels"]["serial"] == "OTHER"
    assert inv2["metadata"]["labels"]["elemental.cattle.io/site"] == "moved"


def test_update_of_deleted_inventory(operator: InProcessOperator, swtpm: Swtpm) -> None:
    reg = operator.add_registration()
    cfg = cfg_for(operator, reg, tpm_tcti=swtpm.tcti)
    first = register(cfg, State(), source=source())
    [inv] = inventories(operator)
    operator.store.delete("MachineInventory", "fleet", inv["metadata"]["name"])
    while inventories(operator):  # finalizers are the controllers' business; force it here
        cur = inventories(operator)[0]
        cur["metadata"]["finalizers"] = []
        operator.store.update(cur)
        operator.store.delete("MachineInventory", "fleet", cur["metadata"]["name"])
    with pytest.raises(RegistrationError, match="MachineInventory not found"):
        register(cfg, first.state, source=source())
    assert inventories(operator) == []


def test_unknown_token_not_ready_wrong_ca_unreachable(operator: InProcessOperator, swtpm: Swtpm) -> None:
    reg = operator.add_registration()
    good = cfg_for(operator, reg, tpm_tcti=swtpm.tcti)
    bad_token = RegistrationConfig(
        url=good.url.rsplit("/", 1)[0] + "/nope", ca_cert=good.ca_cert, tpm_tcti=swtpm.tcti
    )
    with pytest.raises(RegistrationError, match=r"unknown to the operator \(404\)"):
        register(bad_token, State(), source=source())
    not_ready = operator.add_registration(name="later", ready=False)
    with pytest.raises(RegistrationError, match="404"):
        register(cfg_for(operator, not_ready, tpm_tcti=swtpm.tcti), State(), source=source())
    from elemental_operator.server.tls import make_ca

    other_ca, _ = make_ca("someone else")
    wrong = RegistrationConfig(url=good.url, ca_cert=other_ca.decode(), tpm_tcti=swtpm.tcti)
    with pytest.raises(RegistrationError, match="TLS certificate .* not trusted") as info:
        register(wrong, State(), source=source())
    assert not info.value.retryable
    closed = RegistrationConfig(url="https://127.0.0.1:1/elemental/registration/x", tpm_tcti=swtpm.tcti)
    with pytest.raises(RegistrationError, match="operator unreachable") as info:
        register(closed, State(), source=source())
    assert info.value.retryable and "\n" not in str(info.value)
    assert inventories(operator) == []


def test_registration_file_get(operator: InProcessOperator) -> None:
    import ssl
    import urllib.request

    reg = operator.add_registration(
        config={
            "elemental": {"registration": {"emulate-tpm": True, "emulated-tpm-seed": -1, "no-toolkit": True}}
        }
    )
    ctx = ssl.create_default_context(cadata=operator.ca_pem.decode())
    with urllib.request.urlopen(reg["status"]["registrationURL"], context=ctx, timeout=10) as resp:
        data = yaml.safe_load(resp.read())
    assert data == {
        "elemental": {
            "registration": {
                "url": reg["status"]["registrationURL"],
                "ca-cert": operator.ca_pem.decode(),
                "emulate-tpm": True,
                "emulated-tpm-seed": -1,
                "auth": "tpm",
            }
        }
    }


class SyncWS:
    """A websockets asyncio client driven from sync test code (the sync client's reader thread
    can stall on buffered TLS records, so it is not used anywhere)."""

    def __init__(self, url: str, header: str | None, ssl_ctx: Any) -> None:
        from websockets.asyncio.client import connect

        self.loop = asyncio.new_event_loop()
        headers = {"Authorization": header} if header else {}
        self.conn = self.loop.run_until_complete(
            connect(
                url,
                additional_headers=headers,
                ssl=ssl_ctx,
                compression=None,
                open_timeout=10,
                close_timeout=2,
                max_size=P.MAX_FRAME_SIZE,
            )
        )

    def recv(self, timeout: float = 10) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(self.conn.recv(), timeout))

    def send(self, data: bytes) -> None:
        self.loop.run_until_complete(self.conn.send(data))

    def __enter__(self) -> SyncWS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def _ws(op: InProcessOperator, reg: dict[str, Any], header: str | None) -> SyncWS:
    import ssl

    ctx = ssl.create_default_context(cadata=op.ca_pem.decode())
    return SyncWS(ws_url(reg["status"]["registrationURL"]), header, ctx)


def _recv_error(conn: Any) -> str:
    frame = conn.recv(timeout=10)
    msg_type, payload = P.decode_frame(frame)
    assert msg_type == P.MsgType.ERROR
    with pytest.raises(ConnectionClosed):
        conn.recv(timeout=10)
    return P.decode_error(payload)


def test_forged_and_replayed_answers(operator: InProcessOperator, swtpm: Swtpm) -> None:
    reg = operator.add_registration()
    with TPM(swtpm.tcti, ek_alg="ecc", ak_alg="ecc") as tpm:
        header = P.tpm_auth_header(tpm.attestation_data())
        # Forged: a made-up secret.
        with _ws(operator, reg, header) as conn:
            P.decode_challenge(conn.recv(timeout=10))
            conn.send(P.encode_challenge_response(b"\x00" * 32))
            assert _recv_error(conn) == "authentication failure"
        # A genuine answer, then replayed into a new session (new challenge secret).
        with _ws(operator, reg, header) as conn:
            answer = tpm.activate_credential(*P.decode_challenge(conn.recv(timeout=10)))
            conn.send(P.encode_challenge_response(answer))
            assert P.decode_frame(conn.recv(timeout=10))[0] == P.MsgType.READY
        with _ws(operator, reg, header) as conn:
            conn.recv(timeout=10)
            conn.send(P.encode_challenge_response(answer))
            assert _recv_error(conn) == "authentication failure"
    assert inventories(operator) == []


def test_ek_swapped_mid_flow(operator: InProcessOperator, swtpm_factory: Callable[[], Swtpm]) -> None:
    """A header with machine A's EK but machine B's AK: B cannot answer, A refuses B's AK."""
    reg = operator.add_registration()
    a, b = swtpm_factory(), swtpm_factory()
    with TPM(a.tcti, ek_alg="ecc", ak_alg="ecc") as ta, TPM(b.tcti, ek_alg="ecc", ak_alg="ecc") as tb:
        data_a, data_b = ta.attestation_data(), tb.attestation_data()
        swapped = P.AttestationData(ek_pem=data_a.ek_pem, ak=data_b.ak)
        for tpm in (tb, ta):
            with _ws(operator, reg, P.tpm_auth_header(swapped)) as conn:
                cred, secret = P.decode_challenge(conn.recv(timeout=10))
                try:
                    answer = tpm.activate_credential(cred, secret)
                except Exception:
                    answer = b"\x01" * 32
                conn.send(P.encode_challenge_response(answer))
                assert _recv_error(conn) == "authentication failure"
        # An AK whose attestation was tampered with never gets a challenge.
        forged_ak = P.AttestationParameters(
            data_b.ak.public, data_b.ak.create_data, data_b.ak.create_attestation, data_a.ak.create_signature
        )
        with _ws(operator, reg, P.tpm_auth_header(P.AttestationData(data_b.ek_pem, forged_ak))) as conn:
            assert _recv_error(conn) == "authentication failure"
    assert inventories(operator) == []


def test_emulated_tpm_fixed_seed_and_random(operator: InProcessOperator) -> None:
    reg = operator.add_registration()
    fixed = cfg_for(operator, reg, emulate_tpm=True, emulated_tpm_seed=42)
    r1 = register(fixed, State(), source=source())
    r2 = register(fixed, r1.state, source=source())
    assert r1.tpm_hash == r2.tpm_hash and r2.updated
    assert r1.state.emulated_tpm and r1.state.emulated_tpm_seed == 42
    assert inventories(operator)[0]["metadata"]["annotations"]["elemental.cattle.io/auth"] == "emulated-tpm"

    rnd = cfg_for(operator, reg, emulate_tpm=True, emulated_tpm_seed=-1)
    uuid = "8a4d1c4e-1b2c-4d2b-9c1e-123456789abc"
    r3 = register(rnd, State(), source=source(uuid=uuid))
    # A random seed made on the machine, never derived from the (public) SMBIOS UUID.
    assert r3.state.emulated_tpm_seed not in (hardware.smbios_uuid_seed(uuid), -1, 0)
    # The persisted seed is reused even if the UUID source changed.
    r4 = register(rnd, r3.state, source=source(uuid="00000000-0000-0000-0000-000000000001"))
    assert r4.tpm_hash == r3.tpm_hash != r1.tpm_hash and r4.updated
    assert len(inventories(operator)) == 2


@pytest.mark.parametrize("auth", ["mac", "sys-uuid"])
def test_plain_auth(operator: InProcessOperator, auth: str) -> None:
    import hashlib

    reg = operator.add_registration(config={"elemental": {"registration": {"auth": auth}}})
    cfg = cfg_for(operator, reg, auth=auth)
    result = register(cfg, State(), source=source())
    [inv] = inventories(operator)
    ident = "52:54:00:12:34:56" if auth == "mac" else "8a4d1c4e-1b2c-4d2b-9c1e-123456789abc"
    assert inv["spec"]["machineHash"] == hashlib.sha256(ident.encode()).hexdigest()
    assert inv["metadata"]["annotations"]["elemental.cattle.io/auth"] == auth
    again = register(cfg, result.state, source=source())
    assert again.updated and len(inventories(operator)) == 1
    # PLAIN identities are refused on a TPM registration.
    tpm_reg = operator.add_registration(name="tpm-only")
    with pytest.raises(RegistrationError, match="authentication failure"):
        register(cfg_for(operator, tpm_reg, auth=auth), State(), source=source(mac="52:54:00:99:99:99"))


def test_label_prefix_and_client_labels(operator: InProcessOperator) -> None:
    reg = operator.add_registration(
        labelPrefix="-",
        machineInventoryLabels={"owner": "ops"},
        config={"elemental": {"registration": {"auth": "mac"}}},
    )
    register(
        cfg_for(operator, reg, auth="mac", no_toolkit=True),
        State(),
        {"owner": "client", "zone": "a b/c", "bad key!": "x"},
        source=source(),
    )
    [inv] = inventories(operator)
    labels, ann = inv["metadata"]["labels"], inv["metadata"]["annotations"]
    assert labels == {"owner": "ops", "zone": "a-b-c"}  # registration labels win; invalid keys skipped
    assert ann["os.unmanaged"] == "true" and ann["elemental.cattle.io/os.unmanaged"] == "true"


def test_duplicate_hash_is_one_inventory(operator: InProcessOperator) -> None:
    reg_a = operator.add_registration(name="a", machineName="a-${Random/Hex/4}")
    reg_b = operator.add_registration(name="b", namespace="other", machineName="b-${Random/Hex/4}")
    cfg = cfg_for(operator, reg_a, emulate_tpm=True, emulated_tpm_seed=7)
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(register(cfg, State(), source=source()))
        except RegistrationError as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(inventories(operator)) == 1
    assert any(not isinstance(r, Exception) for r in results)
    for r in results:
        if isinstance(r, Exception):
            assert "already exists" in str(r)
    # Another registration, same machine: the existing inventory is updated, not duplicated.
    register(cfg_for(operator, reg_b, emulate_tpm=True, emulated_tpm_seed=7), State(), source=source())
    [inv] = inventories(operator)
    assert inv["metadata"]["namespace"] == "fleet"


class QueueConn:
    """In-memory FrameConn: what the handler sees of a websocket, without the network."""

    def __init__(self, frames: list[bytes]) -> None:
        self.inbox = list(frames)
        self.outbox: list[bytes] = []

    async def recv(self) -> bytes:
        if not self.inbox:
            raise ConnectionError("closed")
        return self.inbox.pop(0)

    async def send(self, data: bytes) -> None:
        self.outbox.append(data)


def _random_frame(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.3:
        return bytes([rng.randint(13, 255)]) + rng.randbytes(rng.randint(0, 64))
    if kind < 0.35:
        return b""
    if kind < 0.45:  # plausible JSON with wrong shapes
        payload = json.dumps(rng.choice([[], 1, "x", {"a": 1}, {"a": {"b": [1, None]}}, None])).encode()
        return bytes([rng.choice([2, 3, 9, 11])]) + payload
    t = rng.choice([m for m in P.MsgType if m != P.MsgType.GET])
    return bytes([t]) + rng.randbytes(rng.randint(0, 200))


def test_garbage_frames_handler(operator: InProcessOperator) -> None:
    """Thousands of random frames straight into serve_registration: always an Error, never a crash."""
    import asyncio

    from elemental_operator.registration.handler import serve_registration

    reg = operator.add_registration(config={"elemental": {"registration": {"auth": "mac"}}})
    rng = random.Random(4321)
    header = P.plain_auth_header("52:54:00:00:00:02")
    frames = 0

    async def run() -> None:
        nonlocal frames
        while frames < 5000:
            batch = [_random_frame(rng) for _ in range(rng.randint(1, 6))]
            frames += len(batch)
            conn = QueueConn(batch)
            await serve_registration(conn, header, reg, operator.ctx, "192.0.2.1")
            assert conn.outbox[0] == bytes([P.MsgType.READY])
            for out in conn.outbox[1:]:
                assert P.decode_frame(out)[0] in (P.MsgType.READY, P.MsgType.VERSION, P.MsgType.ERROR)

    asyncio.run(run())
    assert inventories(operator) == []


def test_garbage_frames_keep_the_server_serving(operator: InProcessOperator) -> None:
    reg = operator.add_registration(config={"elemental": {"registration": {"auth": "mac"}}})
    rng = random.Random(1234)
    header = P.plain_auth_header("52:54:00:00:00:01")
    errors = 0
    for _ in range(150):
        with _ws(operator, reg, header) as conn:
            assert P.decode_frame(conn.recv(timeout=10))[0] == P.MsgType.READY
            try:
                for _ in range(rng.randint(1, 8)):
                    conn.send(_random_frame(rng))
                    if P.decode_frame(conn.recv(timeout=10))[0] == P.MsgType.ERROR:
                        errors += 1
                        break
            except ConnectionClosed:
                pass
    # Malformed auth headers too.
    for bad in (
        "Bearer TPM" + base64.b64encode(json.dumps({"EK": "AA==", "AK": {}}).encode()).decode(),
        "Bearer TPM%%%",
        "Bearer PLAIN",
        "Basic abc",
    ):
        with _ws(operator, reg, bad) as conn:
            assert "auth" in _recv_error(conn)
    # Oversized frame: refused by the transport or the handler, never accepted.
    with _ws(operator, reg, header) as conn:
        conn.recv(timeout=10)
        try:
            conn.send(bytes([P.MsgType.SMBIOS]) + b" " * (P.MAX_FRAME_SIZE + 10))
            assert P.decode_frame(conn.recv(timeout=10))[0] == P.MsgType.ERROR
        except (ConnectionClosed, InvalidStatus):
            pass
    assert errors > 50
    assert inventories(operator) == []
    # Still serving: a complete registration succeeds.
    register(cfg_for(operator, reg, auth="mac"), State(), source=source())
    assert len(inventories(operator)) == 1


@pytest.mark.parametrize("version", [P.MsgType.CONFIG, P.MsgType.NETWORK_CONFIG])
def test_config_yaml_with_cached_static_parts(operator: InProcessOperator, version: int) -> None:
    """The Config reply assembled from the per-registration cached YAML is byte for byte the
    YAML of the whole config, and a registration update (new resourceVersion) is seen."""
    from elemental_operator.registration import handler

    reg = operator.add_registration(
        machineName="m-1",
        config={
            "elemental": {
                "install": {"device": "/dev/vda", "debug": True, "config-urls": ["a", "b"]},
                "reset": {"enabled": True},
                "registration": {"auth": "tpm", "emulate-tpm": True, "emulated-tpm-seed": 5},
            },
            "cloud-config": {"users": [{"name": "root", "passwd": "x" * 120}], "write_files": []},
            "network": {"configurator": "nmc", "config": {"dns": {"servers": ["1.1.1.1"]}}},
        },
    )
    inv = {
        "metadata": {"name": "m-1", "namespace": "fleet", "uid": "u-1"},
        "spec": {"tpmHash": "ab", "network": {"configurator": "nmc", "config": {"k": "v"}}},
    }
    session = handler._Session(registration=reg, ctx=operator.ctx, identity=handler._Identity(auth="tpm"))
    session.version = version
    for _ in range(2):  # second round from the cache
        data = session.config_yaml(inv)
        assert data == P.encode_yaml(session.config(inv))
        assert yaml.safe_load(data) == session.config(inv)
    reg["spec"]["config"]["elemental"]["install"]["device"] = "/dev/sda"
    reg = operator.store.update(reg)
    session.registration = reg
    assert yaml.safe_load(session.config_yaml(inv))["elemental"]["install"]["device"] == "/dev/sda"
