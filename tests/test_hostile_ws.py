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
