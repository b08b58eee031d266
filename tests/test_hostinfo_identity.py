"""sys-uuid on a machine without a usable SMBIOS UUID: our client refuses to build the identity,
and the operator refuses the placeholder that Elemental's own client sends (PLAINunknown)."""

# ruff: noqa: F811  (pytest fixtures imported from helpers_registration)

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers_registration import InProcessOperator, operator  # noqa: F401

from elemental_register import hardware
from elemental_register.client import HardwareSource, RegistrationError, register
from elemental_register.config import RegistrationConfig
from elemental_register.state import State

NO_DMI = Path(__file__).parent / "data" / "hostinfo" / "this-vm"  # recorded on a machine without DMI


def _source(uuid: Any) -> HardwareSource:
    return HardwareSource(
        smbios=lambda: {},
        system_data=lambda: {"Runtime": {"Hostname": "h"}},
        mac=lambda: "52:54:00:12:34:56",
        uuid=uuid,
    )


def _cfg(op: InProcessOperator) -> tuple[RegistrationConfig, dict[str, Any]]:
    reg = op.add_registration(config={"elemental": {"registration": {"auth": "sys-uuid"}}})
    url = reg["status"]["registrationURL"]
    return RegistrationConfig(url=url, ca_cert=op.ca_pem.decode(), auth="sys-uuid", no_smbios=True), reg


def test_our_client_refuses_a_machine_without_dmi(operator: InProcessOperator) -> None:
    cfg, _ = _cfg(operator)
    with pytest.raises(
        RegistrationError, match=r"cannot build sys-uuid identity: no usable SMBIOS system UUID \('unknown'\)"
    ):
        register(cfg, State(), source=_source(lambda: hardware.system_uuid(NO_DMI)))
    assert operator.store.list("MachineInventory") == []


@pytest.mark.parametrize(
    "sent",
    [
        "unknown",
        "00000000-0000-0000-0000-000000000000",
        "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
        "Not Settable",
    ],
)
def test_the_operator_refuses_placeholder_uuids(operator: InProcessOperator, sent: str) -> None:
    # What Elemental's Go client sends on such a machine (its check lets "unknown" through).
    cfg, _ = _cfg(operator)
    with pytest.raises(RegistrationError, match="is not a machine's UUID"):
        register(cfg, State(), source=_source(lambda: sent))
    assert operator.store.list("MachineInventory") == []
    # A real UUID still registers.
    register(cfg, State(), source=_source(lambda: "5c0e6f1a-8b1d-4c7e-9a4e-2f3b1c0d9e71"))
    assert len(operator.store.list("MachineInventory")) == 1
