"""The layer rule: the supervisor, the CLI and the config code never import pycares, uvloop or
fastdns.native, not even indirectly.

The supervisor forks; a c-ares channel or an event loop created before the fork would be
shared by every worker (an inherited channel hangs forever). Code that runs
only in a forked child lives in functions named ``child_*`` / ``_child_*``; the imports inside
those are the one allowed exception, and everything else, module level or inside any other
function, is followed transitively through the fastdns package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fastdns"
ROOTS = ("fastdns.supervise.arbiter", "fastdns.cli", "fastdns.config.load")
FORBIDDEN = ("pycares", "uvloop", "aiodns", "fastdns.resolve.native")


def _is_child_only(name: str) -> bool:
    return name.startswith(("child_", "_child_"))


def _module_path(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != "fastdns":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node``, skipping child-only functions and TYPE_CHECKING blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and _is_child_only(child.name):
            continue
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for stmt in child.orelse for n in (stmt, *_walk(stmt)))
            continue
        yield child
        yield from _walk(child)


def imports_of(module: str) -> set[str]:
    """Modules ``module`` may import outside child-only code (``from fastdns import x`` gives
    ``fastdns.x`` when that is a module)."""
    path = _module_path(module)
    assert path is not None, module
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(module.split(".")[: -node.level])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:
                if _module_path(f"{target}.{alias.name}") is not None:
                    found.add(f"{target}.{alias.name}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
        ):
            found.add("<dynamic import>")  # importlib outside child-only code: not allowed
    return found


def import_closure(roots: tuple[str, ...]) -> dict[str, str]:
    """Every module reachable from ``roots`` -> the module that imports it first."""
    seen: dict[str, str] = {root: "<root>" for root in roots}
    todo = list(roots)
    while todo:
        module = todo.pop()
        for imported in sorted(imports_of(module)):
            if imported in seen:
                continue
            seen[imported] = module
            if _module_path(imported) is not None:
                todo.append(imported)
    return seen


def _chain(seen: dict[str, str], module: str) -> str:
    chain = [module]
    while seen.get(chain[-1], "<root>") != "<root>":
        chain.append(seen[chain[-1]])
    return " <- ".join(chain)


def _forbidden(module: str) -> bool:
    return module == "<dynamic import>" or any(
        module == f or module.startswith(f + ".") for f in FORBIDDEN
    )


@pytest.mark.parametrize("root", ROOTS)
def test_no_loop_or_cares_import_reaches_the_supervisor_side(root: str) -> None:
    seen = import_closure((root,))
    bad = sorted(_chain(seen, m) for m in seen if _forbidden(m))
    assert not bad, "imports that would reach a process that forks:\n" + "\n".join(bad)


def test_the_walk_does_see_what_workers_import() -> None:
    """Guards the checker itself: the worker side does reach uvloop."""
    assert "uvloop" in import_closure(("fastdns.serve.worker",))


def test_child_only_functions_are_the_ones_that_load_the_serving_code() -> None:
    assert "fastdns.supervise.children" in import_closure(("fastdns.supervise.arbiter",))
    tree = ast.parse((PACKAGE / "supervise" / "children.py").read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"child_worker", "child_metrics", "child_rules"} <= names
    inner = {
        node.module
        for fn in tree.body
        if isinstance(fn, ast.FunctionDef) and _is_child_only(fn.name)
        for node in ast.walk(fn)
        if isinstance(node, ast.ImportFrom)
    }
    assert "fastdns.serve.worker" in inner
