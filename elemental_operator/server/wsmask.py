"""RFC 6455 5.1: a server must close the connection on an unmasked client frame. aiohttp's
reader unmasks when a mask is present but accepts frames without one, so the registration
websocket puts this check in front of it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# Close frame, status 1002 (protocol error); server frames are never masked.
_CLOSE_PROTOCOL_ERROR = b"\x88\x02\x03\xea"


class MaskCheck:
    """Walks the frame headers of the byte stream (no payload copies) and feeds it on to the
    real reader; on the first unmasked frame it answers Close 1002 and drops the connection."""

    def __init__(self, inner: Any, transport: Any) -> None:
        self.inner = inner
        self.transport = transport
        self.head = bytearray()
        self.skip = 0  # payload bytes of the current frame still to pass
        self.violated = False

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
                self.violated = True
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(_CLOSE_PROTOCOL_ERROR)
                    self.transport.close()
                return True, b""
            if len(self.head) < 2 + ext + 4:
                continue
            self.skip = len7 if not ext else int.from_bytes(self.head[2 : 2 + ext], "big")
            self.head.clear()
        result: tuple[bool, bytes] = self.inner.feed_data(data)
        return result


def require_masked_frames(request: web.Request) -> None:
    """Call right after ``WebSocketResponse.prepare``: wraps the connection's frame parser."""
    proto: Any = request.protocol
    parser = getattr(proto, "_payload_parser", None)
    if parser is not None and not isinstance(parser, MaskCheck):
        proto._payload_parser = MaskCheck(parser, request.transport)
