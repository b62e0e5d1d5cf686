"""Writing a small JSON document atomically: the one writer for the supervisor's state file
and the rules process's ports file (write to a temporary name, then ``os.replace``).

Runs in: the supervisor and the rules process.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any


def write_json(path: str, doc: dict[str, Any], *, sync: bool = True) -> str:
    """Write ``doc`` as one JSON line to ``path`` atomically (a reader sees the old or the new
    document, never a part); ``sync``: fsync before the rename. Returns the line."""
    line = json.dumps(doc, sort_keys=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(line + "\n")
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    return line


def write_state(
    path: str | None, state: dict[str, Any], *, echo: bool = True, sync: bool = True
) -> None:
    """Print ``state`` as one JSON line (``echo``) and write it atomically to ``path``."""
    if echo:
        with contextlib.suppress(OSError, ValueError):  # nobody reads stdout any more
            print(json.dumps(state, sort_keys=True), flush=True)
    if path:
        write_json(path, state, sync=sync)
