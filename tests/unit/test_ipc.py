"""The control-pipe protocol between children and the supervisor (fastdns.ipc)."""

from __future__ import annotations

import json
import os

from fastdns.ipc import ControlWriter, split_messages


def test_messages_split_on_newlines_and_keep_the_partial_tail() -> None:
    messages, rest = split_messages(b'{"ready": true}\n{"served"', b': 3}\n{"x": 1')
    assert messages == [{"ready": True}, {"served": 3}]
    assert rest == b'{"x": 1'
    messages, rest = split_messages(rest, b"}\n")
    assert messages == [{"x": 1}] and rest == b""


def test_garbage_from_a_child_is_skipped_not_fatal() -> None:
    messages, rest = split_messages(b"", b'not json\n[1, 2]\n\xff\xfe\n{"ok": 1}\n')
    assert messages == [{"ok": 1}] and rest == b""


def test_an_endless_line_does_not_grow_the_buffer_without_bound() -> None:
    _, rest = split_messages(b"", b"x" * 1_000_000)
    assert len(rest) <= 65536


def test_the_writer_never_blocks_and_notices_a_gone_reader() -> None:
    r, w = os.pipe()
    writer = ControlWriter(w)
    for i in range(20_000):  # far more than a pipe holds: extra messages are dropped
        writer.send(served=i)
    assert not writer.broken
    first = os.read(r, 4096).split(b"\n")[0]
    assert json.loads(first) == {"served": 0}
    os.close(r)
    writer.send(ready=True)
    assert writer.broken
    os.close(w)
