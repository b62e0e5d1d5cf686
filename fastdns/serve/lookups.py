"""What a worker resolves through besides raw forwarding, made in the serving process: the
c-ares native path and the host's NSS sources; and how its upstream plan is described in the
log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from fastdns.config.schema import Config
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.upstream import Forwarder
from fastdns.resolve.pipeline import NativeLookup, NssLookup
from fastdns.resolve.resolvconf import UpstreamPlan

__all__ = ["WorkerParts", "default_native_factory", "default_nss_factory", "describe_plan"]


class WorkerParts(Protocol):
    """What the factories use of a worker (fastdns/serve/worker.py ``Worker``)."""

    @property
    def config(self) -> Config: ...
    @property
    def stats(self) -> WorkerStats: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...
    @property
    def forwarder(self) -> Forwarder | None: ...
    @property
    def reload_hooks(self) -> list[Callable[[], None]]: ...


def describe_plan(plan: UpstreamPlan, config: Config) -> str:
    text = _describe_plan(plan, config)
    tls = config.forward.tls
    if tls.enabled and plan.servers:
        checked = f"certificate name {tls.tls_name}" if tls.verify else "NOT verified"
        text += f" (over TLS to port {tls.port}, {checked})"
    return text


def _describe_plan(plan: UpstreamPlan, config: Config) -> str:
    servers = ", ".join(h for h, _ in plan.servers) or "none"
    if plan.source == "dns":
        return f"hostResolver is disabled: forwarding every query to the dns: servers ({servers})"
    if plan.source == "fallback":
        return (
            f"{config.resolv_conf} has no usable nameserver: using the fallback servers ({servers})"
        )
    if plan.source == "none":
        return (
            f"{config.resolv_conf} has no usable nameserver and no fallback is configured: "
            "forwarded queries will get SERVFAIL"
        )
    return f"upstream nameservers from {config.resolv_conf}: {servers}"


def default_native_factory(worker: WorkerParts) -> NativeLookup | None:
    """The c-ares native path (fastdns.native) when hostResolver and fastdns.native are on.

    Imported here, in the serving process, never at module level: the supervisor imports this
    module and must not load pycares (a Channel made before fork hangs in the child).
    """
    if not (worker.config.enabled and worker.config.native.enabled):
        return None
    if worker.config.forward.tls.enabled:
        # c-ares speaks plain DNS only: with DNS over TLS to the upstreams nothing may go to
        # them in clear text, so every query is forwarded (docs/tls.md).
        return None
    from fastdns.resolve.native.resolver import NativeResolver

    forwarder, loop = worker.forwarder, worker.loop
    assert forwarder is not None and loop is not None  # built in Worker.setup, before this
    resolver = NativeResolver(worker.config, loop, worker.stats, lambda: forwarder.plan, forwarder)
    worker.reload_hooks.append(resolver.reload)  # new resolv.conf or hosts: a new channel
    return resolver


def default_nss_factory(worker: WorkerParts) -> NssLookup | None:
    """The host's NSS sources for A/AAAA (fastdns.native.nss), or None."""
    from fastdns.resolve.native.nss import start_nss

    assert worker.loop is not None
    return start_nss(worker.config, worker.loop, worker.stats)
