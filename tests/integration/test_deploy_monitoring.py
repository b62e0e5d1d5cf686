"""deploy/prometheus and deploy/grafana: promtool validates the scrape config and the alerting
rules (and runs the rules' unit tests); every metric they use is one fastdns exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fastdns.metrics.definitions import BY_NAME

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "fastdns.json"
METRIC = re.compile(r"\bfastdns_[a-z0-9_]+")

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )


def rule_files() -> list[Path]:
    return sorted(
        p
        for p in PROMETHEUS.glob("*.yml")
        if p.name != "prometheus.yml" and not p.name.endswith(".test.yml")
    )


@needs_promtool
def test_promtool_check_config() -> None:
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    files = rule_files()
    assert files
    proc = promtool("check", "rules", *(p.name for p in files))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    tests = sorted(p.name for p in PROMETHEUS.glob("*.test.yml"))
    assert tests
    proc = promtool("test", "rules", *tests)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def exported(name: str) -> bool:
    if name in BY_NAME:
        return True
    for suffix in ("_bucket", "_count", "_sum"):
        base = name.removesuffix(suffix)
        if base != name and base in BY_NAME and BY_NAME[base].kind == "histogram":
            return True
    return False


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in doc["panels"]:
        for target in panel.get("targets", ()):
            exprs.append(target["expr"])
    for var in doc["templating"]["list"]:
        if isinstance(var.get("query"), dict):
            exprs.append(var["query"]["query"])
    return exprs


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    texts = [p.read_text() for p in rule_files()] + dashboard_exprs()
    used = {name for text in texts for name in METRIC.findall(text)}
    assert len(used) > 10
    assert sorted(n for n in used if not exported(n)) == []


def test_dashboard_shape() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] == "fastdns"
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for topic in ("queries per second", "latency", "rcode", "cache", "fallback"):
        assert topic in titles
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
