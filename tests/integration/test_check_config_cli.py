"""``fastdns check-config`` as a subprocess: a bad config exits 2 and names the bad key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_check_config_exits_2_naming_the_bad_cidr(tmp_path: Path) -> None:
    path = tmp_path / "lima.yaml"
    path.write_text("fastdns:\n  acl:\n    allow: [10.0.0.0/8, 300.1.2.0/24]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fastdns", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "fastdns.acl.allow[1]" in proc.stderr and "300.1.2.0/24" in proc.stderr


def test_check_config_exits_2_on_a_bad_route(tmp_path: Path) -> None:
    path = tmp_path / "lima.yaml"
    path.write_text(
        "fastdns:\n  forward:\n    domains:\n"
        "      - domains: [corp.example]\n        servers: [vpn.corp.example]\n"
        "      - domains: ['*.lab.example']\n        servers: []\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fastdns", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "fastdns.forward.domains[0].servers[0]" in err and "not an IP address" in err
    assert "fastdns.forward.domains[1].domains[0]" in err
    assert "fastdns.forward.domains[1].servers" in err and "non-empty" in err
