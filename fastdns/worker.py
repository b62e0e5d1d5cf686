"""One serving process: a uvloop loop, UDP and TCP servers, the pipeline and its upstreams.

Created only inside the process that serves (never in a supervisor that will fork): the loop,
the upstream sockets and the c-ares channel all belong to this process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

from fastdns import wire
from fastdns.config import Config
from fastdns.pipeline import NativeLookup, Pipeline
from fastdns.resolvconf import FileWatch, UpstreamPlan, plan_upstreams, read_resolv_conf
from fastdns.server import ServerState, TCPServer, UDPServer
from fastdns.stats import WorkerStats
from fastdns.upstream import Forwarder

logger = logging.getLogger(__name__)

TICK = 1.0  # seconds between checks of resolv.conf and the hosts file (issue: ~1-2 s)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when importable (it is a dependency), else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def describe_plan(plan: UpstreamPlan, config: Config) -> str:
    servers = ", ".join(h for h, _ in plan.servers) or "none"
    if plan.source == "dns":
        return f"hostResolver is disabled: forwarding every query to the dns: servers ({servers})"
    if plan.source == "fallback":
        return (f"{config.resolv_conf} has no usable nameserver: using the fallback servers "
                f"({servers})")  # fmt: skip
    if plan.source == "none":
        return (f"{config.resolv_conf} has no usable nameserver and no fallback is configured: "
                "forwarded queries will get SERVFAIL")  # fmt: skip
    return f"upstream nameservers from {config.resolv_conf}: {servers}"


class Worker:
    """Serves on two already-bound sockets until ``stop()``; then drains and returns."""

    def __init__(
        self,
        config: Config,
        udp_sock: socket.socket,
        tcp_sock: socket.socket,
        *,
        slot: int = 0,
        stats: WorkerStats | None = None,
        native_factory: Callable[[Worker], NativeLookup | None] | None = None,
        on_tick: Callable[[Worker], None] | None = None,
    ) -> None:
        self.config = config
        self.udp_sock = udp_sock
        self.tcp_sock = tcp_sock
        self.slot = slot
        self.stats = stats or WorkerStats()
        self.native_factory = native_factory
        self.on_tick = on_tick
        self.stop_event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.forwarder: Forwarder | None = None
        self.pipeline: Pipeline | None = None
        self.state: ServerState | None = None
        self.resolv_watch = FileWatch(config.resolv_conf)
        self.reload_hooks: list[Callable[[], None]] = []

    @property
    def own_udp_port(self) -> int:
        return int(self.udp_sock.getsockname()[1])

    def replan(self, *, log: bool = True) -> UpstreamPlan:
        assert self.forwarder is not None
        plan = plan_upstreams(self.config, read_resolv_conf(self.config.resolv_conf),
                              self.own_udp_port)  # fmt: skip
        changed = plan.servers != self.forwarder.plan.servers or plan.source != (
            self.forwarder.plan.source)  # fmt: skip
        self.forwarder.set_plan(plan)
        if log and changed:
            level = logging.WARNING if plan.source in ("fallback", "none") else logging.INFO
            logger.log(level, "%s", describe_plan(plan, self.config))
        return plan

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.stop_event = asyncio.Event()
        self.forwarder = Forwarder(loop, self.stats, self.config.upstream_timeout)
        self.replan()
        native = self.native_factory(self) if self.native_factory else None
        self.pipeline = Pipeline(self.config, loop, self.stats, self.forwarder, native)
        self.state = ServerState(self.config, self.pipeline, self.stats)
        state = self.state
        self.udp_transport, _ = await loop.create_datagram_endpoint(
            lambda: UDPServer(state), sock=self.udp_sock
        )
        self.tcp_server = await loop.create_server(lambda: TCPServer(state), sock=self.tcp_sock)
        self.tick_task = loop.create_task(self._tick())

    async def _tick(self) -> None:
        assert self.stop_event is not None and self.pipeline is not None
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), TICK)
            except TimeoutError:
                pass
            try:
                self.check_files()
                if self.on_tick is not None:
                    self.on_tick(self)
            except Exception:
                logger.exception("periodic check failed")

    def check_files(self) -> None:
        """Pick up resolv.conf and hosts-file changes without a restart (VPNs, lima#3101)."""
        assert self.pipeline is not None
        changed = False
        if self.resolv_watch.changed():
            self.replan()
            changed = True
        if self.pipeline.hosts_file.refresh():
            logger.info("reloaded %s", self.config.hosts_file)
            changed = True
        if changed:
            for hook in self.reload_hooks:
                hook()

    def stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()

    async def drain(self) -> None:
        """Stop accepting, finish in-flight queries up to graceful_timeout, close."""
        assert self.state is not None and self.forwarder is not None
        state = self.state
        state.draining = True
        self.tcp_server.close()
        for conn in list(state.tcp_connections):
            conn.close_when_idle()
        if state.tasks:
            await asyncio.wait(set(state.tasks), timeout=self.config.graceful_timeout)
        for task in list(state.tasks):
            task.cancel()
        self.tick_task.cancel()
        self.udp_transport.close()
        for conn in list(state.tcp_connections):
            if conn.transport is not None:
                conn.transport.close()
        self.forwarder.close()

    async def run(self, on_ready: Callable[[Worker], None] | None = None) -> None:
        await self.setup()
        assert self.stop_event is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        if on_ready is not None:
            on_ready(self)
        await self.stop_event.wait()
        logger.info("stopping: draining in-flight queries (up to %.1fs)",
                    self.config.graceful_timeout)  # fmt: skip
        await self.drain()


def ready_info(worker: Worker) -> dict[str, Any]:
    return {
        "udp_port": worker.udp_sock.getsockname()[1],
        "tcp_port": worker.tcp_sock.getsockname()[1],
        "listen": worker.config.listen,
    }


def serve_one(
    config: Config,
    udp_sock: socket.socket,
    tcp_sock: socket.socket,
    on_ready: Callable[[Worker], None],
    **kwargs: Any,
) -> None:
    """Run one Worker on a fresh uvloop loop until SIGTERM/SIGINT."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(Worker(config, udp_sock, tcp_sock, **kwargs).run(on_ready))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


__all__ = ["Worker", "new_event_loop", "ready_info", "serve_one", "wire"]
