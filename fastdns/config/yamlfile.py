"""Reading lima.yaml text, and the key-name checks on it.

PyYAML's safe loader keeps neither the line of a key nor a duplicate key (the last one wins,
silently). ``parse`` composes the node tree first and walks it for both, then constructs the
document as ``yaml.safe_load`` would. Pure: no I/O (``fastdns.config.load`` reads the file).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import yaml

# The top-level keys of a Lima instance config (lima-vm/lima pkg/limatype/lima_yaml.go,
# LimaYAML), plus the removed useHostResolver and network. fastdns reads three of them; a key
# close to one of those three that is not one of these is most likely a typo.
LIMA_TOP_LEVEL_KEYS = frozenset(
    (
        "base",
        "minimumLimaVersion",
        "vmType",
        "vmOpts",
        "os",
        "arch",
        "images",
        "cpuType",
        "cpus",
        "memory",
        "disk",
        "additionalDisks",
        "mounts",
        "mountTypesUnsupported",
        "mountType",
        "mountInotify",
        "ssh",
        "firmware",
        "audio",
        "video",
        "provision",
        "upgradePackages",
        "containerd",
        "guestInstallPrefix",
        "probes",
        "portForwards",
        "copyToHost",
        "message",
        "networks",
        "network",
        "env",
        "param",
        "dns",
        "hostResolver",
        "useHostResolver",
        "propagateProxyEnv",
        "caCerts",
        "rosetta",
        "plain",
        "timezone",
        "nestedVirtualization",
        "user",
    )
)
READ_TOP_LEVEL = ("hostResolver", "dns", "fastdns")
HOST_RESOLVER_KEYS = ("enabled", "ipv6", "hosts")  # Lima's HostResolver struct
TYPO_DISTANCE = 2  # a top-level key this close to one fastdns reads is warned about

_MERGE = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a document came from: its file name and the line of every key path
    (``a.b``, ``a[0]``, as fastdns.config names them)."""

    name: str = ""
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, path: str) -> str:
        """``FILE:LINE`` of ``path`` (or of its nearest enclosing key), else ``FILE``."""
        key = path
        while key:
            line = self.lines.get(key)
            if line is not None:
                return f"{self.name}:{line}"
            cut = max(key.rfind("."), key.rfind("["))
            key = key[:cut] if cut > 0 else ""
        return self.name

    def locate(self, path: str, message: str) -> str:
        """``message`` (which starts with ``path``) prefixed by where it is, when known."""
        where = self.where(path)
        return f"{where}: {message}" if where else message


def parse(text: str, name: str = "") -> tuple[Any, Source, list[tuple[str, str]]]:
    """(document, its Source, duplicate-key warnings as (path, message)).

    Raises ``yaml.YAMLError`` as ``yaml.safe_load`` would."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[str, int] = {}
        duplicates: list[tuple[str, str]] = []
        if node is not None:
            _walk(node, "", lines, duplicates)
        doc = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return doc, Source(name, lines), duplicates


def _walk(
    node: yaml.Node, path: str, lines: dict[str, int], duplicates: list[tuple[str, str]]
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            sub = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            first = seen.get((key_node.tag, key))
            if first is not None:  # PyYAML keeps the later value
                duplicates.append(
                    (sub, f"{sub}: duplicate key (first on line {first}); the later one wins")
                )
            else:
                seen[(key_node.tag, key)] = line
            lines[sub] = line
            _walk(value_node, sub, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            lines[sub] = item.start_mark.line + 1
            _walk(item, sub, lines, duplicates)


# ------------------------------------------------------------------------------ key names


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute: 1 each)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def did_you_mean(key: str, known: tuple[str, ...] | set[str] | frozenset[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known key, or "" when none is close."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    if not close:
        lowered = {k.lower(): k for k in known}
        close = [lowered[key.lower()]] if key.lower() in lowered else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def top_level_typos(doc: dict[Any, Any]) -> list[tuple[str, str]]:
    """Top-level keys that are neither Lima's nor fastdns's but close to one fastdns reads:
    (path, message). Lima's other keys (vmType, env, disk, ...) are left alone."""
    out = []
    for key in doc:
        if not isinstance(key, str) or key in READ_TOP_LEVEL or key in LIMA_TOP_LEVEL_KEYS:
            continue
        distance, meant = min(
            (edit_distance(key.lower(), ours.lower()), ours) for ours in READ_TOP_LEVEL
        )
        if distance <= TYPO_DISTANCE:
            out.append((key, f"{key}: not a key fastdns reads (did you mean {meant!r}?); ignored"))
    return out


def unknown_host_resolver_keys(resolver: dict[Any, Any]) -> list[tuple[str, str]]:
    """Keys of ``hostResolver`` that neither Lima nor fastdns knows: (path, message)."""
    out = []
    for key in resolver:
        if key not in HOST_RESOLVER_KEYS:
            path = f"hostResolver.{key}"
            hint = did_you_mean(str(key), HOST_RESOLVER_KEYS)
            out.append((path, f"{path}: not a key fastdns reads{hint}; ignored"))
    return out
