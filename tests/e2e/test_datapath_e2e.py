"""Which UDP datapath the real ``fastdns serve`` runs (docs/datapath.md): said in the state
file and /metrics; ``python`` when configured; ``compiled`` without its extension is a config
error (exit 2), and ``auto`` then falls back to python.

The extension is hidden from a child by a ``sitecustomize`` on its PYTHONPATH whose import
hook refuses ``fastdns.serve._cengine``: nothing in fastdns knows about it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.metrics import scrape, total, value, wait_until
from support.server import REPO_ROOT, FastDNSProcess, prepare_config, run_cli
from support.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
HIDE = """import sys


class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "fastdns.serve._cengine":
            raise ImportError("hidden by the test")
        return None


sys.meta_path.insert(0, _Hide())
"""


def built() -> bool:
    return importlib.util.find_spec("fastdns.serve._cengine") is not None


def hidden_env(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "hide-cengine"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(HIDE)
    return {"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{folder}"}


def config(**fastdns: Any) -> dict[str, Any]:
    return {"fastdns": {"metrics": {"listen": f"{HOST}:0"}, **fastdns}}


@pytest.fixture(name="up")
def _up(upstream: FakeUpstream) -> FakeUpstream:
    upstream.add("hot.test", "A", "192.0.2.5")
    return upstream


def test_the_running_datapath_is_in_the_state_file_and_metrics(
    fastdns_factory: Any, up: FakeUpstream
) -> None:
    fdp = fastdns_factory(config(native={"enabled": False}), upstreams=[up])
    expected = os.environ.get("FASTDNS_TEST_DATAPATH") or ("compiled" if built() else "python")
    assert fdp.state["datapath"] == expected
    for _ in range(50):  # one miss, then cache hits: the fast lane (in C when compiled)
        assert fdp.query("hot.test").answer[0][0].address == "192.0.2.5"
    port = int(fdp.state["metrics_port"])
    samples = wait_until(
        lambda: scrape(HOST, port),
        lambda s: total(s, "fastdns_dns_requests_total") >= 50,
        what="50 requests counted",
    )
    assert total(samples, "fastdns_dns_requests_total") == 50
    assert value(samples, "fastdns_datapath_workers", datapath=expected) == 1
    assert total(samples, "fastdns_cache_hits_total") == 49
    in_c = value(samples, "fastdns_datapath_datagrams_total", handled_by="compiled")
    assert (in_c > 0) == (expected == "compiled")


def test_datapath_python_runs_python(fastdns_factory: Any) -> None:
    fdp = fastdns_factory(config(datapath="python"))
    assert fdp.state["datapath"] == "python"
    assert fdp.query("localhost").answer


@pytest.mark.skipif(not built(), reason="the compiled datapath is not built")
def test_datapath_compiled_runs_compiled(fastdns_factory: Any) -> None:
    fdp = fastdns_factory(config(datapath="compiled", datapath_batch=8))
    assert fdp.state["datapath"] == "compiled"
    assert fdp.query("localhost").answer


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_compiled_without_the_extension_is_a_config_error(tmp_path: Path, command: str) -> None:
    """``check-config`` says what ``serve`` would: the config cannot run on this install."""
    doc = prepare_config({"fastdns": {"datapath": "compiled"}}, tmp_path)
    path = tmp_path / "fastdns.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = run_cli(command, str(path), cwd=tmp_path, env=hidden_env(tmp_path))
    assert out.returncode == 2, out.stderr
    assert "fastdns.datapath" in out.stderr and "hidden by the test" in out.stderr
    assert "pip install" in out.stderr  # how to build it


def test_auto_without_the_extension_runs_python(tmp_path: Path) -> None:
    with FastDNSProcess(
        {"fastdns": {"datapath": "auto"}}, tmp_path, env=hidden_env(tmp_path)
    ) as fdp:
        assert fdp.state["datapath"] == "python"
        assert fdp.query("localhost").answer
