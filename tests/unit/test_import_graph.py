"""The import graph of the fastdns package: no cycles, and every import goes down the layers.

Every import statement counts: module level, inside functions, under ``TYPE_CHECKING``, and
relative ones (``from . import x``). A cycle or an upward import fails with the offending
edges named. The layer order is declared once, in ``LAYERS``; each subpackage's ``__init__``
docstring says the same in prose.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fastdns"

# Bottom to top. A module belongs to the longest prefix that names it; it may import modules
# of its own entry (in any direction, but not in a circle) and of any entry on a lower line.
# Two entries on the same line are independent: neither may import the other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("fastdns", "fastdns.errors"),
    ("fastdns.dns",),
    ("fastdns.policy",),
    ("fastdns.config",),
    ("fastdns.ipc", "fastdns.system", "fastdns.metrics.stats"),
    ("fastdns.metrics.definitions",),
    ("fastdns.resolve.hosts", "fastdns.resolve.resolvconf"),
    ("fastdns.resolve.cache", "fastdns.resolve.forward"),
    ("fastdns.resolve.native",),
    ("fastdns.resolve.pipeline",),
    ("fastdns.resolve.relay",),
    ("fastdns.serve", "fastdns.metrics", "fastdns.rules"),
    ("fastdns.supervise",),
    ("fastdns.cli",),
    ("fastdns.__main__",),
)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(
    node: ast.AST, module: str, is_package: bool, known: dict[str, Path]
) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
        else:
            target = node.module or ""
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            yield sub if sub in known else target


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the fastdns modules it imports, from every import statement in its file."""
    known = modules(package)
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        graph[module] = {
            name
            for node in ast.walk(tree)
            for name in _imported(node, module, is_package, known)
            if name.split(".")[0] == "fastdns" and name in known and name != module
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> tuple[int, str] | None:
    """(line in LAYERS, entry) of ``module``: the longest entry that is it or a parent."""
    best: tuple[int, str] | None = None
    for line, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (
                best is None or len(entry) > len(best[1])
            ):
                best = (line, entry)
    return best


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Upward or sideways imports, and modules no layer names."""
    bad = []
    for module in sorted(graph):
        mine = layer_of(module)
        if mine is None:
            bad.append(f"{module}: in no layer (add it to LAYERS)")
            continue
        for target in sorted(graph[module]):
            theirs = layer_of(target)
            if theirs is None or module.startswith(target + ".") or target == "fastdns":
                continue  # a package's own __init__ (docstring only) and the unknown
            if theirs[0] > mine[0] or (theirs[0] == mine[0] and theirs[1] != mine[1]):
                bad.append(f"{module} ({mine[1]}) imports {target} ({theirs[1]})")
    return bad


def test_the_package_has_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_import_goes_down_the_layers() -> None:
    bad = violations(import_graph())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_subpackage_inits_only_document() -> None:
    """No re-exports and nothing at import time: a docstring, and that is all."""
    for path in PACKAGE.rglob("__init__.py"):
        if path.parent == PACKAGE:
            continue
        body = ast.parse(path.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), path
        assert isinstance(body[0].value, ast.Constant), path
        assert "Runs in" in body[0].value.value and "May import" in body[0].value.value, path


def test_the_checks_see_what_they_guard() -> None:
    """Guards the checker: a cycle, an upward and a sideways import are all caught."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "fastdns.dns.wire" in graph["fastdns.resolve.pipeline"]  # module-level
    assert "fastdns.serve.worker" in graph["fastdns.supervise.children"]  # inside a function
    assert violations({"fastdns.dns.wire": {"fastdns.serve.udp"}})
    assert violations({"fastdns.serve.udp": {"fastdns.rules.plan"}})
    assert not violations({"fastdns.serve.udp": {"fastdns.dns.wire"}})
