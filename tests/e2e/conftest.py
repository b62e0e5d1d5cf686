"""Module-scoped fixtures for e2e tests: one FakeUpstream set and one ``fastdns serve`` per module.

Starting fastdns costs a fraction of a second; a module that asks many questions of the same
config shares one process through these (``mod_fastdns_factory``) instead of the function-scoped
``fastdns_factory``. Tests sharing a process must not depend on each other's state: use distinct
names, and ``FakeUpstream.clear()``/``reset()`` when a test reads the query log or sets behaviours.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fixtures import FastDNSFactory, ResolvConfWriter, UpstreamFactory


@pytest.fixture(name="mod_tmp", scope="module")
def _mod_tmp(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(name="mod_upstream_factory", scope="module")
def _mod_upstream_factory() -> Iterator[UpstreamFactory]:
    factory = UpstreamFactory()
    yield factory
    errors = factory.close()
    if errors:
        pytest.fail("FakeUpstream serving thread raised:\n" + "\n".join(errors))


@pytest.fixture(name="mod_resolv_conf", scope="module")
def _mod_resolv_conf(mod_tmp: Path) -> ResolvConfWriter:
    return ResolvConfWriter(mod_tmp)


@pytest.fixture(name="mod_fastdns_factory", scope="module")
def _mod_fastdns_factory(mod_tmp: Path) -> Iterator[FastDNSFactory]:
    factory = FastDNSFactory(mod_tmp)
    yield factory
    factory.close()
