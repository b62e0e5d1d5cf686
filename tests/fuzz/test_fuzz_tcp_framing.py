"""Fuzz: the TCP server's length-prefix framing (RFC 1035 §4.2.2, RFC 7766 §8:
``TCPServer.data_received``) fed an arbitrary byte stream cut at arbitrary points.

It must hand exactly the frames a reference splitter finds, in order, keep the rest buffered,
and close cleanly (never raise, never grow past its bound): whatever the cuts, since TCP may
deliver a stream in any pieces.
"""

from __future__ import annotations

import asyncio
import itertools
import types
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from support.fuzzing import EXAMPLES, FUZZ, queries

from fastdns.metrics.stats import WorkerStats
from fastdns.policy.acl import AclConfig
from fastdns.policy.ratelimit import RateLimitConfig
from fastdns.serve import tcp
from fastdns.serve.gate import Gate
from fastdns.serve.tcpslots import TCPSlots


def reference_frames(stream: bytes) -> tuple[list[bytes], bytes]:
    """(the complete frames of ``stream``, the bytes left after them)."""
    frames = []
    i = 0
    while len(stream) - i >= 2:
        size = int.from_bytes(stream[i : i + 2], "big")
        if len(stream) - i - 2 < size:
            break
        frames.append(stream[i + 2 : i + 2 + size])
        i += 2 + size
    return frames, stream[i:]


class Transport:
    def __init__(self) -> None:
        self.closed = False
        self.paused = False
        self.written: list[bytes] = []

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 5353) if name == "peername" else None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Framing(tcp.TCPServer):
    """The real framing; ``_handle`` only records the frames it would serve."""

    def __init__(self, state: Any) -> None:
        super().__init__(state)
        self.frames: list[bytes] = []

    def _handle(self, frame: bytes) -> None:
        self.frames.append(frame)


def state() -> Any:
    config = types.SimpleNamespace(
        tcp_idle_timeout=10.0, tcp_frame_timeout=2.0, tcp_max_write_buffer=256 * 1024
    )
    gate = Gate(AclConfig(), RateLimitConfig())  # the default ACL: loopback may query
    return types.SimpleNamespace(
        draining=False,
        tcp_connections=TCPSlots(8, 8),
        config=config,
        stats=WorkerStats(),
        gate=gate,
    )


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Frames of queries (valid, mutated, garbage), lengths that lie, bare random bytes."""
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(("frame", "frame", "lie", "raw", "big")))
        if kind == "frame":
            body = draw(queries())
            parts.append(len(body).to_bytes(2, "big") + body)
        elif kind == "lie":  # a length that says more or less than follows
            body = draw(queries())
            parts.append(draw(st.integers(0, 0xFFFF)).to_bytes(2, "big") + body)
        elif kind == "big":  # a maximal frame, whole or cut
            parts.append(b"\xff\xff" + bytes(draw(st.sampled_from((0xFFFF, 0xFFFE, 100)))))
        else:
            parts.append(draw(st.binary(max_size=64)))
    return b"".join(parts)


def feed(stream: bytes, cuts: list[int], eof: bool) -> Framing:
    async def run() -> Framing:
        conn = Framing(state())
        transport = Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
        for a, b in itertools.pairwise(points):
            if transport.closed:
                break
            conn.data_received(stream[a:b])
        if eof and not transport.closed:
            conn.eof_received()
            assert transport.closed  # nothing pending: closed at once
        conn.connection_lost(None)
        return conn

    return asyncio.run(run())


@FUZZ
@given(stream=streams(), cuts=st.lists(st.integers(0, 2**20), max_size=12), eof=st.booleans())
def test_frames_are_split_as_the_reference_splits_them(
    stream: bytes, cuts: list[int], eof: bool
) -> None:
    conn = feed(stream, cuts, eof)
    frames, rest = reference_frames(stream)
    # every piece is at most 69 KB here only when no cut is far apart; a piece that overflows
    # the buffer bound closes the connection, having served a prefix of the frames
    if conn.transport is None and len(conn.buffer) == 0 and conn.frames != frames:
        assert frames[: len(conn.frames)] == conn.frames
        return
    assert conn.frames == frames
    assert bytes(conn.buffer) == rest or (not rest and not conn.buffer)


@settings(FUZZ, max_examples=max(1, EXAMPLES // 3))  # each example feeds up to 200 pieces
@given(stream=streams(), size=st.integers(64, 4096))
def test_small_pieces_never_overflow_the_buffer(stream: bytes, size: int) -> None:
    """Pieces of up to 4 KB (what a socket read gives): a maximal frame plus a piece fits the
    bound, so the connection is never closed for its buffer and every frame is served."""
    conn = feed(stream, list(range(0, len(stream), size)), eof=False)
    frames, rest = reference_frames(stream)
    assert conn.frames == frames
    assert bytes(conn.buffer) == rest
    assert len(conn.buffer) <= tcp.TCP_MAX_INPUT


def test_one_piece_over_the_bound_closes_the_connection() -> None:
    stream = b"\x00\x05hello" + bytes(tcp.TCP_MAX_INPUT)
    conn = feed(stream, [], eof=False)
    assert conn.frames == [] and not conn.buffer
