"""Websocket framing from a hostile client (issue 11 item 7): text frames and unmasked client
frames are refused (RFC 6455 5.1), over a raw TLS socket speaking the protocol by hand."""

# ruff: noqa: F811  (pytest fixtures imported from helpers_registration)

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
from typing import Any

from helpers_registration import InProcessOperator, operator  # noqa: F401

from elemental_common import protocol as P


class RawWS:
    def __init__(self, op: InProcessOperator, reg: dict[str, Any], header: str) -> None:
        ctx = ssl.create_default_context(cadata=op.ca_pem.decode())
        raw = socket.create_connection(("127.0.0.1", op.port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        path = "/elemental/registration/" + reg["status"]["registrationToken"]
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: {header}\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("closed")
        return data

    def send(self, opcode: int, payload: bytes, masked: bool = True) -> None:
        head = bytes([0x80 | opcode])
        n = len(payload)
        mask_bit = 0x80 if masked else 0
        if n < 126:
            head += bytes([mask_bit | n])
        else:
            head += bytes([mask_bit | 126]) + struct.pack(">H", n)
        if masked:
            key = os.urandom(4)
            head += key
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + payload)

    def frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame."""
        while len(self.buf) < 2:
            self.buf += self._recv()
        n = self.buf[1] & 0x7F
        off = 2
        if n == 126:
            while len(self.buf) < 4:
                self.buf += self._recv()
            n, off = struct.unpack(">H", self.buf[2:4])[0], 4
        while len(self.buf) < off + n:
            self.buf += self._recv()
        opcode, payload = self.buf[0] & 0x0F, self.buf[off : off + n]
        self.buf = self.buf[off + n :]
        return opcode, payload


def _reg(op: InProcessOperator) -> dict[str, Any]:
    return op.add_registration(config={"elemental": {"registration": {"auth": "mac"}}})


def test_masked_binary_frames_work(operator: InProcessOperator) -> None:
    ws = RawWS(operator, _reg(operator), P.plain_auth_header("52:54:00:00:22:01"))
    assert ws.frame() == (0x2, bytes([P.MsgType.READY]))
    ws.send(0x2, P.encode_frame(P.MsgType.VERSION, P.encode_version()))
    opcode, payload = ws.frame()
    assert opcode == 0x2 and P.decode_frame(payload)[0] == P.MsgType.VERSION


def test_text_frames_are_refused(operator: InProcessOperator) -> None:
    ws = RawWS(operator, _reg(operator), P.plain_auth_header("52:54:00:00:22:02"))
    assert ws.frame() == (0x2, bytes([P.MsgType.READY]))
    ws.send(0x1, P.encode_frame(P.MsgType.VERSION, P.encode_version()))  # same bytes, as text
    opcode, payload = ws.frame()
    msg_type, body = P.decode_frame(payload)
    assert opcode == 0x2 and msg_type == P.MsgType.ERROR
    assert "text frames are refused" in P.decode_error(body)
    assert ws.frame()[0] == 0x8  # then Close


def test_unmasked_client_frames_are_refused(operator: InProcessOperator) -> None:
    ws = RawWS(operator, _reg(operator), P.plain_auth_header("52:54:00:00:22:03"))
    assert ws.frame() == (0x2, bytes([P.MsgType.READY]))
    ws.send(0x2, P.encode_frame(P.MsgType.VERSION, P.encode_version()), masked=False)
    opcode, payload = ws.frame()
    assert opcode == 0x8 and payload[:2] == struct.pack(">H", 1002)  # Close: protocol error
    try:
        assert ws.frame()[0] == 0x8
    except (EOFError, ConnectionError, ssl.SSLError):
        pass
    assert operator.store.list("MachineInventory") == []


def _header(opcode: int, length: int, fin: bool = True) -> bytes:
    """A masked client frame header (mask key 0: the payload goes as it is)."""
    first = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        return first + bytes([0x80 | length]) + bytes(4)
    if length < 1 << 16:
        return first + bytes([0x80 | 126]) + struct.pack(">H", length) + bytes(4)
    return first + bytes([0x80 | 127]) + struct.pack(">Q", length) + bytes(4)


def _refused_too_big(ws: RawWS, got: int) -> None:
    """An Error frame naming the limit, then Close 1009 (was a bare Close 1009)."""
    opcode, payload = ws.frame()
    assert opcode == 0x2, (opcode, payload[:80])
    msg_type, body = P.decode_frame(payload)
    limit = P.LIMITS["max-client-frame-bytes"]
    assert msg_type == P.MsgType.ERROR
    assert (
        P.decode_error(body)
        == f"websocket message bytes: {got} exceeds the limit max-client-frame-bytes={limit}"
    )
    opcode, payload = ws.frame()
    assert opcode == 0x8 and payload[:2] == struct.pack(">H", 1009)


def test_oversized_message_gets_an_error_naming_the_limit(operator: InProcessOperator) -> None:
    ws = RawWS(operator, _reg(operator), P.plain_auth_header("52:54:00:00:22:04"))
    assert ws.frame() == (0x2, bytes([P.MsgType.READY]))
    got = P.LIMITS["max-client-frame-bytes"] + 1
    # refused from the header alone: the 1 MiB body never has to arrive (nor be buffered)
    ws.sock.sendall(_header(0x2, got) + bytes([P.MsgType.SMBIOS]) + b"{" * 1000)
    _refused_too_big(ws, got)
    assert operator.store.list("MachineInventory") == []


def test_oversized_fragmented_message_is_refused(operator: InProcessOperator) -> None:
    ws = RawWS(operator, _reg(operator), P.plain_auth_header("52:54:00:00:22:05"))
    assert ws.frame() == (0x2, bytes([P.MsgType.READY]))
    half = P.LIMITS["max-client-frame-bytes"] // 2 + 1
    ws.sock.sendall(_header(0x2, half, fin=False) + bytes(half))
    ws.sock.sendall(_header(0x9, 4) + b"ping")  # a control frame between fragments does not count
    assert ws.frame() == (0xA, b"ping")
    ws.sock.sendall(_header(0x0, half) + bytes(1000))
    _refused_too_big(ws, 2 * half)


def test_messages_under_the_limit_add_up_per_message(operator: InProcessOperator) -> None:
    """Fragments count per message, not per connection: two 700 KiB messages pass the check."""
    ws = RawWS(operator, _reg(operator), P.plain_auth_header("52:54:00:00:22:06"))
    assert ws.frame() == (0x2, bytes([P.MsgType.READY]))
    ws.send(0x2, P.encode_frame(P.MsgType.VERSION, P.encode_version()))
    opcode, payload = ws.frame()
    assert opcode == 0x2 and P.decode_frame(payload)[0] == P.MsgType.VERSION
    for _ in range(2):
        body = P.encode_frame(P.MsgType.ANNOTATIONS, b'{"a":"' + b"x" * (700 * 1024) + b'"}')
        ws.sock.sendall(_header(0x2, len(body)) + body)
    opcode, payload = ws.frame()
    # the handler's own limit answers (an annotation value over 64 KiB), not the frame check
    msg_type, text = P.decode_frame(payload)
    assert msg_type == P.MsgType.ERROR and "max-annotation-value-bytes" in P.decode_error(text), text[:200]
