"""Typed readers of one config value each: a problem is recorded with its key path (never
raised) and the default is used, so that one load reports every problem at once."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fastdns.config.yamlfile import did_you_mean
from fastdns.policy.acl import parse_cidr

T = TypeVar("T")
S = TypeVar("S", bound=str)  # one of a fixed set of strings (a Literal type)


class Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []  # (key path, "path: message")

    def add(self, path: str, message: str) -> None:
        self.items.append((path, f"{path}: {message}"))


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def get_bool(m: Mapping[str, Any], key: str, path: str, default: bool, p: Problems) -> bool:
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        p.add(f"{path}.{key}", f"must be true or false, got {type_name(value)} {value!r}")
        return default
    return value


def get_number(
    m: Mapping[str, Any],
    key: str,
    path: str,
    default: T,
    p: Problems,
    *,
    kind: Callable[[Any], T],
    low: float,
    high: float,
) -> T:
    value = m.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and isinstance(value, float))
    ):
        expected = "an integer" if kind is int else "a number"
        p.add(f"{path}.{key}", f"must be {expected}, got {type_name(value)} {value!r}")
        return default
    if not low <= value <= high:
        p.add(f"{path}.{key}", f"must be between {low:g} and {high:g}, got {value!r}")
        return default
    return kind(value)


def get_str(m: Mapping[str, Any], key: str, path: str, default: str, p: Problems) -> str:
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        p.add(f"{path}.{key}", f"must be a string, got {type_name(value)} {value!r}")
        return default
    return value


def get_choice(
    m: Mapping[str, Any], key: str, path: str, default: S, choices: tuple[S, ...], p: Problems
) -> S:
    value = get_str(m, key, path, default, p)
    for choice in choices:
        if value == choice:
            return choice
    p.add(f"{path}.{key}", f"must be one of {', '.join(choices)}, got {value!r}")
    return default


def check_ip(value: object, path: str, p: Problems, *, scoped: bool = False) -> str | None:
    if not isinstance(value, str):
        p.add(path, f"must be an IP address string, got {type_name(value)} {value!r}")
        return None
    text = value.strip()
    bare = text.split("%", 1)[0] if scoped else text
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        p.add(path, f"not a valid IP address: {value!r}")
        return None
    return text


def get_ip(m: Mapping[str, Any], key: str, path: str, default: str, p: Problems) -> str:
    if m.get(key) is None:
        return default
    return check_ip(m[key], f"{path}.{key}", p) or default


def get_ip_list(
    m: Mapping[str, Any], key: str, path: str, default: tuple[str, ...], p: Problems
) -> tuple[str, ...]:
    value = m.get(key)
    if value is None:
        return default
    where = f"{path}.{key}" if path else key  # top-level ``dns``, not ``.dns``
    if not isinstance(value, list):
        p.add(where, f"must be a list of IP addresses, got {type_name(value)}")
        return default
    out = []
    for i, item in enumerate(value):
        ip = check_ip(item, f"{where}[{i}]", p, scoped=True)
        if ip is not None:
            out.append(ip)
    return tuple(out)


def section(m: Mapping[str, Any], key: str, path: str, p: Problems) -> Mapping[str, Any]:
    value = m.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        p.add(f"{path}.{key}" if path else key, f"must be a mapping, got {type_name(value)}")
        return {}
    return value


def reject_unknown(m: Mapping[str, Any], allowed: set[str], path: str, p: Problems) -> None:
    for key in m:
        if key not in allowed:
            p.add(f"{path}.{key}", "unknown key" + did_you_mean(str(key), allowed))


def get_cidrs(
    m: Mapping[str, Any], key: str, path: str, default: tuple[str, ...], p: Problems
) -> tuple[str, ...]:
    """A list of networks (fastdns.acl); each bad one is a problem naming its value."""
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, list):
        p.add(
            f"{path}.{key}", f"must be a list of CIDRs such as 10.0.0.0/8, got {type_name(value)}"
        )
        return default
    out = []
    for i, item in enumerate(value):
        try:
            out.append(str(parse_cidr(item)))
        except ValueError as e:
            p.add(f"{path}.{key}[{i}]", str(e))
    return tuple(out)
