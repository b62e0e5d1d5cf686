"""deploy/kubernetes renders offline (``kubectl kustomize``) into what node-local mode needs
(docs/nodelocal.md): checked on the rendered objects, not on the source files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastdns.config.load import build_config, known_keys

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"


def render(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render deploy/kubernetes (scripts/install installs it)")
    proc = subprocess.run(
        [kubectl, "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": "/nonexistent"},  # offline: no cluster is asked
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def config_of(docs: list[dict[str, Any]], daemonset: dict[str, Any]) -> dict[str, Any]:
    """The fastdns config the DaemonSet mounts (from its ConfigMap)."""
    spec = daemonset["spec"]["template"]["spec"]
    container = spec["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in spec["volumes"] if v["name"] == "config")
    cm = next(
        c
        for c in by_kind(docs, "ConfigMap")
        if c["metadata"]["name"] == volume["configMap"]["name"]
    )
    (key,) = cm["data"]
    assert container["args"] == [f"{mount['mountPath']}/{key}"]
    doc: dict[str, Any] = yaml.safe_load(cm["data"][key])
    return doc


def check_daemonset(docs: list[dict[str, Any]], ds: dict[str, Any]) -> dict[str, Any]:
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "Default"
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["capabilities"] == {"add": ["NET_ADMIN"]}
    assert not security.get("privileged") and "hostPID" not in spec
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    nodelocal = config_of(docs, ds)["fastdns"]["nodelocal"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe == {
        "host": nodelocal["addresses"][0],
        "path": "/health",
        "port": nodelocal["health_port"],
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["xtables-lock"] == "/run/xtables.lock"
    assert volumes["xtables-lock"]["hostPath"] == {
        "path": "/run/xtables.lock",
        "type": "FileOrCreate",
    }
    config = config_of(docs, ds)["fastdns"]
    metrics_port = int(config["metrics"]["listen"].rsplit(":", 1)[1])
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"} in container[
        "ports"
    ]
    return config


def check_services(docs: list[dict[str, Any]]) -> None:
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    metrics = services["fastdns-metrics"]
    assert metrics["spec"]["clusterIP"] == "None"
    assert metrics["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    upstream = services["kube-dns-upstream"]
    assert upstream["spec"]["selector"] == {"k8s-app": "kube-dns"}
    assert {p["protocol"] for p in upstream["spec"]["ports"]} == {"UDP", "TCP"}
    assert all(d["metadata"].get("namespace") == "kube-system" for d in docs)


def test_base_renders_a_node_local_daemonset() -> None:
    docs = render(DEPLOY)
    (ds,) = by_kind(docs, "DaemonSet")
    config = check_daemonset(docs, ds)
    assert config["nodelocal"]["enabled"] is True and config["nodelocal"]["teardown"] is True
    check_services(docs)


def test_ha_overlay_renders_two_daemonsets_sharing_the_address() -> None:
    docs = render(DEPLOY / "overlays" / "ha")
    daemonsets = by_kind(docs, "DaemonSet")
    assert sorted(d["metadata"]["name"] for d in daemonsets) == ["fastdns-a", "fastdns-b"]
    configs = [check_daemonset(docs, ds) for ds in daemonsets]
    assert all(c["nodelocal"]["teardown"] is False for c in configs)
    assert configs[0]["nodelocal"]["addresses"] == configs[1]["nodelocal"]["addresses"]
    assert configs[0]["nodelocal"]["health_port"] != configs[1]["nodelocal"]["health_port"]
    assert configs[0]["metrics"]["listen"] != configs[1]["metrics"]["listen"]
    selectors = [d["spec"]["selector"]["matchLabels"] for d in daemonsets]
    assert selectors[0] != selectors[1]  # each DaemonSet owns only its own pods
    check_services(docs)


@pytest.mark.parametrize("path", ["", "overlays/ha"])
def test_example_configs_load(path: str) -> None:
    if "fastdns.forward.domains" not in known_keys():
        pytest.skip("routes not merged")
    docs = render(DEPLOY / path)
    for ds in by_kind(docs, "DaemonSet"):
        doc = config_of(docs, ds)
        text = yaml.safe_dump(doc).replace("__KUBE_DNS_UPSTREAM__", "10.96.0.11")
        config = build_config(yaml.safe_load(text))
        assert config.nodelocal.enabled and config.listen == "169.254.20.10"


def test_entrypoint_fills_in_the_kube_dns_upstream(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "fastdns"
    fake.write_text('#!/bin/sh\necho "$@"\ncat "$2"\n')
    fake.chmod(0o755)
    source = tmp_path / "fastdns.yaml"
    source.write_text('servers: ["tcp://__KUBE_DNS_UPSTREAM__"]\n')
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FASTDNS_RUNTIME_DIR": str(tmp_path / "run"),
        "KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11",
    }
    script = str(DEPLOY / "entrypoint.sh")
    proc = subprocess.run(
        [script, str(source)], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f'serve {tmp_path}/run/fastdns.yaml\nservers: ["tcp://10.96.0.11"]\n'
    env["KUBE_DNS_UPSTREAM_SERVICE_HOST"] = "fd00:96::11"
    proc = subprocess.run(
        [script, str(source)], env=env, capture_output=True, text=True, timeout=10
    )
    assert '"tcp://[fd00:96::11]"' in proc.stdout
    del env["KUBE_DNS_UPSTREAM_SERVICE_HOST"]
    proc = subprocess.run(
        [script, str(source)], env=env, capture_output=True, text=True, timeout=10
    )
    assert proc.returncode == 2 and "kube-dns-upstream" in proc.stderr
