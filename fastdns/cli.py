"""The ``fastdns`` command line: serve, check-config.

Errors become one clear line on stderr and an exit code here, and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fastdns import __version__
from fastdns.config.load import load_config
from fastdns.config.schema import Config
from fastdns.errors import BootError, ConfigError, ExitCode, HaltServer, report_config_error
from fastdns.serve.choice import check_datapath

logger = logging.getLogger("fastdns")

LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str, role: str = "fastdns") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 256, got {text!r}")
    return value


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
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="worker processes (default: fastdns.workers, else CPUs)",
    )
    check = sub.add_parser("check-config", help="validate a lima.yaml; exit 2 when invalid")
    check.add_argument("config")
    from fastdns.rules.cli import add_parsers  # rules show|apply|remove|run, guest-script

    add_parsers(sub)
    return p


def cmd_check_config(path: str) -> int:
    try:
        cfg = load_config(path)
        check_datapath(cfg)  # ``compiled`` on an install without the extension: as serve says
    except ConfigError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    from fastdns.resolve.hosts import StaticHosts  # pure tables: no sockets, loops or c-ares

    cycles = StaticHosts.from_pairs(cfg.hosts, log=False).cycle_warnings() if cfg.enabled else []
    for warning in [*cfg.warnings, *cycles]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: ok")
    return ExitCode.OK


def cmd_serve(cfg: Config, state_file: str | None, workers: int | None = None) -> int:
    """Run the supervisor (it forks the workers) until SIGTERM/SIGINT."""
    from fastdns.supervise.arbiter import Supervisor

    return Supervisor(cfg, state_file=state_file, workers=workers).run()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return cmd_check_config(args.config)
    if args.command in ("rules", "guest-script"):
        from fastdns.rules.cli import main as rules_main

        return rules_main(args)
    configure_logging(args.log_level)
    try:
        cfg = load_config(args.config)
        for warning in cfg.warnings:
            logger.warning("%s", warning)
        logger.info("UDP datapath: %s (fastdns.datapath: %s)", check_datapath(cfg), cfg.datapath)
        return cmd_serve(cfg, args.state_file, args.workers)
    except ConfigError as e:
        return report_config_error(e)
    except BootError as e:
        print(f"fastdns: cannot start: {e}", file=sys.stderr)
        return ExitCode.BOOT_ERROR
    except HaltServer as e:
        prefix = "" if e.exit_code == ExitCode.BOOT_ERROR else "stopped: "
        print(f"fastdns: {prefix}{e.reason}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return ExitCode.OK
