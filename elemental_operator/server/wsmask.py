"""Frame checks in front of aiohttp's websocket reader on the registration websocket.

RFC 6455 5.1: a server must close the connection on an unmasked client frame; aiohttp's reader
unmasks when a mask is present but accepts frames without one. And a client message over
LIMITS["max-client-frame-bytes"] is refused as soon as its frame header announces the size, with
an Error frame naming the limit, then Close 1009 (aiohttp alone would buffer it, then send a
bare 1009 the client cannot explain)."""

from __future__ import annotations

import struct
from typing import Any

from aiohttp import web

from elemental_common import protocol as P

# Close frames, status 1002 (protocol error) and 1009 (message too big); server frames are never
# masked.
_CLOSE_PROTOCOL_ERROR = b"\x88\x02\x03\xea"
_CLOSE_TOO_BIG = b"\x88\x02" + struct.pack(">H", 1009)
_LIMIT = "max-client-frame-bytes"


def _binary_frame(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x82, n]) if n < 126 else bytes([0x82, 126]) + struct.pack(">H", n)
    return head + payload


def too_big_reply(got: int) -> bytes:
    """The server's answer to an oversized client message: an Error frame, then Close 1009."""
    message = str(P.LimitExceeded(_LIMIT, "websocket message bytes", got))
    return _binary_frame(P.encode_frame(P.MsgType.ERROR, P.encode_error(message))) + _CLOSE_TOO_BIG


class MaskCheck:
    """Walks the frame headers of the byte stream (no payload copies) and feeds it on to the
    real reader; on the first unmasked frame it answers Close 1002 and drops the connection."""

    def __init__(self, inner: Any, transport: Any) -> None:
        self.inner = inner
        self.transport = transport
        self.head = bytearray()
        self.skip = 0  # payload bytes of the current frame still to pass
        self.message = 0  # payload bytes of the data message so far (fragments add up)
        self.violated = False

    def _refuse(self, reply: bytes) -> tuple[bool, bytes]:
        self.violated = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)
            self.transport.close()
        return True, b""

    def feed_eof(self) -> None:
        self.inner.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.violated:
            return True, b""
        view = memoryview(data)
        pos, n = 0, len(view)
        while pos < n:
            if self.skip:
                take = min(self.skip, n - pos)
                self.skip -= take
                pos += take
                continue
            self.head.append(view[pos])  # headers are at most 14 bytes
            pos += 1
            if len(self.head) < 2:
                continue
            masked, len7 = self.head[1] & 0x80, self.head[1] & 0x7F
            ext = 2 if len7 == 126 else 8 if len7 == 127 else 0
            if not masked:
                return self._refuse(_CLOSE_PROTOCOL_ERROR)
            if len(self.head) < 2 + ext + 4:
                continue
            self.skip = len7 if not ext else int.from_bytes(self.head[2 : 2 + ext], "big")
            fin, opcode = self.head[0] & 0x80, self.head[0] & 0x0F
            if opcode < 0x8:  # data or continuation frame (control frames are ≤ 125 bytes)
                self.message += self.skip
                if self.message > P.LIMITS[_LIMIT]:
                    return self._refuse(too_big_reply(self.message))
                if fin:
                    self.message = 0
            self.head.clear()
        result: tuple[bool, bytes] = self.inner.feed_data(data)
        return result


def require_masked_frames(request: web.Request) -> None:
    """Call right after ``WebSocketResponse.prepare``: wraps the connection's frame parser."""
    proto: Any = request.protocol
    parser = getattr(proto, "_payload_parser", None)
    if parser is not None and not isinstance(parser, MaskCheck):
        proto._payload_parser = MaskCheck(parser, request.transport)
