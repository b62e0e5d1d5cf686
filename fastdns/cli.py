"""The ``fastdns`` command line: serve, check-config.

Errors become one clear line on stderr and an exit code here, and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from fastdns import __version__
from fastdns.config import Config, load_config
from fastdns.errors import BootError, ConfigError, ExitCode, HaltServer

logger = logging.getLogger("fastdns")

LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str, role: str = "fastdns") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def write_state(path: str | None, state: dict[str, Any]) -> None:
    """Print ``state`` as one JSON line and write it atomically to ``path``."""
    line = json.dumps(state, sort_keys=True)
    print(line, flush=True)
    if not path:
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastdns", description="A fast host-side DNS forwarder that answers like Lima's."
    )
    p.add_argument("--version", action="version", version=f"fastdns {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve DNS for a lima.yaml until SIGTERM/SIGINT")
    serve.add_argument("config", help="path to lima.yaml")
    serve.add_argument("--state-file", help="write the bound ports here (JSON) once ready")
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: fastdns.workers, else CPUs)")  # fmt: skip
    check = sub.add_parser("check-config", help="validate a lima.yaml; exit 2 when invalid")
    check.add_argument("config")
    return p


def cmd_check_config(path: str) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: ok")
    return ExitCode.OK


def cmd_serve(cfg: Config, state_file: str | None) -> int:
    from fastdns.sockets import bind_tcp, bind_udp
    from fastdns.worker import ready_info, serve_one

    udp = bind_udp(cfg.listen, cfg.udp_port)
    tcp = bind_tcp(cfg.listen, cfg.tcp_port)

    def on_ready(worker: Any) -> None:
        info = ready_info(worker)
        info.update(pid=os.getpid(), ready=True, workers=[os.getpid()])
        logger.info("serving DNS on %s udp/%d tcp/%d", info["listen"], info["udp_port"],
                    info["tcp_port"])  # fmt: skip
        write_state(state_file, info)

    serve_one(cfg, udp, tcp, on_ready)
    logger.info("stopped")
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return cmd_check_config(args.config)
    configure_logging(args.log_level)
    try:
        cfg = load_config(args.config)
        for warning in cfg.warnings:
            logger.warning("%s", warning)
        return cmd_serve(cfg, args.state_file)
    except ConfigError as e:
        for problem in e.problems:
            print(f"fastdns: config error: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    except BootError as e:
        print(f"fastdns: cannot start: {e}", file=sys.stderr)
        return ExitCode.BOOT_ERROR
    except HaltServer as e:
        print(f"fastdns: stopped: {e.reason}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return ExitCode.OK
