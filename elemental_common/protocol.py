"""Elemental registration wire protocol: the only module that knows byte layouts.

Compatible frame for frame with rancher/elemental-operator ``pkg/register`` (client and
server) and rancher-sandbox/go-tpm + go-attestation (TPM auth header and challenge):

* binary websocket frames, byte 0 = message type (0..12), the rest is the payload;
* JSON payloads are Go ``json.Encoder`` output (compact, sorted map keys, HTML-escaped,
  trailing newline) and the receiver acks each with ``Ready``;
* ``Version`` carries one byte, the highest message id the sender knows;
* ``Error`` carries YAML ``message: <text>``, ``Config`` carries the YAML config;
* the TPM challenge/response are raw JSON frames *without* a type byte;
* ``Authorization: Bearer TPM<base64(json AttestationData)>`` or ``Bearer PLAIN<id>``.

Go marshals ``[]byte`` as standard, padded base64 and matches JSON keys
case-insensitively when decoding; both are mirrored here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

import yaml

# libyaml bindings when present (Debian's python3-yaml has them): 7x faster than pure Python,
# which matters for the Config reply the operator renders on every registration.
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class MsgType(IntEnum):
    UNDEFINED = 0
    READY = 1
    SMBIOS = 2
    LABELS = 3
    GET = 4
    VERSION = 5
    SYSTEM_DATA = 6
    CONFIG = 7
    ERROR = 8
    ANNOTATIONS = 9
    UPDATE = 10
    SYSTEM_DATA_V2 = 11
    NETWORK_CONFIG = 12


MSG_LAST = MsgType.NETWORK_CONFIG
# Go's RegistrationDeadlineSeconds: one deadline for the whole session, set right after connecting.
DEADLINE_SECONDS = 10.0
# Elemental has no limit; ours bounds memory per connection. SMBIOS + SystemDataV2 of a big
# server is ~100 KiB, so 4 MiB is generous.
MAX_FRAME_SIZE = 4 * 1024 * 1024
# Header size limit (aiohttp's default line limit is 8190; the TPM header with an EK certificate
# is ~3-4 KiB).
MAX_AUTH_HEADER = 64 * 1024

MSG_INVENTORY_NOT_FOUND = "MachineInventory not found"

# Limits on what a registering machine may send (Elemental has none; issue 11). Each refusal is
# an Error frame naming the limit, so an operator reading a client's log knows which one it hit.
# A big server's SMBIOS or SystemDataV2 is ~100 KiB; labels are short templates; annotations
# follow Kubernetes (all annotations of one object: 256 KiB, keys + values).
LIMITS: dict[str, int] = {
    "max-data-message-bytes": 1024 * 1024,  # one SMBIOS / SystemData(V2) payload
    "max-data-total-bytes": 2 * 1024 * 1024,  # all SMBIOS + SystemData of a session
    "max-data-depth": 16,  # JSON nesting of SMBIOS / SystemData
    "max-data-nodes": 50_000,  # JSON values in one SMBIOS / SystemData payload
    "max-labels": 64,  # client labels per session
    "max-label-key-bytes": 317,  # prefix (253) + "/" + name (63)
    "max-label-value-bytes": 1024,  # a client label is a template; its rendering is cut to 58
    "max-annotations": 64,  # client annotations per session
    "max-annotation-key-bytes": 317,
    "max-annotation-value-bytes": 64 * 1024,
    "max-annotations-total-bytes": 256 * 1024,  # all annotations of the inventory (Kubernetes')
    "max-rendered-bytes": 64 * 1024,  # output of one template rendering
    # One websocket message from a client, checked on its frame headers in front of the
    # operator's websocket reader (server/wsmask.py: an Error frame naming it, then Close 1009):
    # the largest useful one is a data message, everything bigger would be refused anyway, and
    # buffering 4 MiB frames from many sessions is what raised the operator's RSS.
    "max-client-frame-bytes": 1024 * 1024 + 4096,
}


class ProtocolError(Exception):
    """Malformed, unexpected, unknown or oversized data on the wire."""


class LimitExceeded(ProtocolError):
    """Client data over one of ``LIMITS``; ``str(exc)`` names the limit (sent as the Error)."""

    def __init__(self, name: str, what: str, got: int) -> None:
        self.name, self.limit, self.got = name, LIMITS[name], got
        super().__init__(f"{what}: {got} exceeds the limit {name}={self.limit}")


def check_limit(name: str, what: str, got: int) -> None:
    if got > LIMITS[name]:
        raise LimitExceeded(name, what, got)


class RemoteError(ProtocolError):
    """The peer sent an ``Error`` frame; ``str(exc)`` is its message."""


# ---------------------------------------------------------------------------------------------
# frames


def encode_frame(msg_type: MsgType | int, payload: bytes = b"") -> bytes:
    t = int(msg_type)
    if not 0 <= t <= MSG_LAST:
        raise ProtocolError(f"unknown message type {t}")
    if len(payload) + 1 > MAX_FRAME_SIZE:
        raise ProtocolError(f"frame too large ({len(payload) + 1} bytes)")
    return bytes((t,)) + payload


def decode_frame(frame: bytes | str) -> tuple[MsgType, bytes]:
    if isinstance(frame, str):
        raise ProtocolError("got non binary message")
    if len(frame) == 0:
        raise ProtocolError("empty message")
    if len(frame) > MAX_FRAME_SIZE:
        raise ProtocolError(f"frame too large ({len(frame)} bytes)")
    if frame[0] > MSG_LAST:
        raise ProtocolError(f"unknown message type {frame[0]}")
    return MsgType(frame[0]), bytes(frame[1:])


# ---------------------------------------------------------------------------------------------
# payloads

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def go_json(obj: Any, newline: bool = True, sort_keys: bool = True) -> bytes:
    """Serialise like Go: compact, map keys sorted, HTML characters escaped, UTF-8.

    ``sort_keys=False`` for Go structs, whose fields keep declaration order.
    """
    text = json.dumps(obj, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=False)
    text = text.translate(_GO_ESCAPES)
    return (text + ("\n" if newline else "")).encode()


def decode_json_object(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"invalid JSON payload: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("JSON payload is not an object")
    return obj


def decode_data_object(payload: bytes) -> dict[str, Any]:
    """SMBIOS / SystemData(V2) from a client: a JSON object within the data limits."""
    check_limit("max-data-message-bytes", "SMBIOS/SystemData message bytes", len(payload))
    obj = decode_json_object(payload)
    # Iterative walk: depth and size are checked without recursion.
    nodes = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        check_limit("max-data-nodes", "SMBIOS/SystemData JSON values", nodes)
        check_limit("max-data-depth", "SMBIOS/SystemData JSON depth", depth)
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return obj


def decode_string_map(payload: bytes) -> dict[str, str]:
    """Labels / Annotations: Go ``map[string]string`` (null → empty, non-strings rejected)."""
    if payload.strip() == b"null":
        return {}
    obj = decode_json_object(payload)
    if not all(isinstance(v, str) for v in obj.values()):
        raise ProtocolError("expected a map of strings")
    return obj


def encode_version(version: int = MSG_LAST) -> bytes:
    return bytes((int(version),))


def decode_version(payload: bytes) -> int:
    if len(payload) != 1:
        raise ProtocolError(f"unknown version format: {payload!r}")
    return payload[0]


def negotiate_version(payload: bytes, ours: int = MSG_LAST) -> int:
    """Server side of Version: refuse clients up to ``Get`` (4), clamp newer ones to ours."""
    client = decode_version(payload)
    if client <= MsgType.GET:
        raise ProtocolError(
            "elemental-register protocol version is deprecated "
            f"(elemental-register client too old, protocol version = {client})"
        )
    return min(client, ours)


def encode_error(message: str) -> bytes:
    return encode_yaml({"message": message})


def decode_error(payload: bytes) -> str:
    try:
        data = yaml.load(payload.decode("utf-8", "replace"), Loader=_Loader)
    except yaml.YAMLError:
        return payload.decode("utf-8", "replace").strip()
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, str):
        return message
    return payload.decode("utf-8", "replace").strip()


def encode_yaml(data: Mapping[str, Any]) -> bytes:
    text: str = yaml.dump(
        dict(data), Dumper=_Dumper, default_flow_style=False, sort_keys=False, allow_unicode=True
    )
    return text.encode()


def decode_config(payload: bytes) -> dict[str, Any]:
    """The Config document, its ``cloud-config`` decoded from upstream's wire form (or plain YAML)."""
    try:
        data = yaml.load(payload.decode("utf-8"), Loader=_Loader)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ProtocolError(f"invalid config YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProtocolError("config is not a map")
    if "cloud-config" in data:
        try:
            data["cloud-config"] = decode_cloud_config(data["cloud-config"])
        except ValueError as exc:
            raise ProtocolError(f"invalid config: {exc}") from None
    return data


# ``cloud-config`` in the Config, in the encoding of Elemental's operator.
#
# Upstream (rancher/elemental-operator api/v1beta1/types.go) types ``Config.CloudConfig`` as
# ``map[string]runtime.RawExtension`` and marshals the Config with gopkg.in/yaml.v3
# (pkg/server/api_registration.go). yaml.v3 ignores RawExtension's ``json:"-"`` tags, so each
# top-level key goes out as ``{raw: [<bytes of the value's JSON, one integer each>], object: null}``,
# and upstream's register client reads it back into the same type (then pkg/util
# MarshalCloudConfig). Plain YAML aborts that client for a list or scalar value ("cannot unmarshal
# !!seq into runtime.RawExtension") and drops a mapping value. The JSON is what the Kubernetes API
# server hands a controller: compact, sorted keys, Go's HTML escaping (``go_json``).
# Golden data made with upstream's own types: tests/data/upstream/ (README there).


def encode_cloud_config(cloud_config: Mapping[str, Any]) -> dict[str, Any]:
    """A cloud-config mapping in upstream's wire form (keys sorted, as yaml.v3 writes a Go map)."""
    return {
        key: {"raw": list(go_json(cloud_config[key], newline=False)), "object": None}
        for key in sorted(cloud_config)
    }


def _is_raw_extension(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and set(value) <= {"raw", "object"}
        and isinstance(value.get("raw"), list)
        and all(isinstance(b, int) and 0 <= b <= 255 for b in value["raw"])
    )


def decode_cloud_config(cloud_config: Any) -> dict[str, Any]:
    """The cloud-config from upstream's wire form or from plain YAML (what older operators,
    ours included, sent); a key whose ``raw`` bytes are not JSON is an error."""
    if cloud_config is None:
        return {}
    if not isinstance(cloud_config, Mapping):
        raise ValueError(f"cloud-config must be a mapping, not {type(cloud_config).__name__}")
    out: dict[str, Any] = {}
    for key, value in cloud_config.items():
        if _is_raw_extension(value):
            try:
                out[str(key)] = json.loads(bytes(value["raw"]).decode())
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"cloud-config {key!r}: its raw bytes are not JSON ({e})") from None
        else:
            out[str(key)] = value
    return out


_PLACEHOLDER_UUIDS = frozenset({"", "unspecified", "none", "unknown"})


def unusable_sys_uuid(value: str) -> bool:
    """A ``sys-uuid`` identity that identifies nothing: empty, a placeholder ("Not Settable", "None",
    "Unspecified", ghw's "unknown" for a machine without DMI), or all zeros / all ones, which SMBIOS
    (DSP0134 7.2.1) uses for "not present". Upstream's client sends PLAINunknown without DMI, so every
    such machine would be one inventory; both our client and our operator refuse these."""
    v = value.strip().lower()
    if v in _PLACEHOLDER_UUIDS or v.startswith("not "):
        return True
    digits = set(v.replace("-", ""))
    return digits == {"0"} or digits == {"f"}


# ---------------------------------------------------------------------------------------------
# authorization header and TPM challenge


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(value: Any, what: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: expected base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{what}: invalid base64") from None


def _field(obj: Mapping[str, Any], name: str) -> Any:
    # Go's encoding/json matches object keys case-insensitively.
    if name in obj:
        return obj[name]
    lname = name.lower()
    for k, v in obj.items():
        if k.lower() == lname:
            return v
    return None


@dataclass(frozen=True)
class AttestationParameters:
    """go-attestation ``AttestationParameters`` (TPM 2.0): the AK's public area and its creation proof.

    ``public`` = TPMT_PUBLIC, ``create_data`` = TPMS_CREATION_DATA, ``create_attestation`` =
    TPMS_ATTEST, ``create_signature`` = TPMT_SIGNATURE, each marshalled without a TPM2B size.
    """

    public: bytes
    create_data: bytes
    create_attestation: bytes
    create_signature: bytes
    use_tcsd_activation_format: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "Public": _b64(self.public),
            "UseTCSDActivationFormat": self.use_tcsd_activation_format,
            "CreateData": _b64(self.create_data),
            "CreateAttestation": _b64(self.create_attestation),
            "CreateSignature": _b64(self.create_signature),
        }

    @classmethod
    def from_json(cls, obj: Any) -> AttestationParameters:
        if not isinstance(obj, dict):
            raise ProtocolError("AK: expected an object")
        return cls(
            public=_unb64(_field(obj, "Public"), "AK.Public"),
            create_data=_unb64(_field(obj, "CreateData"), "AK.CreateData"),
            create_attestation=_unb64(_field(obj, "CreateAttestation"), "AK.CreateAttestation"),
            create_signature=_unb64(_field(obj, "CreateSignature"), "AK.CreateSignature"),
            use_tcsd_activation_format=bool(_field(obj, "UseTCSDActivationFormat")),
        )


@dataclass(frozen=True)
class AttestationData:
    ek_pem: bytes
    ak: AttestationParameters


@dataclass(frozen=True)
class PlainAuth:
    identifier: str


TPM_PREFIX = "Bearer TPM"
PLAIN_PREFIX = "Bearer PLAIN"


def tpm_auth_header(data: AttestationData) -> str:
    # go-tpm uses json.Marshal on a struct: declaration order, no trailing newline.
    body = go_json({"EK": _b64(data.ek_pem), "AK": data.ak.to_json()}, newline=False, sort_keys=False)
    return TPM_PREFIX + base64.b64encode(body).decode()


def plain_auth_header(identifier: str) -> str:
    return PLAIN_PREFIX + identifier


def parse_authorization(header: str | None) -> AttestationData | PlainAuth | None:
    """Decode an Authorization header; None when it carries no recognised scheme.

    Raises ProtocolError when the scheme is recognised but the content is malformed.
    """
    if not header:
        return None
    if len(header) > MAX_AUTH_HEADER:
        raise ProtocolError("authorization header too large")
    if header.startswith(TPM_PREFIX):
        raw = header[len(TPM_PREFIX) :]
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("TPM auth: invalid base64") from None
        obj = decode_json_object(body)
        ek = _unb64(_field(obj, "EK"), "EK")
        if not ek:
            raise ProtocolError("TPM auth: missing EK")
        ak = _field(obj, "AK")
        if ak is None:
            raise ProtocolError("TPM auth: missing AK")
        return AttestationData(ek_pem=ek, ak=AttestationParameters.from_json(ak))
    if header.startswith(PLAIN_PREFIX):
        ident = header[len(PLAIN_PREFIX) :]
        if not ident:
            raise ProtocolError("PLAIN auth: empty identifier")
        return PlainAuth(ident)
    return None


def encode_challenge(credential: bytes, secret: bytes) -> bytes:
    """Server → client: ``{"EC":{"Credential":…,"Secret":…}}``.

    ``credential`` is a marshalled TPM2B_ID_OBJECT and ``secret`` a marshalled
    TPM2B_ENCRYPTED_SECRET (go-attestation strips the 2-byte sizes before ActivateCredential).
    """
    return go_json({"EC": {"Credential": _b64(credential), "Secret": _b64(secret)}}, sort_keys=False)


def decode_challenge(frame: bytes) -> tuple[bytes, bytes]:
    obj = decode_json_object(frame)
    ec = _field(obj, "EC")
    if not isinstance(ec, dict):
        raise ProtocolError("challenge: missing EC")
    cred = _unb64(_field(ec, "Credential"), "EC.Credential")
    secret = _unb64(_field(ec, "Secret"), "EC.Secret")
    if len(cred) < 2 or len(secret) < 2:
        raise ProtocolError("challenge: malformed credential")
    return cred, secret


def encode_challenge_response(secret: bytes) -> bytes:
    return go_json({"Secret": _b64(secret)})


def decode_challenge_response(frame: bytes) -> bytes:
    obj = decode_json_object(frame)
    return _unb64(_field(obj, "Secret"), "Secret")


# ---------------------------------------------------------------------------------------------
# channels


class FrameConn(Protocol):
    """One websocket connection: whole binary messages in and out (aiohttp adapter on the
    operator, websockets' asyncio connection on the client)."""

    async def recv(self) -> bytes: ...

    async def send(self, data: bytes) -> None: ...


class Deadline:
    """One absolute deadline for the whole exchange, like Go's SetRead/WriteDeadline."""

    def __init__(self, seconds: float = DEADLINE_SECONDS) -> None:
        self.expires = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.expires - time.monotonic()
        if left <= 0:
            raise TimeoutError("registration deadline exceeded")
        return left


class Channel:
    """Typed messages over a FrameConn with the session deadline applied to every read/write."""

    def __init__(self, conn: FrameConn, deadline: Deadline | None = None) -> None:
        self.conn = conn
        self.deadline = deadline or Deadline()

    # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps every read and write in a
    # new Task, which was a measurable share of the operator's CPU per registration.

    async def recv_raw(self) -> bytes:
        # Typed as bytes, but a transport may hand over text frames: refuse them explicitly.
        async with asyncio.timeout(self.deadline.remaining()):
            data: bytes | str = await self.conn.recv()
        if isinstance(data, str):
            raise ProtocolError("got non binary message")
        if len(data) > MAX_FRAME_SIZE:
            raise ProtocolError(f"frame too large ({len(data)} bytes)")
        return bytes(data)

    async def send_raw(self, data: bytes) -> None:
        async with asyncio.timeout(self.deadline.remaining()):
            await self.conn.send(data)

    async def read(self) -> tuple[MsgType, bytes]:
        return decode_frame(await self.recv_raw())

    async def write(self, msg_type: MsgType, payload: bytes = b"") -> None:
        await self.send_raw(encode_frame(msg_type, payload))


class ServerChannel(Channel):
    """Operator side: every frame is returned, an Error from the client is just unexpected."""


class ClientChannel(Channel):
    """Register-client side: Error frames become RemoteError; Go's SendJSONData semantics."""

    async def read(self) -> tuple[MsgType, bytes]:
        msg_type, payload = decode_frame(await self.recv_raw())
        if msg_type == MsgType.ERROR:
            raise RemoteError(decode_error(payload))
        return msg_type, payload

    async def expect(self, expected: MsgType) -> bytes:
        msg_type, payload = await self.read()
        if msg_type != expected:
            raise ProtocolError(f"expecting '{expected.name}' but got '{msg_type.name}'")
        return payload

    async def send_json(self, msg_type: MsgType, data: Any) -> None:
        """Type + JSON, then require a Ready."""
        await self.write(msg_type, go_json(data))
        await self.expect(MsgType.READY)

    async def negotiate(self, ours: int = MSG_LAST) -> int:
        await self.write(MsgType.VERSION, encode_version(ours))
        version = decode_version(await self.expect(MsgType.VERSION))
        if version <= MsgType.GET or version > ours:
            raise ProtocolError(f"server negotiated an unsupported protocol version {version}")
        return version
