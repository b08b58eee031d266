"""Framing and payload encodings of the registration protocol (elemental_common.protocol)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elemental_common import protocol as P

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def test_message_ids_match_elemental() -> None:
    assert [m.value for m in P.MsgType] == list(range(13))
    assert P.MSG_LAST == 12
    assert (int(P.MsgType.SYSTEM_DATA_V2), int(P.MsgType.UPDATE), int(P.MsgType.ERROR)) == (11, 10, 8)


@given(st.sampled_from(list(P.MsgType)), st.binary(max_size=2048))
def test_frame_roundtrip(msg_type: P.MsgType, payload: bytes) -> None:
    frame = P.encode_frame(msg_type, payload)
    assert frame[0] == msg_type and frame[1:] == payload
    assert P.decode_frame(frame) == (msg_type, payload)


@given(st.binary(max_size=64))
def test_decode_never_crashes(frame: bytes) -> None:
    try:
        msg_type, payload = P.decode_frame(frame)
    except P.ProtocolError:
        assert frame == b"" or frame[0] > 12
    else:
        assert frame[0] == msg_type and payload == frame[1:]


@given(st.integers(13, 255), st.binary(max_size=16))
def test_unknown_type_rejected(t: int, payload: bytes) -> None:
    with pytest.raises(P.ProtocolError):
        P.decode_frame(bytes([t]) + payload)


def test_oversized_and_text_frames_rejected() -> None:
    with pytest.raises(P.ProtocolError):
        P.decode_frame(b"\x02" + b"x" * P.MAX_FRAME_SIZE)
    with pytest.raises(P.ProtocolError):
        P.encode_frame(P.MsgType.SMBIOS, b"x" * P.MAX_FRAME_SIZE)
    with pytest.raises(P.ProtocolError):
        P.decode_frame("\x01")


@given(json_values)
def test_go_json_roundtrip(value: object) -> None:
    data = P.go_json(value)
    assert data.endswith(b"\n") and b"<" not in data and b">" not in data and b"&" not in data
    assert json.loads(data) == value


def test_go_json_matches_go_encoder() -> None:
    # encoding/json: sorted map keys, compact, HTML escaping, raw UTF-8, trailing newline.
    assert P.go_json({"b": "<x&y>", "a": "é"}) == b'{"a":"\xc3\xa9","b":"\\u003cx\\u0026y\\u003e"}\n'


@given(st.integers(0, 255))
def test_version_negotiation(client: int) -> None:
    if client <= 4:
        with pytest.raises(P.ProtocolError, match="protocol version is deprecated"):
            P.negotiate_version(bytes([client]))
    else:
        assert P.negotiate_version(bytes([client])) == min(client, 12)


def test_version_payload_must_be_one_byte() -> None:
    for bad in (b"", b"\x0c\x0c"):
        with pytest.raises(P.ProtocolError):
            P.negotiate_version(bad)


@given(st.text(max_size=200))
def test_error_roundtrip(message: str) -> None:
    encoded = P.encode_error(message)
    assert encoded.startswith(b"message:")
    assert P.decode_error(encoded) == message


def test_string_maps() -> None:
    assert P.decode_string_map(b'{"a":"b"}\n') == {"a": "b"}
    assert P.decode_string_map(b"null\n") == {}
    for bad in (b'{"a":1}', b"[1]", b"\xff", b"{"):
        with pytest.raises(P.ProtocolError):
            P.decode_string_map(bad)


@given(st.binary(min_size=1, max_size=300), st.binary(max_size=300), st.binary(max_size=300))
def test_tpm_header_roundtrip(ek: bytes, pub: bytes, sig: bytes) -> None:
    ak = P.AttestationParameters(
        public=pub, create_data=b"cd", create_attestation=b"ca", create_signature=sig
    )
    header = P.tpm_auth_header(P.AttestationData(ek_pem=ek, ak=ak))
    assert header.startswith("Bearer TPM")
    body = json.loads(base64.b64decode(header[len("Bearer TPM") :]))
    # go-tpm's AttestationData / go-attestation's AttestationParameters field names.
    assert list(body) == ["EK", "AK"]
    assert set(body["AK"]) == {
        "Public",
        "UseTCSDActivationFormat",
        "CreateData",
        "CreateAttestation",
        "CreateSignature",
    }
    parsed = P.parse_authorization(header)
    assert parsed == P.AttestationData(ek_pem=ek, ak=ak)


def test_header_case_insensitive_keys_like_go() -> None:
    body = json.dumps({"ek": base64.b64encode(b"PEM").decode(), "ak": {"public": "AA=="}}).encode()
    parsed = P.parse_authorization("Bearer TPM" + base64.b64encode(body).decode())
    assert isinstance(parsed, P.AttestationData) and parsed.ek_pem == b"PEM" and parsed.ak.public == b"\x00"


def test_plain_and_unknown_headers() -> None:
    assert P.parse_authorization("Bearer PLAIN52:54:00:12:34:56") == P.PlainAuth("52:54:00:12:34:56")
    assert P.parse_authorization("Bearer XYZ") is None
    assert P.parse_authorization(None) is None
    for bad in ("Bearer TPM!!!", "Bearer TPM" + base64.b64encode(b"[]").decode(), "Bearer PLAIN"):
        with pytest.raises(P.ProtocolError):
            P.parse_authorization(bad)


@given(st.binary(min_size=2, max_size=400), st.binary(min_size=2, max_size=400))
def test_challenge_roundtrip(cred: bytes, secret: bytes) -> None:
    frame = P.encode_challenge(cred, secret)
    assert frame.startswith(b'{"EC":{"Credential":') and frame.endswith(b"}\n")
    assert P.decode_challenge(frame) == (cred, secret)
    assert P.decode_challenge_response(P.encode_challenge_response(secret)) == secret


@given(st.binary(max_size=100))
def test_challenge_decoders_never_crash(data: bytes) -> None:
    for fn in (P.decode_challenge, P.decode_challenge_response):
        try:
            fn(data)
        except P.ProtocolError:
            pass
