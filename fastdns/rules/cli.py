"""``fastdns rules show|apply|remove|run CONFIG`` and ``fastdns guest-script CONFIG``.

The ports to redirect to are fastdns's *bound* ports: ``--udp-port``/``--tcp-port``, else the
state file of a running ``fastdns serve`` (``--state-file``), else ``fastdns.udp_port`` and
``fastdns.tcp_port`` from the config when they are fixed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from fastdns.config.load import load_config
from fastdns.config.schema import Config
from fastdns.errors import BootError, ConfigError, ExitCode, FastDNSError, report_config_error
from fastdns.rules.plan import (
    NoInterface,
    RulePlan,
    RulesError,
    guest_script,
    install_text,
    iptables_commands,
)
from fastdns.rules.plan import plan_for as _plan_for

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_parsers(sub: Any) -> None:
    """Register the subcommands on the main parser's subparsers."""
    rules = sub.add_parser("rules", help="the iptables DNAT of the virtual DNS address")
    actions = rules.add_subparsers(dest="rules_action", required=True)
    helps = {
        "show": "print the exact rules fastdns would install (iptables-restore input)",
        "apply": "install or repair the rules now and exit (they stay until `rules remove`)",
        "remove": "remove the rules (and restore route_localnet)",
        "run": "run the rules process alone until SIGTERM (reconciles; removes on exit)",
    }
    for name, text in helps.items():
        p = actions.add_parser(name, help=text, description=text)
        p.add_argument("config", help="path to lima.yaml")
        if name != "remove":
            _port_options(p)
        if name in ("show", "apply", "run"):
            p.add_argument(
                "--exempt-uid",
                type=int,
                default=None,
                help="uid whose OUTPUT traffic is not redirected (default: the uid "
                "fastdns runs as)",
            )
        if name == "run":
            p.add_argument(
                "--status-socket",
                default="",
                help="AF_UNIX datagram socket for the rules status messages",
            )
            p.add_argument(
                "--ports-file",
                default=None,
                help='JSON {"udp_port": u, "tcp_port": t}, re-read on SIGHUP',
            )
            p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
        p.set_defaults(handler=_HANDLERS[name])
    guest = sub.add_parser(
        "guest-script",
        help="print the guest-side script (Lima's 09-host-dns-setup.sh) for the bound ports",
    )
    guest.add_argument("config", help="path to lima.yaml")
    _port_options(guest)
    guest.set_defaults(handler=cmd_guest_script)


def _port_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--udp-port", type=int, default=None, help="fastdns's bound UDP port")
    p.add_argument("--tcp-port", type=int, default=None, help="fastdns's bound TCP port")
    p.add_argument(
        "--state-file",
        default=None,
        help="read the bound ports from a running `fastdns serve --state-file`",
    )


class CommandError(FastDNSError):
    def __init__(self, message: str, code: int = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code


def _ports(args: argparse.Namespace, config: Config) -> tuple[int, int]:
    udp, tcp = config.udp_port, config.tcp_port
    if args.state_file:
        try:
            with open(args.state_file, encoding="utf-8") as fh:
                state = json.loads(fh.readline())
            udp, tcp = int(state["udp_port"]), int(state["tcp_port"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CommandError(f"cannot read the ports from {args.state_file}: {e}") from e
    udp = args.udp_port if args.udp_port is not None else udp
    tcp = args.tcp_port if args.tcp_port is not None else tcp
    if not udp or not tcp:
        raise CommandError(
            "the ports fastdns is bound to are unknown (the config says 0: chosen "
            "at bind time): give --state-file or --udp-port and --tcp-port"
        )
    return udp, tcp


def _plan(args: argparse.Namespace, config: Config) -> RulePlan:
    from fastdns.rules.iptables import IptablesError
    from fastdns.rules.main import addresses_for, exempt_uid

    udp, tcp = _ports(args, config)
    uid = args.exempt_uid if args.exempt_uid is not None else exempt_uid(config)
    try:
        return _plan_for(config, udp, tcp, uid, addresses_for(config))
    except NoInterface as e:
        raise CommandError(f"fastdns.rules: {e}", ExitCode.BOOT_ERROR) from e
    except (RulesError, IptablesError) as e:
        raise CommandError(str(e)) from e


def _exemption(plan: RulePlan) -> str:
    parts = [f"mark 0x{plan.exempt_mark:x}"] if plan.exempt_mark else []
    if plan.exempt_uid is not None:
        parts.append(f"uid {plan.exempt_uid}")
    return " and ".join(parts) or "nothing"


def cmd_show(args: argparse.Namespace, config: Config) -> int:
    from fastdns.rules.iptables import RouteLocalnet, localnet_to_enable, tool_names

    plan = _plan(args, config)
    restore = tool_names(config.rules.iptables, plan.family)[0]
    enable = localnet_to_enable(plan, RouteLocalnet())
    scope = "any interface" if plan.interfaces is None else ", ".join(plan.interfaces)
    print(f"# fastdns rules for {config.path}: {plan.mapping}")
    print(
        f"# hooks: {', '.join(plan.hooks)} (jumps first); PREROUTING from {scope}; "
        f"OUTPUT exempts {_exemption(plan)} (fastdns's own queries: loop guard)"
    )
    print(f"# apply as one transaction with: {restore} -w 5 --noflush")
    if plan.needs_localnet:
        print(
            "# the target is a loopback address and PREROUTING is hooked: route_localnet=1 "
            "is set on "
            + (", ".join(enable) or "no interface (already on)")
            + ", guarded by the filter rules below"
        )
    sys.stdout.write(install_text(plan, enable))
    print("# the same as commands:")
    for line in iptables_commands(plan, "ip6tables" if plan.family == 6 else "iptables"):
        print(f"#   {line}")
    return ExitCode.OK


def cmd_apply(args: argparse.Namespace, config: Config) -> int:
    from fastdns.rules.iptables import IptablesError, RulesManager

    plan = _plan(args, config)
    try:
        outcome = RulesManager(config.rules.iptables).apply(plan, owned=True)
    except IptablesError as e:
        raise CommandError(str(e), ExitCode.ERROR) from e
    for warning in outcome.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(("installed" if outcome.changed else "already installed") + f": {plan.mapping}")
    return ExitCode.OK


def cmd_remove(args: argparse.Namespace, config: Config) -> int:
    import ipaddress

    from fastdns.rules.iptables import IptablesError, RulesManager

    family = ipaddress.ip_address(config.rules.virtual_ip).version
    try:
        removed = RulesManager(config.rules.iptables).remove(config.rules.chain, family)
    except IptablesError as e:
        raise CommandError(str(e), ExitCode.ERROR) from e
    print(
        f"removed chain {config.rules.chain}"
        if removed
        else f"nothing to remove: chain {config.rules.chain} does not exist"
    )
    return ExitCode.OK


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from fastdns.rules.main import RulesProcess

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s fastdns-rules[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    udp, tcp = _ports_or_file(args, config)
    proc = RulesProcess(
        config, udp, tcp, args.status_socket, ports_path=args.ports_file, exempt=args.exempt_uid
    )
    try:
        return proc.run()
    except BootError as e:
        raise CommandError(str(e), ExitCode.BOOT_ERROR) from e


def _ports_or_file(args: argparse.Namespace, config: Config) -> tuple[int, int]:
    from fastdns.rules.main import read_ports_file

    ports = read_ports_file(args.ports_file) if args.ports_file else None
    return ports if ports is not None else _ports(args, config)


def cmd_guest_script(args: argparse.Namespace, config: Config) -> int:
    udp, tcp = _ports(args, config)
    try:
        sys.stdout.write(guest_script(config, udp, tcp))
    except RulesError as e:
        raise CommandError(str(e)) from e
    return ExitCode.OK


_HANDLERS = {"show": cmd_show, "apply": cmd_apply, "remove": cmd_remove, "run": cmd_run}


def main(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``rules``/``guest-script`` command; errors become one line + a code."""
    try:
        config = load_config(args.config)
        return int(args.handler(args, config))
    except ConfigError as e:
        return report_config_error(e)
    except CommandError as e:
        print(f"fastdns: {e}", file=sys.stderr)
        return e.code
    except BrokenPipeError:  # `fastdns rules show ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
