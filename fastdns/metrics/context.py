"""The label values a process knows about itself: the ``server`` and ``family`` labels every
worker series carries, and the versions ``fastdns_build_info`` exports.

Runs in: the metrics process. May import: ``fastdns.config``.
"""

from __future__ import annotations

import ipaddress
import sys

from fastdns import __version__
from fastdns.config.schema import Config


def default_server(config: Config) -> str:
    """CoreDNS's ``server`` label, ``dns://IP:PORT``, before any worker reported its port."""
    host = f"[{config.listen}]" if ":" in config.listen else config.listen
    return f"dns://{host}:{config.udp_port}"


def address_family(listen: str) -> str:
    """CoreDNS ``family``: "1" for IPv4, "2" for IPv6; a worker serves one listen address."""
    try:
        return "2" if ipaddress.ip_address(listen.split("%", 1)[0]).version == 6 else "1"
    except ValueError:
        return "1"


def build_versions() -> dict[str, str]:
    """Versions for fastdns_build_info. pycares is imported (no Channel, so no c-ares thread)."""
    versions = {
        "version": __version__,
        "python": ".".join(map(str, sys.version_info[:3])),
        "pycares": "unknown",
        "cares": "unknown",
    }
    try:
        import pycares

        versions["pycares"] = str(pycares.__version__)
        versions["cares"] = str(getattr(pycares, "ARES_VERSION", "unknown"))
    except Exception:  # pragma: no cover - pycares is a dependency
        pass
    return versions
