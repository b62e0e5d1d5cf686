"""``InProcessServer``: one ``fastdns.worker.Worker`` serving on loopback from a thread.

For integration tests that want the real pipeline, sockets and c-ares channel but also want to
look inside (stats, the native resolver) without a subprocess. The config goes through
``support.server.prepare_config``, so the same safety rules apply as for ``fastdns serve``:
generated resolv.conf and hosts file, loopback-only addresses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from fastdns.config.load import build_config
from fastdns.config.schema import Config
from fastdns.serve.worker import Worker, new_event_loop
from fastdns.system.sockets import bind_tcp, bind_udp
from support.server import prepare_config

T = TypeVar("T")
START_TIMEOUT = 10.0


class InProcessServer:
    """Start with ``InProcessServer(config_mapping, tmp_path)``; ``close()`` drains and stops.

    ``udp_port``/``tcp_port`` are bound on 127.0.0.1 before the constructor returns, and the
    worker is set up (listening) by then too.
    """

    def __init__(self, config: Mapping[str, Any], workdir: Path, **worker_kwargs: Any) -> None:
        doc = prepare_config(config, workdir)
        self.config: Config = build_config(doc, str(workdir / "lima.yaml"))
        self.address = "127.0.0.1"
        udp = bind_udp(self.address, 0)
        tcp = bind_tcp(self.address, 0)
        self.udp_port: int = udp.getsockname()[1]
        self.tcp_port: int = tcp.getsockname()[1]
        self.worker = Worker(self.config, udp, tcp, **worker_kwargs)
        self.loop = new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._drain_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fastdns-inproc", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError("in-process fastdns did not start in time")
        if self._error is not None:
            raise RuntimeError("in-process fastdns failed to start") from self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _serve(self) -> None:
        try:
            await self.worker.setup()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        assert self.worker.stop_event is not None
        await self.worker.stop_event.wait()
        try:
            await self.worker.drain()
        except BaseException as e:  # close() fails the test with it
            self._drain_error = e

    def call(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Run ``fn()`` on the server's loop thread and return its result."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    def counters(self) -> dict[tuple[str, ...], int]:
        """A copy of the worker's counters, taken on its loop as its next report would give
        them: the datapaths' counts folded in first (the compiled one keeps its own in C and
        folds them once a tick)."""

        def read() -> dict[tuple[str, ...], int]:
            self.fold()
            return dict(self.worker.stats.counters)

        return self.call(read)

    def fold(self) -> None:
        """Fold every datapath's counts into the worker's stats (on the loop)."""
        for datapath in self.worker.datapaths:
            datapath.fold()

    def counter(self, *key: str) -> int:
        return self.counters().get(tuple(key), 0)

    def histogram_count(self, *key: str) -> int:
        """Observations in histogram ``key`` (0 if none yet)."""

        def read() -> int:
            self.fold()
            h = self.worker.stats.histograms.get(tuple(key))
            return h.n if h is not None else 0

        return self.call(read)

    def check_files(self) -> None:
        """Run the worker's 1 s file check now (resolv.conf / hosts-file reload)."""
        self.call(self.worker.check_files)

    def close(self) -> None:
        """Stop and drain; raises (fails the test) when the drain raised or hung past
        ``graceful_timeout`` + 5 s."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.worker.stop)
            self._thread.join(self.config.graceful_timeout + 5)
            if self._thread.is_alive():
                raise RuntimeError(
                    f"in-process fastdns did not drain within {self.config.graceful_timeout + 5}s"
                )
        error, self._drain_error = self._drain_error, None
        if error is not None:
            raise RuntimeError("in-process fastdns: the drain raised") from error

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessFactory:
    """``make(config, **worker_kwargs)`` -> an ``InProcessServer`` in its own fresh folder
    under ``tmp_path``; ``close()`` stops them all (use it from a fixture)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[InProcessServer] = []

    def __call__(self, config: Mapping[str, Any], **worker_kwargs: Any) -> InProcessServer:
        workdir = self.tmp_path / f"inproc-{len(self.made)}"
        workdir.mkdir()
        server = InProcessServer(config, workdir, **worker_kwargs)
        self.made.append(server)
        return server

    def close(self) -> None:
        """Close every server, then raise the first failure (a hung or failed drain)."""
        errors: list[BaseException] = []
        for server in self.made:
            try:
                server.close()
            except RuntimeError as e:
                errors.append(e)
        if errors:
            raise errors[0]
