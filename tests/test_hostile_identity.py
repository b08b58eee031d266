"""Identity against hostile clients (issue 11 item 4): random emulated-TPM seeds, per-registration
TPM policy, the name/UUID collision rule, malformed AKs as clean protocol errors."""

# ruff: noqa: F811  (pytest fixtures imported from helpers_registration)

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest
from helpers_registration import InProcessOperator, operator, swtpm, swtpm_factory  # noqa: F401
from tpm2_pytss.types import TPMT_PUBLIC

from elemental_common import attestation as A
from elemental_common import protocol as P
from elemental_operator.registration.handler import NAME_CONFLICT, serve_registration
from elemental_register import hardware
from elemental_register.client import HardwareSource, RegistrationError, register
from elemental_register.config import RegistrationConfig
from elemental_register.state import State, load_state, save_state
from elemental_register.tpm import TPM, Swtpm

VICTIM_UUID = "8a4d1c4e-1b2c-4d2b-9c1e-123456789abc"


def source(uuid: str = VICTIM_UUID, serial: str = "SN1") -> HardwareSource:
    smbios = {"System Information": {"Manufacturer": "QEMU", "Serial Number": serial, "UUID": uuid}}
    return HardwareSource(
        smbios=lambda: smbios,
        system_data=lambda: {"Runtime": {"Hostname": "h"}},
        mac=lambda: "52:54:00:12:34:56",
        uuid=lambda: uuid,
    )


def cfg(op: InProcessOperator, reg: dict[str, Any], **kw: Any) -> RegistrationConfig:
    return RegistrationConfig(url=reg["status"]["registrationURL"], ca_cert=op.ca_pem.decode(), **kw)


def test_emulated_seed_minus_one_is_random_and_persisted(operator: InProcessOperator, tmp_path: Any) -> None:
    reg = operator.add_registration(machineName="m-${System Information/UUID}")
    rnd = cfg(operator, reg, emulate_tpm=True, emulated_tpm_seed=-1)
    victim = register(rnd, State(), source=source())
    # Knowing only the victim's UUID no longer gives its TPM identity.
    attacker = register(rnd, State(), source=source())
    assert attacker.tpm_hash != victim.tpm_hash
    assert victim.state.emulated_tpm_seed not in (hardware.smbios_uuid_seed(VICTIM_UUID), -1, 0)
    # The seed lives in the state file: the same machine keeps its identity.
    save_state(str(tmp_path / "state.yaml"), victim.state)
    again = register(rnd, load_state(str(tmp_path / "state.yaml")), source=source())
    assert again.tpm_hash == victim.tpm_hash and again.updated


def test_a_spoofed_uuid_cannot_lock_the_real_machine_out(operator: InProcessOperator) -> None:
    reg = operator.add_registration(machineName="m-${System Information/UUID}")
    spoofer = register(cfg(operator, reg, emulate_tpm=True, emulated_tpm_seed=11), State(), source=source())
    real = register(cfg(operator, reg, emulate_tpm=True, emulated_tpm_seed=12), State(), source=source())
    invs = {i["spec"]["tpmHash"]: i for i in operator.store.list("MachineInventory")}
    assert len(invs) == 2
    first, second = invs[spoofer.tpm_hash], invs[real.tpm_hash]
    assert first["metadata"]["name"] == f"m-{VICTIM_UUID}"
    assert second["metadata"]["name"].startswith(f"m-{VICTIM_UUID[:40]}")
    assert second["metadata"]["name"] != first["metadata"]["name"]
    assert second["metadata"]["annotations"][NAME_CONFLICT] == f"m-{VICTIM_UUID}"
    # Each keeps re-registering as itself; nobody's inventory was overwritten.
    assert register(cfg(operator, reg, emulate_tpm=True), real.state, source=source()).updated
    assert {i["metadata"]["uid"] for i in operator.store.list("MachineInventory")} == {
        first["metadata"]["uid"],
        second["metadata"]["uid"],
    }


def test_registration_refusing_emulated_tpms(operator: InProcessOperator, swtpm: Swtpm) -> None:
    reg = operator.add_registration(name="strict", tpm={"allowEmulated": False})
    with pytest.raises(RegistrationError, match="authentication failure|refuses emulated"):
        register(cfg(operator, reg, emulate_tpm=True, emulated_tpm_seed=5), State(), source=source())
    # A TPM without an EK certificate is refused too (only a certificate shows it is hardware).
    with pytest.raises(RegistrationError, match="authentication failure"):
        register(cfg(operator, reg, tpm_tcti=swtpm.tcti), State(), source=source())
    assert operator.store.list("MachineInventory") == []
    # The same TPM is welcome on a registration that allows it.
    lax = operator.add_registration(name="lax")
    assert register(cfg(operator, lax, tpm_tcti=swtpm.tcti), State(), source=source()).tpm_hash


def test_registration_requiring_an_ek_chain(operator: InProcessOperator, swtpm: Swtpm) -> None:
    from cryptography.hazmat.primitives import serialization
    from test_attestation import _ca

    _, ca = _ca()
    bundle = ca.public_bytes(serialization.Encoding.PEM).decode()
    reg = operator.add_registration(name="chained", tpm={"ekCABundle": bundle})
    with pytest.raises(RegistrationError, match="authentication failure"):
        register(cfg(operator, reg, tpm_tcti=swtpm.tcti), State(), source=source())
    assert operator.store.list("MachineInventory") == []


def _with_public(ak: P.AttestationParameters, change: Any) -> P.AttestationParameters:
    pub, _ = TPMT_PUBLIC.unmarshal(ak.public)
    change(pub)
    return dataclasses.replace(ak, public=bytes(pub.marshal()))


def _exponent(value: int) -> Any:
    def change(pub: Any) -> None:
        pub.parameters.rsaDetail.exponent = value

    return change


def _empty_modulus(pub: Any) -> None:
    pub.unique.rsa = b""


@pytest.mark.parametrize("change", [_exponent(1), _exponent(2), _exponent(4), _empty_modulus])
def test_malformed_ak_is_a_clean_protocol_error(
    operator: InProcessOperator, swtpm: Swtpm, change: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with TPM(swtpm.tcti, ek_alg="ecc", ak_alg="rsa") as tpm:
        data = tpm.attestation_data()
    bad = _with_public(data.ak, change)
    with pytest.raises(A.AttestationError):
        A.check_ak_parameters(bad)

    class Conn:
        sent: list[bytes] = []

        async def recv(self) -> bytes:
            raise ConnectionError("closed")

        async def send(self, frame: bytes) -> None:
            self.sent.append(frame)

    reg = operator.add_registration()
    conn = Conn()
    header = P.tpm_auth_header(P.AttestationData(data.ek_pem, bad))
    with caplog.at_level(logging.WARNING):
        asyncio.run(serve_registration(conn, header, reg, operator.ctx, "127.0.0.1"))
    msg_type, payload = P.decode_frame(conn.sent[-1])
    assert msg_type == P.MsgType.ERROR and P.decode_error(payload) == "authentication failure"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
