"""One serving process: a uvloop loop, UDP and TCP servers, the pipeline and its upstreams.

Created only inside the process that serves (never in a supervisor that will fork): the loop,
the upstream sockets and the c-ares channel all belong to this process.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from fastdns.config.schema import Config
from fastdns.dns import loopguard, wire
from fastdns.errors import BootError, ExitCode
from fastdns.ipc import ControlWriter, StatusSender
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward import sockmark
from fastdns.resolve.forward.attempts import TlsTarget
from fastdns.resolve.forward.dot import TlsPool, client_context
from fastdns.resolve.forward.resolverdir import ResolverDir
from fastdns.resolve.forward.routes import merge_routes
from fastdns.resolve.forward.upstream import Forwarder
from fastdns.resolve.pipeline import NativeLookup, NssLookup, Pipeline
from fastdns.resolve.resolvconf import (
    FileWatch,
    loops_back,
    plan_upstreams,
    read_resolv_conf,
    same_plan,
)
from fastdns.serve.choice import datapath_of
from fastdns.serve.datapath import Datapath, PyDatapath
from fastdns.serve.launch import WorkerLaunch
from fastdns.serve.lookups import default_native_factory, default_nss_factory, describe_plan
from fastdns.serve.reporter import WorkerReporter
from fastdns.serve.udp import ServerState, TCPServer
from fastdns.system.files import GraceHold
from fastdns.system.process import die_with_parent, drop_privileges
from fastdns.system.sockets import bind_tcp, bind_udp, leave_reuseport_group, queued_bytes

logger = logging.getLogger(__name__)

TICK = 1.0  # seconds between checks of resolv.conf and the hosts file (issue: ~1-2 s)
# Seconds between reads of a file whose empty read is being held (fastdns.files): the writer
# of an in-place rewrite is about to finish. Polling only once a TICK could land in the blank
# every time (a file rewritten every 0.5 s, bench/file_rewrites.py) and wrongly give up after
# the grace.
RECHECK = 0.1
DRAIN_WAIT = 0.05  # seconds between looks at in-flight queries while draining
DRAIN_POLL = 0.005  # seconds between looks at a detached UDP socket's queue while draining


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when importable (it is a dependency), else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def raise_nofile_limit() -> None:
    """The soft RLIMIT_NOFILE up to the hard one: upstream queries leave from many sockets
    (``fastdns.resolve.forward.upsock``, up to POOL_SIZE per upstream plus retired ones in
    flight)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (OSError, ValueError) as e:  # then fewer sockets: upsock counts "fallback"
        logger.warning("could not raise the open-file limit: %s", e)


class Worker:
    """Serves on already-bound sockets until ``stop()``; then drains and returns.

    ``udp_sock`` and ``tcp_sock`` are on ``config.listen``; ``more_socks`` are the (UDP, TCP)
    pairs of the other addresses (node-local mode, ``Config.listen_addresses``). Every UDP
    socket gets its own datapath, every TCP socket its own server, all over the one
    ``ServerState`` (pipeline, cache, gate, in-flight queries) of this worker.
    ``native_factory`` builds the pipeline's native hook (None: forward everything raw).
    """

    def __init__(
        self,
        config: Config,
        udp_sock: socket.socket,
        tcp_sock: socket.socket,
        *,
        more_socks: Sequence[tuple[socket.socket, socket.socket]] = (),
        slot: int = 0,
        stats: WorkerStats | None = None,
        native_factory: Callable[[Worker], NativeLookup | None] | None = default_native_factory,
        nss_factory: Callable[[Worker], NssLookup | None] | None = default_nss_factory,
        on_tick: Callable[[Worker], None] | None = None,
    ) -> None:
        self.config = config
        self.udp_sock = udp_sock
        self.tcp_sock = tcp_sock
        self.listeners = [(udp_sock, tcp_sock), *more_socks]
        self.slot = slot
        self.stats = stats or WorkerStats()
        self.native_factory = native_factory
        self.nss_factory = nss_factory
        self.on_tick = on_tick
        self.stop_event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.forwarder: Forwarder | None = None
        self.pipeline: Pipeline | None = None
        self.state: ServerState | None = None
        self.datapath: Datapath | None = None  # the UDP per-packet path (serve/datapath.py)
        self.datapaths: list[Datapath] = []  # one per UDP socket; ``datapath`` is the first
        self.tcp_servers: list[asyncio.Server] = []
        self.resolv_watch = FileWatch(config.resolv_conf)
        self.resolv_hold = GraceHold(config.resolv_conf, "nameservers")
        self._plan_told = False  # replan() has logged a plan
        # fastdns.forward.resolver_dir (docs/routing.md); warnings from one worker only.
        self.resolver_dir = (
            ResolverDir(config.forward.resolver_dir, log=slot == 0)
            if config.forward.resolver_dir
            else None
        )
        self._routes_told = False
        self.reload_hooks: list[Callable[[], None]] = []
        self._recheck: asyncio.TimerHandle | None = None

    @property
    def own_udp_port(self) -> int:
        return int(self.udp_sock.getsockname()[1])

    @property
    def server_label(self) -> str:
        """CoreDNS's ``server`` metric label: ``dns://IP:PORT``."""
        host = self.config.listen
        return (
            f"dns://[{host}]:{self.own_udp_port}"
            if ":" in host
            else (f"dns://{host}:{self.own_udp_port}")
        )

    def sample_gauges(self) -> None:
        """Point-in-time values for the metrics process, taken per tick (never per query)."""
        gauges = self.stats.gauges
        for key in [
            k
            for k in gauges
            if k[0] in ("upstream_up", "upstream_source", "upstream_sockets", "tls_connections")
        ]:
            del gauges[key]  # upstreams come and go with resolv.conf
        if self.state is not None:
            gauges[("inflight",)] = self.state.inflight
            gauges[("tcp_connections",)] = len(self.state.tcp_connections)
        if self.pipeline is not None and self.pipeline.cache is not None:
            self.pipeline.cache.sample(gauges)
        if self.forwarder is not None:
            plan, now = self.forwarder.plan, self.forwarder.clock()
            gauges[("upstream_source", plan.source)] = 1
            for server in {*plan.servers, *self.forwarder.routes.servers()}:
                health = self.forwarder.health.get(server)
                up = 0 if health is not None and health.down(now) else 1
                gauges[("upstream_up", f"{server[0]}:{server[1]}")] = up
            for ch in self.forwarder.channels.values():
                gauges[("upstream_sockets", ch.to)] = ch.open
            if self.forwarder.tls is not None:
                for server in self.forwarder.tls_servers():  # 0 while none is open
                    gauges[("tls_connections", f"{server[0]}:{server[1]}")] = 0
                for to, n in self.forwarder.tls.open_connections().items():
                    gauges[("tls_connections", to)] = n

    def replan(self, *, log: bool = True) -> bool:
        """Read resolv.conf and plan the upstreams again; True when the plan changed.

        An empty or unreadable resolv.conf is held for a while first (``resolv_hold``, see
        fastdns.files: a file rewritten in place is empty for a moment), and a rewrite that
        names the same servers and options is no change: the cache and the c-ares channel stay.
        """
        assert self.forwarder is not None
        resolv = read_resolv_conf(self.config.resolv_conf)
        if not self.resolv_hold.check(resolv.readable and bool(resolv.nameservers)):
            return False
        plan = plan_upstreams(self.config, resolv, self.own_udp_port)
        # The first plan is always told: an empty one equals the Forwarder's initial plan, and
        # "no nameserver, no fallback" must still be warned about (docs/lima-differences.md).
        if self._plan_told and same_plan(plan, self.forwarder.plan):
            return False
        self.forwarder.set_plan(plan)
        if log:
            self._plan_told = True
            level = logging.WARNING if plan.source in ("fallback", "none") else logging.INFO
            logger.log(level, "%s", describe_plan(plan, self.config))
        return True

    def reroute(self) -> bool:
        """Build the routes from fastdns.forward.domains and the resolver directory's files
        (read already); True when they changed (the cache must then be cleared)."""
        assert self.forwarder is not None
        own = self.own_udp_port
        from_dir = self.resolver_dir.routes if self.resolver_dir is not None else ()
        table, warnings = merge_routes(
            self.config.forward.domains,
            from_dir,
            lambda server: loops_back(self.config, server, own),
        )
        if self._routes_told and table.same(self.forwarder.routes):
            return False
        first = not self._routes_told
        self._routes_told = True
        self.forwarder.set_routes(table)
        if self.slot == 0:
            for w in warnings:
                logger.warning("%s", w)
            if table.routes or not first:
                names = ", ".join(d for r in table.routes for d in r.domains) or "none"
                logger.info("forwarding routes: %s", names)
        return True

    async def setup(self) -> None:
        raise_nofile_limit()
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.stop_event = asyncio.Event()
        self.forwarder = Forwarder(loop, self.stats, self.config.upstream_timeout)
        self.forwarder.tls = self._tls_pool(loop)
        tls = self.config.forward.tls
        if tls.enabled:  # the default upstreams over TLS: a target per server, made per plan
            self.forwarder.default_tls = TlsTarget("", tls.port, tls.tls_name, tls.verify)
        self.replan()
        if self.resolver_dir is not None:
            self.resolver_dir.refresh()
        self.reroute()
        native = self.native_factory(self) if self.native_factory else None
        nss = self.nss_factory(self) if self.nss_factory else None
        self.pipeline = Pipeline(self.config, loop, self.stats, self.forwarder, native, nss)
        if self.config.rules.enabled:  # the rules process probes for forwarding loops
            self.pipeline.loop_suffix = loopguard.probe_suffix(
                loopguard.instance_token(self.config.listen, self.own_udp_port)
            )
        self.state = ServerState(self.config, self.pipeline, self.stats)
        if self.pipeline.cache is not None:
            # New upstreams (a VPN came up) or a new hosts file: cached answers, negative
            # ones above all, may be wrong now.
            self.reload_hooks.append(self.pipeline.cache.clear)
        state = self.state
        for udp_sock, tcp_sock in self.listeners:
            datapath = self.make_datapath(state)
            self.datapaths.append(datapath)
            self.reload_hooks.append(datapath.clear)
            datapath.start(loop, udp_sock)
            server = await loop.create_server(lambda: TCPServer(state), sock=tcp_sock)
            self.tcp_servers.append(server)
        self.datapath, self.tcp_server = self.datapaths[0], self.tcp_servers[0]
        self.tick_task = loop.create_task(self._tick())

    def _tls_pool(self, loop: asyncio.AbstractEventLoop) -> TlsPool:
        """The worker's DNS-over-TLS connections (docs/tls.md): idle until a TLS upstream is
        asked; its TLS contexts are made then, with ``fastdns.forward.tls.ca_file``."""
        tls = self.config.forward.tls
        return TlsPool(
            loop,
            self.stats,
            lambda verify: client_context(tls.ca_file, verify),
            tls.idle_timeout,
            self.config.deadline,
        )

    def make_datapath(self, state: ServerState) -> Datapath:
        """The UDP datapath ``fastdns.datapath`` names (docs/datapath.md), said in the stats."""
        kind = datapath_of(self.config)
        self.stats.gauges[("datapath_workers", kind)] = 1
        if kind == "compiled":
            from fastdns.serve.cdatapath import CDatapath  # only where the extension imports

            return CDatapath(state, self.config.datapath_batch)
        return PyDatapath(state)

    async def _tick(self) -> None:
        assert self.stop_event is not None and self.pipeline is not None
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), TICK)
            except TimeoutError:
                pass
            try:
                self.check_files()
                if self.forwarder is not None:
                    self.forwarder.sweep()
                if self.on_tick is not None:
                    self.on_tick(self)
            except Exception:
                logger.exception("periodic check failed")

    def check_files(self) -> None:
        """Pick up resolv.conf and hosts-file changes without a restart (VPNs, lima#3101)."""
        assert self.pipeline is not None
        changed = False
        # (while a blank read is held, read again at every tick: the grace may run out)
        if self.resolv_watch.changed() or self.resolv_hold.holding:
            changed = self.replan()
        if self.pipeline.hosts_file.refresh():
            logger.info("reloaded %s", self.config.hosts_file)
            changed = True
        # A route change clears the whole cache, as a resolv.conf change does: answers of the
        # names it moved may be anywhere in it (positive, negative, under an alias's key).
        if self.resolver_dir is not None and self.resolver_dir.refresh():
            changed = self.reroute() or changed
        if changed:
            for hook in self.reload_hooks:
                hook()
        holding = self.resolv_hold.holding or self.pipeline.hosts_file.hold_pending
        holding = holding or (self.resolver_dir is not None and self.resolver_dir.holding)
        if holding and self._recheck is None and self.loop is not None:
            self._recheck = self.loop.call_later(RECHECK, self._check_again)

    def _check_again(self) -> None:
        self._recheck = None
        if self.stop_event is not None and self.stop_event.is_set():
            return
        try:
            self.check_files()
        except Exception:
            logger.exception("periodic check failed")

    def stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()

    async def drain(self) -> None:
        """Stop accepting, finish in-flight queries up to graceful_timeout, close.

        UDP first leaves the SO_REUSEPORT group (``sockets.leave_reuseport_group``): new flows
        go to the other workers while this one still answers what its queue already holds,
        so a reload or a TTOU loses no datagram. Where it cannot leave (a wildcard address)
        it stops reading at once, as a single process does.
        """
        assert self.state is not None and self.forwarder is not None
        assert self.datapath is not None
        state, datapath = self.state, self.datapath
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.graceful_timeout
        udp_socks = [udp for udp, _ in self.listeners]
        # (every socket must leave, or none reads on: the datapaths share one ServerState)
        detached = all([leave_reuseport_group(sock) for sock in udp_socks])
        for each in self.datapaths:
            each.drain(stop_reading=not detached)
        for server in self.tcp_servers:
            server.close()
        for conn in list(state.tcp_connections):
            conn.close_when_idle()
        while detached and any(map(queued_bytes, udp_socks)) and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)  # the loop reads what is left in the queues
        # (one count for all datapaths: their queries are the shared state's)
        while datapath.inflight and (left := deadline - loop.time()) > 0:
            if state.tasks:
                await asyncio.wait(set(state.tasks), timeout=min(left, DRAIN_WAIT))
            else:  # only the forward fast lane's queries: callbacks, no task to wait on
                await asyncio.sleep(min(left, DRAIN_POLL))
        for each in self.datapaths:
            each.close()
        for task in list(state.tasks):
            task.cancel()
        self.tick_task.cancel()
        if self._recheck is not None:
            self._recheck.cancel()
        for conn in list(state.tcp_connections):
            if conn.transport is not None:
                conn.transport.close()
        self.forwarder.close()
        native = self.pipeline.native if self.pipeline is not None else None
        if native is not None:
            native.close()  # cancels c-ares lookups still pending, on this loop
        nss = self.pipeline.nss if self.pipeline is not None else None
        if nss is not None:
            nss.close()

    async def run(self, on_ready: Callable[[Worker], None] | None = None) -> None:
        await self.setup()
        assert self.stop_event is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        if on_ready is not None:
            on_ready(self)
        await self.stop_event.wait()
        logger.info(
            "stopping: draining in-flight queries (up to %.1fs)", self.config.graceful_timeout
        )
        await self.drain()


def _import_before_drop(config: Config) -> None:
    """Import now what the worker loads lazily from the standard library, which the dropped
    user may be unable to read (an interpreter under a private home directory)."""
    if config.enabled and config.native.nss != "off":
        import fastdns.resolve.native.nss  # noqa: F401  (ctypes, concurrent.futures.thread)


def worker_process_main(launch: WorkerLaunch) -> NoReturn:
    """The life of one forked worker process; never returns.

    Binds its own SO_REUSEPORT sockets on the supervisor's ports (unless given already bound
    ones), drops to ``launch.user``, serves until SIGTERM, drains and exits. The exit code is
    the API with the supervisor: 0 after a requested stop, ``ExitCode.BOOT_ERROR`` when it
    could not start (the reason also goes up the control pipe; the supervisor halts instead of
    looping), anything else is a crash (respawned).
    """
    config, slot, user = launch.config, launch.slot, launch.user
    udp_socks, tcp_socks = launch.udp_socks, launch.tcp_socks
    parent = launch.supervisor_pid if launch.supervisor_pid is not None else os.getppid()
    control_fd, generation = launch.control_fd, launch.generation
    control = ControlWriter(control_fd)
    reporter = WorkerReporter(control, StatusSender(launch.stats_path), slot, generation, parent)
    code: int = ExitCode.ERROR
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        faulthandler.enable()  # the watchdog's SIGABRT prints where the loop was stuck
        freebind, addresses = config.nodelocal.enabled, config.listen_addresses
        if not udp_socks:
            udp_socks = tuple(
                bind_udp(a, launch.udp_port, reuse_port=True, freebind=freebind) for a in addresses
            )
        if not tcp_socks:
            tcp_socks = tuple(
                bind_tcp(a, launch.tcp_port, reuse_port=True, freebind=freebind) for a in addresses
            )
        if user is not None:
            _import_before_drop(config)
            drop_privileges(user)  # after binding: the port may be < 1024
        if not die_with_parent(parent):  # after the drop: a uid change clears the setting
            raise SystemExit(ExitCode.OK)
        sockmark.configure(config.rules.mark)  # after the drop: it decides if SO_MARK works
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        pairs = list(zip(udp_socks, tcp_socks, strict=True))
        worker = Worker(config, *pairs[0], more_socks=pairs[1:], slot=slot, on_tick=reporter.tick)
        try:
            loop.run_until_complete(worker.run(reporter.ready))
        finally:
            reporter.send_stats(worker)  # the last counts, so a clean stop loses none
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        code = ExitCode.OK
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else ExitCode.ERROR
    except BaseException as e:
        if reporter.serving:
            logger.exception("worker %d crashed", slot)
        else:
            reason = str(e) if isinstance(e, BootError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, BootError):
                logger.exception("worker %d failed to start", slot)
            control.send(boot_error=reason)
            code = ExitCode.BOOT_ERROR
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


__all__ = [
    "Worker",
    "WorkerReporter",
    "new_event_loop",
    "wire",
    "worker_process_main",
]
