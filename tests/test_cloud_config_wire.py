"""cloud-config in upstream's wire encoding, against golden data made by upstream's own types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from elemental_common import protocol as P

UPSTREAM = Path(__file__).parent / "data" / "upstream"


def spec_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((UPSTREAM / "spec-config.yaml").read_text())
    return data


def test_encode_matches_upstreams_yaml_v3_output() -> None:
    golden = yaml.safe_load((UPSTREAM / "config.yaml").read_text())["cloud-config"]
    ours = P.encode_cloud_config(spec_config()["cloud-config"])
    assert ours == golden
    assert list(ours) == sorted(ours)  # yaml.v3 writes a Go map's keys sorted


def test_decode_of_upstreams_form_is_what_upstreams_client_recovers() -> None:
    golden = yaml.safe_load((UPSTREAM / "config.yaml").read_text())["cloud-config"]
    recovered = yaml.safe_load((UPSTREAM / "decoded.yaml").read_text())  # MarshalCloudConfig's output
    assert P.decode_cloud_config(golden) == recovered == spec_config()["cloud-config"]


def test_decode_accepts_plain_yaml() -> None:
    plain = spec_config()["cloud-config"]
    assert P.decode_cloud_config(plain) == plain
    assert P.decode_cloud_config(None) == {}


def test_decode_refuses_raw_bytes_that_are_not_json() -> None:
    with pytest.raises(ValueError, match="'runcmd': its raw bytes are not JSON"):
        P.decode_cloud_config({"runcmd": {"raw": list(b"[not json"), "object": None}})
    with pytest.raises(ValueError, match="must be a mapping"):
        P.decode_cloud_config(["runcmd"])


def test_operator_sends_cloud_config_in_upstreams_encoding(tmp_path: Path) -> None:
    """The bytes of the Config frame's cloud-config part, as the registration handler renders them."""
    from elemental_operator.context import OperatorContext
    from elemental_operator.registration.handler import _static_yaml
    from elemental_operator.store.sql import open_store

    registration = {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineRegistration",
        "metadata": {"name": "r", "namespace": "fleet-default", "uid": "u1", "resourceVersion": "1"},
        "spec": {"config": spec_config()},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "registrationURL": "https://x:8443/elemental/registration/t",
        },
    }
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        _, tail = _static_yaml(registration, OperatorContext(store=store, public_url="https://x:8443"))
    finally:
        store.close()
    golden = yaml.safe_load((UPSTREAM / "config.yaml").read_text())["cloud-config"]
    assert yaml.safe_load(tail)["cloud-config"] == golden
    # and our client reads it back to what the user wrote
    config = P.decode_config(b"elemental: {}\n" + tail)
    assert config["cloud-config"] == spec_config()["cloud-config"]
