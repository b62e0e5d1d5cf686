"""Which UDP datapath a worker runs (docs/datapath.md): the compiled one when
``fastdns.datapath`` is ``compiled``, or ``auto`` and the extension ``fastdns.serve._cengine``
imports; else the Python one. Imports nothing that starts work: the supervisor and the CLI use
it (importing the extension creates nothing).
"""

from __future__ import annotations

from typing import Literal

from fastdns.config.schema import Config
from fastdns.errors import ConfigError

__all__ = ["check_datapath", "compiled_problem", "datapath_of"]

Running = Literal["compiled", "python"]

BUILD_HINT = (
    "build it with a C compiler and the Python headers: "
    "pip install --no-build-isolation -e . (docs/datapath.md), "
    "or set fastdns.datapath: python"
)


def compiled_problem() -> str | None:
    """Why the compiled datapath cannot run here; None when it can."""
    try:
        from fastdns.serve import _cengine  # noqa: F401  (creates nothing: a type, constants)
    except ImportError as e:
        return f"the compiled datapath (fastdns.serve._cengine) does not import: {e}"
    return None


def datapath_of(config: Config) -> Running:
    """The datapath that runs for ``config`` (``compiled`` only when it imports)."""
    if config.datapath == "python":
        return "python"
    return "compiled" if compiled_problem() is None else "python"


def check_datapath(config: Config) -> Running:
    """``datapath_of``, but a config error (exit 2) when ``compiled`` is asked for and cannot
    run."""
    if config.datapath == "compiled":
        problem = compiled_problem()
        if problem is not None:
            raise ConfigError([f"fastdns.datapath: compiled: {problem}; {BUILD_HINT}"])
    return datapath_of(config)
