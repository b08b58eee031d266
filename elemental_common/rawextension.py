"""`cloud-config` on the registration wire in the encoding of Elemental's operator.

Upstream (rancher/elemental-operator api/v1beta1/types.go) types `Config.CloudConfig` as
`map[string]runtime.RawExtension` and marshals the Config with gopkg.in/yaml.v3
(pkg/server/api_registration.go). yaml.v3 ignores the `json:"-"` tags of RawExtension, so each
top-level cloud-config key goes out as a mapping `{raw: [<bytes of the value's JSON, one integer
each>], object: null}`; upstream's register client reads it back into the same type and turns it
into a cloud-config file (pkg/util MarshalCloudConfig). A plain YAML value aborts that client (a list
or scalar: "cannot unmarshal … into runtime.RawExtension") or is dropped (a mapping). The JSON is
what the Kubernetes API server hands a controller: compact, sorted keys, Go's HTML escaping.

Golden data, produced by upstream's own types and yaml.v3: tests/data/upstream/ (README there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from elemental_common.protocol import go_json


def encode_value(value: Any) -> dict[str, Any]:
    """One cloud-config value as yaml.v3 marshals a RawExtension holding its JSON."""
    return {"raw": list(go_json(value, newline=False)), "object": None}


def encode(cloud_config: Mapping[str, Any]) -> dict[str, Any]:
    """A cloud-config mapping in upstream's wire form (keys sorted, as yaml.v3 writes a Go map)."""
    return {key: encode_value(cloud_config[key]) for key in sorted(cloud_config)}


def _is_raw(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and set(value) <= {"raw", "object"}
        and isinstance(value.get("raw"), list)
        and all(isinstance(b, int) and 0 <= b <= 255 for b in value["raw"])
    )


def decode(cloud_config: Any) -> dict[str, Any]:
    """The cloud-config a Config carries, from upstream's wire form or from plain YAML (older
    operators, ours included, sent plain YAML); a key whose `raw` is not JSON is an error."""
    if cloud_config is None:
        return {}
    if not isinstance(cloud_config, Mapping):
        raise ValueError(f"cloud-config must be a mapping, not {type(cloud_config).__name__}")
    out: dict[str, Any] = {}
    for key, value in cloud_config.items():
        if _is_raw(value):
            try:
                out[str(key)] = json.loads(bytes(value["raw"]).decode())
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"cloud-config {key!r}: its raw bytes are not JSON ({e})") from None
        else:
            out[str(key)] = value
    return out
