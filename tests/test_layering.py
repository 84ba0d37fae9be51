"""The code base's shape, checked over `ast`: one-way layering and no import cycles.

    core/          records, settings, metrics, retry, green: imports neither side
    destinations/  imports core only, never proxy
    proxy/, app.py import both

Imports inside functions count too (a lazy import is still a dependency). gevent is
reached only through core/green.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "destinations", "proxy")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    found = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    found["app"] = ROOT / "app.py"
    return found


def imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports, resolved to the longest known module name."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def graph(files: dict[str, Path] | None = None) -> dict[str, set[str]]:
    files = files or sources()
    modules = set(files)
    return {name: imports(path, modules) - {name} for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> str:
    return module.split(".")[0]


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_layers_only_import_downwards():
    allowed = {"core": {"core"}, "destinations": {"core", "destinations"}}
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if layer(module) in allowed and layer(target) not in allowed[layer(module)]
    ]
    assert wrong == []


def test_gevent_only_behind_core_green():
    users = []
    for name, path in sources().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            if any(m == "gevent" or m.startswith("gevent.") for m in mods):
                users.append(name)
    assert sorted(set(users)) == ["core.green"]


def test_the_checks_see_a_cycle_and_a_wrong_way_import(tmp_path):
    """The detector itself: a planted cycle and an upward import are both reported."""
    (tmp_path / "a.py").write_text("from b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    import a\n")
    files = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert cycles(graph(files)) == [["a", "b"]]
    (tmp_path / "d.py").write_text("from proxy.records import thing\n")
    assert imports(tmp_path / "d.py", {"proxy", "proxy.records"}) == {"proxy.records"}
