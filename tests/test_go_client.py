# ruff: noqa: F811  (pytest fixtures imported from operator_fixtures)
"""Elemental's own Go register client against our operator (issue 12's real-thing check).

Needs the Go client, built by hand from rancher/elemental-operator (cmd/register, CGO for the
emulated TPM; docs/compatibility.md says how) and named by ELEMENTAL_GO_REGISTER. Without it the test
skips, also under CI (CI cannot fetch upstream's source or a Go toolchain).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from operator_fixtures import RunningOperator, operator, postgres_server, store, store_url, wait_for  # noqa: F401

GO_REGISTER = os.environ.get("ELEMENTAL_GO_REGISTER", "")

pytestmark = [
    pytest.mark.allow_skip_in_ci("Elemental's Go client is built by hand (ELEMENTAL_GO_REGISTER)"),
    pytest.mark.skipif(not os.access(GO_REGISTER or "/nonexistent", os.X_OK),
                       reason="ELEMENTAL_GO_REGISTER does not name Elemental's Go register client"),
]

CLOUD_CONFIG = {
    "users": [{"name": "root", "passwd": "root"}],
    "write_files": [{"path": "/etc/motd", "content": "hello <edge> & ünïcode\n"}],
    "runcmd": ["echo one"],
    "hostname": "edge-1",
}


def test_go_client_registers_with_a_cloud_config(operator: RunningOperator, tmp_path: Path) -> None:
    store = operator.ctx.store
    store.create(
        {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "MachineRegistration",
            "metadata": {"name": "go-client", "namespace": "fleet-default"},
            "spec": {
                "machineName": "go-${Random/UUID}",
                "config": {
                    "elemental": {
                        "registration": {"auth": "tpm", "emulate-tpm": True, "emulated-tpm-seed": 7},
                        "install": {"device": "/dev/vda"},
                    },
                    "cloud-config": CLOUD_CONFIG,
                },
            },
        }
    )

    def url() -> str:
        reg = store.get("MachineRegistration", "fleet-default", "go-client")
        return str(((reg or {}).get("status") or {}).get("registrationURL") or "")

    wait_for(url, timeout=20)
    config = tmp_path / "registration.yaml"
    config.write_text(yaml.safe_dump({"elemental": {"registration": {"url": url()}}}))
    proc = subprocess.run(
        [GO_REGISTER, "--no-smbios", "--debug", "--config-path", str(config),
         "--state-path", str(tmp_path / "state.yaml"), "--emulate-tpm", "--emulated-tpm-seed", "7"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    # Before upstream's encoding: "FATAL: parsing returned configuration: yaml: unmarshal errors:
    # ... cannot unmarshal !!seq into runtime.RawExtension", after the inventory was committed.
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FATAL" not in proc.stderr
    inventories = store.list("MachineInventory", "fleet-default")
    assert [i["metadata"]["name"] for i in inventories if i["metadata"]["name"].startswith("go-")]
