"""cloud-config in upstream's wire encoding, against golden data made by upstream's own types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from elemental_common import rawextension

UPSTREAM = Path(__file__).parent / "data" / "upstream"


def spec_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((UPSTREAM / "spec-config.yaml").read_text())
    return data


def test_encode_matches_upstreams_yaml_v3_output() -> None:
    golden = yaml.safe_load((UPSTREAM / "config.yaml").read_text())["cloud-config"]
    ours = rawextension.encode(spec_config()["cloud-config"])
    assert ours == golden
    assert list(ours) == sorted(ours)  # yaml.v3 writes a Go map's keys sorted


def test_decode_of_upstreams_form_is_what_upstreams_client_recovers() -> None:
    golden = yaml.safe_load((UPSTREAM / "config.yaml").read_text())["cloud-config"]
    recovered = yaml.safe_load((UPSTREAM / "decoded.yaml").read_text())  # MarshalCloudConfig's output
    assert rawextension.decode(golden) == recovered == spec_config()["cloud-config"]


def test_decode_accepts_plain_yaml() -> None:
    plain = spec_config()["cloud-config"]
    assert rawextension.decode(plain) == plain
    assert rawextension.decode(None) == {}


def test_decode_refuses_raw_bytes_that_are_not_json() -> None:
    with pytest.raises(ValueError, match="'runcmd': its raw bytes are not JSON"):
        rawextension.decode({"runcmd": {"raw": list(b"[not json"), "object": None}})
    with pytest.raises(ValueError, match="must be a mapping"):
        rawextension.decode(["runcmd"])
