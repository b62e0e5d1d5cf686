"""One TCP client connection of a fake upstream (non-blocking, on the serving thread)."""

from __future__ import annotations

import functools
import selectors
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import FakeUpstream


@dataclass(eq=False, slots=True)
class TcpConn:
    """One client connection: 2-byte length framing (RFC 1035 §4.2.2), pipelined queries."""

    server: FakeUpstream
    sock: socket.socket
    src: tuple[Any, ...]
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    closed: bool = False

    def on_event(self, key: selectors.SelectorKey, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if mask & selectors.EVENT_READ and not self.closed:
            self._read()

    def _read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.inbuf += data
        for message in self._messages():
            self.server._guard(
                functools.partial(self.server._on_query, message, "tcp", self.src, self.send)
            )

    def _messages(self) -> Iterator[bytes]:
        while len(self.inbuf) >= 2:
            (size,) = struct.unpack_from("!H", self.inbuf)
            if len(self.inbuf) < 2 + size:
                return
            message = bytes(self.inbuf[2 : 2 + size])
            del self.inbuf[: 2 + size]
            yield message

    def send(self, wire: bytes) -> None:
        if self.closed:
            return  # the client hung up before a delayed reply
        self.outbuf += struct.pack("!H", len(wire)) + wire
        self._flush()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        del self.outbuf[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        self.server._sel.modify(self.sock, events, self.on_event)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server._conns.discard(self)
        try:
            self.server._sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
