"""Messages between fastdns processes: the control pipe and the status datagrams.

Control pipe (child -> supervisor, one per child): JSON objects, one per line, each well under
PIPE_BUF so a write is atomic. A worker writes ``{"ready": true, "served": n, "inflight": k}``
once it serves and then once per tick from inside its event loop (the heartbeat: a stalled
loop falls silent); any child may write ``{"boot_error": "why"}`` just before exiting with
``ExitCode.BOOT_ERROR``; the metrics process may write ``{"metrics_port": p}``.

Status datagrams (any process -> the metrics process): JSON over an AF_UNIX SOCK_DGRAM socket
that the metrics process binds at a path the supervisor chooses (the contract is
``stats.py``). Senders never block and ignore every send error: metrics may be down.

Standard library only: the supervisor imports this module.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

STATUS_SNDBUF = 1 << 20  # a worker snapshot with many label sets can exceed the default 208 KiB


class ControlWriter:
    """The child's end of its control pipe; never blocks (a full pipe drops the message)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken = False  # the supervisor is gone (EPIPE)
        if fd >= 0:
            os.set_blocking(fd, False)

    def send(self, **fields: Any) -> None:
        if self.fd < 0 or self.broken:
            return
        line = json.dumps(fields, separators=(",", ":")).encode() + b"\n"
        try:
            os.write(self.fd, line)
        except BlockingIOError:
            pass  # the supervisor is busy; the next tick sends a fresher one
        except BrokenPipeError:
            self.broken = True
        except OSError:
            pass


def split_messages(buffer: bytes, data: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """Append ``data`` to ``buffer``; return the complete JSON objects and the leftover bytes.

    Lines that are not JSON objects are skipped: a child must not be able to crash its
    supervisor.
    """
    buffer += data
    *lines, rest = buffer.split(b"\n")
    messages = []
    for line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return messages, rest[-65536:]


class StatusSender:
    """Sends JSON status datagrams to the metrics process's socket at ``path`` (or nowhere)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.sock: socket.socket | None = None

    def send(self, payload: dict[str, Any]) -> None:
        if not self.path:
            return
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.sock.setblocking(False)
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STATUS_SNDBUF)
                except OSError:
                    pass
            self.sock.sendto(json.dumps(payload, separators=(",", ":")).encode(), self.path)
        except OSError:
            pass  # no metrics process right now, or its queue is full: never block, never fail

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
