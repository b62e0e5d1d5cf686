"""One exception tree: every exception class fastdns defines derives from ``FastDNSError``
(fastdns/errors.py), so the edges (the DNS server, the CLI) can tell ours from a bug.

``HaltServer`` is a ``BaseException`` on purpose (it stops the service and must pass every
``except Exception``); it is the one class outside the tree.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import fastdns
from fastdns.errors import FastDNSError, HaltServer

PENDING: set[str] = set()  # classes allowed outside the tree for now (none)


def defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a fastdns module: qualified name -> class."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(fastdns.__path__, "fastdns."):
        if info.name == "fastdns.__main__":  # runs the CLI when imported
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found[f"{info.name}.{cls.__qualname__}"] = cls
    return found


def test_every_exception_derives_from_the_root() -> None:
    found = defined_exceptions()
    outside = sorted(
        name
        for name, cls in found.items()
        if not issubclass(cls, FastDNSError) and cls is not HaltServer
    )
    assert outside == sorted(PENDING & set(found)), outside
    still_pending = {n for n in PENDING if n in found and issubclass(found[n], FastDNSError)}
    assert not still_pending, f"in the tree now, remove from PENDING: {still_pending}"


def test_the_walk_sees_the_exceptions() -> None:
    """Guards the walk: classes from the bottom, the middle and the top of the package."""
    found = defined_exceptions()
    for name in (
        "fastdns.dns.wire.Malformed",
        "fastdns.errors.ConfigError",
        "fastdns.rules.cli.CommandError",
        "fastdns.resolve.native.cares.QueryCacheUnsupported",
        "fastdns.supervise.arbiter._Stop",
    ):
        assert name in found, name
