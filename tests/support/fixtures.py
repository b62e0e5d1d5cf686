"""Shared pytest fixtures, loaded by ``tests/conftest.py`` through ``pytest_plugins``.

Everything a fixture creates is closed at teardown, and a FakeUpstream whose serving thread
raised fails the test that used it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from support.server import FastDNSProcess, write_resolv_conf
from support.upstream import FakeUpstream, next_address


class UpstreamFactory:
    """``make(**kwargs)`` -> a FakeUpstream on a fresh 127.0.0.x, port 53 unless told."""

    def __init__(self) -> None:
        self.made: list[FakeUpstream] = []

    def __call__(self, address: str | None = None, port: int = 53, **kwargs: Any) -> FakeUpstream:
        up = FakeUpstream(address or next_address(), port, **kwargs)
        self.made.append(up)
        return up

    def close(self) -> list[str]:
        """Close every fake; return the tracebacks their serving threads recorded."""
        for up in self.made:
            up.close()
        return [f"{up!r}:\n{error}" for up in self.made for error in up.errors]


class ResolvConfWriter:
    """``write(*servers, search=(), options=(), name="resolv.conf")`` -> the path, in tmp_path.

    Servers are loopback addresses or FakeUpstreams on port 53. Writing the same name again
    replaces the file atomically, as a VPN client would.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(
        self,
        *servers: str | FakeUpstream,
        search: Sequence[str] = (),
        options: Sequence[str] = (),
        name: str = "resolv.conf",
    ) -> Path:
        return write_resolv_conf(self.directory / name, *servers, search=search, options=options)


class FastDNSFactory:
    """``make(config=None, *, upstreams=(), **kwargs)`` -> a ready FastDNSProcess.

    ``upstreams`` (FakeUpstreams or loopback addresses) become the nameservers of a generated
    resolv.conf unless the config names its own ``fastdns.resolv_conf``. Other keyword
    arguments go to ``FastDNSProcess``.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[FastDNSProcess] = []
        self._resolv = ResolvConfWriter(tmp_path)

    def __call__(
        self,
        config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        upstreams: Sequence[str | FakeUpstream] = (),
        **kwargs: Any,
    ) -> FastDNSProcess:
        if upstreams:
            if config is not None and not isinstance(config, Mapping):
                raise TypeError("upstreams= needs a config mapping (or none), not a file")
            doc = dict(config or {})
            section = dict(doc.get("fastdns") or {})
            if "resolv_conf" in section:
                raise ValueError("give either upstreams= or fastdns.resolv_conf, not both")
            path = self._resolv(*upstreams, name=f"resolv-{len(self.made)}.conf")
            doc["fastdns"] = {**section, "resolv_conf": str(path)}
            config = doc
        process = FastDNSProcess(config if config is not None else {}, self.tmp_path, **kwargs)
        self.made.append(process)
        return process

    def close(self) -> None:
        for process in self.made:
            process.close()


@pytest.fixture(name="upstream_factory")
def _upstream_factory() -> Iterator[UpstreamFactory]:
    factory = UpstreamFactory()
    yield factory
    errors = factory.close()
    if errors:
        pytest.fail("FakeUpstream serving thread raised:\n" + "\n".join(errors))


@pytest.fixture(name="upstream")
def _upstream(upstream_factory: UpstreamFactory) -> FakeUpstream:
    """A FakeUpstream on 127.0.0.x:53 that is authoritative for ``test.`` (SOA minimum 60)."""
    up = upstream_factory()
    up.add_zone("test")
    return up


@pytest.fixture(name="resolv_conf")
def _resolv_conf(tmp_path: Path) -> ResolvConfWriter:
    return ResolvConfWriter(tmp_path)


@pytest.fixture(name="fastdns_factory")
def _fastdns_factory(tmp_path: Path) -> Iterator[FastDNSFactory]:
    factory = FastDNSFactory(tmp_path)
    yield factory
    factory.close()
